"""The model registry on disk: versions in MONAI bundle layout, stages, promotion, rollback.

Layout under the registry root (``RADCLOUD_HOME/models``)::

    <name>/registry.json                 stages, production history, event log (atomic writes)
    <name>/<version>/card.json           the ModelCard (version filled in)
    <name>/<version>/configs/metadata.json   MONAI bundle metadata (network_data_format, ...)
    <name>/<version>/configs/inference.json  network_def MONAI can instantiate (torch models)
    <name>/<version>/models/model.pt     state dict (torch.load(weights_only=True))
    <name>/<version>/models/model.onnx   ONNX export, parity-checked against model.pt
    <name>/<version>/metrics.json        full evaluation results
    <name>/<version>/training_config.json
    <name>/<version>/data_manifest.sha256

Versions are increasing integers per model name (1, 2, 3, ...), never reused. A new version is
``staged``; :meth:`ModelRegistry.promote` makes one ``production`` (at most one per name) and
archives the one before; :meth:`ModelRegistry.rollback` undoes the last promotion.
:meth:`ModelRegistry.set_shadow` names at most one other version per name that triage runs beside
production on live studies without showing its results (``serving.shadow``); a version that
becomes production stops being the shadow.

A version directory is assembled in a hidden staging directory under the root and renamed into
place only when complete, so a failed export, parity check or import leaves nothing behind.
Changes take an exclusive lock on ``<root>/.lock`` (``fcntl``), so several processes can share
a registry.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from core.files import private_directory
from models._store import (
    INDEX_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    TRAINING_CONFIG_FILE,
    Index,
    RegisteredModel,
    RegistryEvent,
    Stage,
    VersionEntry,
    fsync_path,
    fsync_tree,
    jsonable,
    write_atomic,
    write_json,
    write_text,
)
from models._validate import check_rebuilt, checked_card, rebuild_network
from models.bundle import (
    CARD_FILE,
    INFERENCE_FILE,
    METADATA_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    inference_config,
    monai_metadata,
    stage_bundle,
    stage_onnx,
)
from models.card import ModelCard, Task
from models.exceptions import CardError, ModelNotFoundError, RegistryIndexError, StageError
from models.export import check_parity, export_onnx, onnx_session
from models.networks import ARCHITECTURES, DEFAULT_PARITY_TOLERANCE
from models.shipping import complete_bundle

__all__ = ["ModelRegistry", "RegisteredModel", "RegistryEvent", "Stage"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # as ModelCard.name
_PARITY_SEED = 0


class ModelRegistry:
    """Model versions on disk under ``root`` (see the module docstring for the layout).

    Parameters
    ----------
    root
        The registry directory, normally ``Settings.paths.models_dir``; created on first write.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- reading -------------------------------------------------------------------------

    def _index_path(self, name: str) -> Path:
        return self.root / name / INDEX_FILE

    def _read_index(self, name: str) -> Index:
        if not _NAME.match(name):  # never a path outside the registry
            raise ModelNotFoundError(name)
        path = self._index_path(name)
        try:
            return Index.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ModelNotFoundError(name) from None
        except (OSError, ValidationError) as exc:
            raise RegistryIndexError(path, str(exc).splitlines()[0]) from exc

    def _write_index(self, index: Index) -> None:
        path = self._index_path(index.name)
        write_atomic(path, index.model_dump_json(indent=2) + "\n")

    def _model(self, index: Index, version: int) -> RegisteredModel:
        path = self.root / index.name / str(version)
        return RegisteredModel(
            name=index.name,
            version=version,
            stage=index.versions[version].stage,
            path=path,
            card=ModelCard.load(path / CARD_FILE),
        )

    def names(self) -> list[str]:
        """Names of the registered models, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if not entry.name.startswith(".") and (entry / INDEX_FILE).is_file()
        )

    def list_models(self) -> list[RegisteredModel]:
        """Every version of every model, sorted by name then version."""
        return [model for name in self.names() for model in self.versions(name)]

    def versions(self, name: str) -> list[RegisteredModel]:
        """The versions of ``name``, oldest first; raises ``ModelNotFoundError`` if unknown."""
        index = self._read_index(name)
        return [self._model(index, version) for version in sorted(index.versions)]

    def get(self, name: str, version: int | str | None = None) -> RegisteredModel:
        """One version of a model.

        Parameters
        ----------
        name
            The model name.
        version
            An integer version (or its digits), ``"production"``, or ``None`` for the newest.

        Raises
        ------
        ModelNotFoundError
            When there is no such model or version (or no production version).
        """
        index = self._read_index(name)
        if version is None:
            if not index.versions:
                raise ModelNotFoundError(name)
            return self._model(index, max(index.versions))
        if version in (Stage.PRODUCTION, "production"):
            production = index.production
            if production is None:
                raise ModelNotFoundError(name, "production")
            return self._model(index, production)
        number = version if isinstance(version, int) else _parse_version(version)
        if number is None or number not in index.versions:
            raise ModelNotFoundError(name, version)
        return self._model(index, number)

    def production(self, name: str) -> RegisteredModel | None:
        """The production version of ``name``, or ``None`` when none is promoted."""
        index = self._read_index(name)
        production = index.production
        return None if production is None else self._model(index, production)

    def shadow(self, name: str) -> RegisteredModel | None:
        """The shadow version of ``name`` (run beside production, unseen), or ``None``."""
        index = self._read_index(name)
        return None if index.shadow is None else self._model(index, index.shadow)

    def history(self, name: str) -> list[RegistryEvent]:
        """Registrations, imports, promotions and rollbacks of ``name``, oldest first."""
        return list(self._read_index(name).history)

    # --- stages --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_directory(self.root)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def promote(self, name: str, version: int | str) -> RegisteredModel:
        """Make ``version`` the production version; the previous production one is archived.

        Promoting the version that is already in production changes nothing.

        Raises
        ------
        ModelNotFoundError
            When there is no such model or version.
        """
        with self._locked():
            index = self._read_index(name)
            number = version if isinstance(version, int) else _parse_version(version)
            if number is None or number not in index.versions:
                raise ModelNotFoundError(name, version)
            current = index.production
            if current == number:
                logger.info("%s version %d is already production", name, number)
                return self._model(index, number)
            if current is not None:
                index.versions[current].stage = Stage.ARCHIVED
            previous_stage = index.versions[number].stage
            index.versions[number].stage = Stage.PRODUCTION
            index.production_history.append(number)
            if index.shadow == number:
                index.shadow = None
            index.history.append(
                RegistryEvent(
                    action="promote",
                    version=number,
                    detail=f"from {previous_stage}; previous production: {current}",
                )
            )
            self._write_index(index)
            logger.info("%s version %d promoted to production (was %s)", name, number, current)
            return self._model(index, number)

    def rollback(self, name: str) -> RegisteredModel:
        """Undo the last promotion: archive the production version, restore the one before it.

        Returns
        -------
        RegisteredModel
            The restored production version.

        Raises
        ------
        StageError
            When there is no production version, or none was in production before it.
        ModelNotFoundError
            When there is no such model.
        """
        with self._locked():
            index = self._read_index(name)
            current = index.production
            if current is None:
                raise StageError(name, None, "has no production version to roll back")
            earlier = index.production_history[:-1]
            if not earlier:
                raise StageError(name, current, "no earlier production version to restore")
            index.versions[current].stage = Stage.ARCHIVED
            index.production_history.pop()
            restored = index.production_history[-1]
            index.versions[restored].stage = Stage.PRODUCTION
            if index.shadow == restored:
                index.shadow = None
            index.history.append(
                RegistryEvent(
                    action="rollback", version=restored, detail=f"version {current} archived"
                )
            )
            self._write_index(index)
            logger.info("%s rolled back: version %d archived, %d restored", name, current, restored)
            return self._model(index, restored)

    def set_shadow(self, name: str, version: int | None) -> RegisteredModel | None:
        """Make ``version`` the shadow of ``name`` (one at a time), or stop it (``None``).

        Returns
        -------
        RegisteredModel or None
            The shadow version before the change.

        Raises
        ------
        ModelNotFoundError
            When there is no such model or version.
        StageError
            When ``version`` is the production version.
        """
        with self._locked():
            index = self._read_index(name)
            if version is not None:
                if version not in index.versions:
                    raise ModelNotFoundError(name, version)
                if index.production == version:
                    raise StageError(name, version, "is production: a shadow runs beside it")
            before = None if index.shadow is None else self._model(index, index.shadow)
            index.shadow = version
            index.history.append(
                RegistryEvent(
                    action="shadow",
                    version=version if version is not None else (before.version if before else 0),
                    detail="shadow stopped" if version is None else "shadow started",
                )
            )
            self._write_index(index)
            logger.info("%s shadow: %s", name, version)
            return before

    # --- adding versions -----------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        private_directory(self.root)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging)

    def _commit(
        self,
        staging: Path,
        card: ModelCard,
        *,
        action: Literal["register", "import"],
        write_metadata: bool,
        detail: str = "",
    ) -> RegisteredModel:
        """Give the staged bundle the next version of ``card.name`` and move it into place."""
        with self._locked():
            name_dir = self.root / card.name
            try:
                index = self._read_index(card.name)
            except ModelNotFoundError:
                index = Index(name=card.name)
            numbered = [int(p.name) for p in name_dir.glob("*") if p.name.isdigit()]
            version = max([0, *index.versions, *numbered]) + 1
            card = card.model_copy(update={"version": version})
            write_text(staging / CARD_FILE, card.to_json())
            if write_metadata:
                changelog = {v: self._changelog(card.name, v) for v in index.versions}
                changelog[version] = card.changelog
                write_json(staging / METADATA_FILE, monai_metadata(card, changelog))
                inference = inference_config(card)
                if inference is not None:
                    write_json(staging / INFERENCE_FILE, inference)
            if card.training_data.manifest_sha256:
                write_text(staging / MANIFEST_FILE, card.training_data.manifest_sha256 + "\n")
            for filename in (METRICS_FILE, TRAINING_CONFIG_FILE):
                if not (staging / filename).exists():
                    write_json(staging / filename, {})
            fsync_tree(staging)
            name_dir.mkdir(parents=True, exist_ok=True)
            staging.rename(name_dir / str(version))
            fsync_path(name_dir)
            index.versions[version] = VersionEntry()
            index.history.append(RegistryEvent(action=action, version=version, detail=detail))
            self._write_index(index)
        logger.info("%s %s version %d (staged)", action, card.name, version)
        return self._model(index, version)

    def _changelog(self, name: str, version: int) -> str:
        try:
            return ModelCard.load(self.root / name / str(version) / CARD_FILE).changelog
        except CardError:
            return ""

    def register(
        self,
        card: ModelCard,
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        metrics: Mapping[str, Any],
        training_config: Mapping[str, Any] | BaseModel,
        data_manifest_sha256: str,
        parity_tolerance: float | None = None,
        opset: int = 17,
    ) -> RegisteredModel:
        """Export, parity-check and store a trained model as the next version, ``staged``.

        The model is exported to ONNX and run by torch and by ONNX Runtime (CPU) on
        ``example_input`` and on two seeded uniform [0, 1) batches of two; any output element
        differing by more than ``parity_tolerance`` refuses the registration. The card's
        architecture, rebuilt and loaded with the model's weights, must reproduce the model's
        outputs too (that is what :meth:`RegisteredModel.load_torch` will build).

        Parameters
        ----------
        card
            The model card; ``version`` is assigned here and the training manifest hash filled in.
        model
            The trained network (any device; a float32 CPU copy is exported).
        example_input
            A batch shaped ``(batch, *card.inputs.shape)``.
        metrics
            Full evaluation results (``metrics.json``); the card holds the headline numbers.
        training_config
            The training configuration (``training_config.json``).
        data_manifest_sha256
            SHA-256 of the training data manifest (``data_manifest.sha256``).
        parity_tolerance
            Largest allowed torch vs ONNX Runtime difference; default: the architecture's
            ``parity_tolerance`` (:data:`~models.networks.DEFAULT_PARITY_TOLERANCE`, 1e-4, for
            the classifiers; :data:`~models.networks.SEGMENTER_PARITY_TOLERANCE`, 1e-3, for
            ``unet-3d`` and ``segresnet-3d``).
        opset
            ONNX opset version.

        Returns
        -------
        RegisteredModel
            The new version, ``staged``.

        Raises
        ------
        ParityError
            When ONNX Runtime's outputs differ from torch's by more than the tolerance; nothing is
            registered.
        CardError
            When the card does not fit the model, the input or the manifest hash.
        ExportError
            When the ONNX export fails.
        """
        card = checked_card(card, example_input, data_manifest_sha256)
        assert card.architecture is not None  # noqa: S101 - checked by checked_card
        tolerance = parity_tolerance
        if tolerance is None:
            arch = ARCHITECTURES.get(card.architecture.name)
            tolerance = arch.parity_tolerance if arch else DEFAULT_PARITY_TOLERANCE
        trained = copy.deepcopy(model).float().cpu().eval()
        state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
        rebuilt = rebuild_network(card, state)
        example = example_input.detach().float().cpu()
        generator = torch.Generator().manual_seed(_PARITY_SEED)
        probes = [example, torch.rand((2, *card.inputs.shape), generator=generator)]
        with self._staging() as staging:
            onnx_path = export_onnx(trained, example, staging / ONNX_FILE, opset=opset)
            session = onnx_session(onnx_path, ["CPUExecutionProvider"])
            diff = check_parity(trained, onnx_path, probes, tolerance, session=session)
            check_rebuilt(card, trained, rebuilt, probes, tolerance)
            torch.save(state, staging / WEIGHTS_FILE)
            write_json(staging / METRICS_FILE, jsonable(metrics))
            write_json(staging / TRAINING_CONFIG_FILE, jsonable(training_config))
            return self._commit(
                staging,
                card,
                action="register",
                write_metadata=True,
                detail=f"ONNX parity {diff:.2g} (tolerance {tolerance:.2g})",
            )

    def import_bundle(
        self, path: Path, *, name: str | None = None, task: Task | str | None = None
    ) -> RegisteredModel:
        """Import an external MONAI bundle directory as the next version, ``staged``.

        The bundle's ``configs/metadata.json`` must have a ``network_data_format``; its
        ``models/model.pt`` (with a ``network_def`` in ``configs/inference.json`` or a
        ``card.json``) and/or ``models/model.onnx`` must load and fit the declared shapes
        (see :func:`models.bundle.validate_bundle`). The bundle is copied as it is (its
        ``metadata.json`` keeps its own version string); ``card.json`` holds the registry's.
        A radcloud bundle without ``models/model.onnx`` (a shipped one, :mod:`models.shipping`)
        gets its weights stored as float32 and ONNX exported and parity-checked.

        Parameters
        ----------
        path
            The bundle directory.
        name
            Registry name (default: the card's, else the metadata's ``name``, else the
            directory's name, made lowercase).
        task
            The task, when the bundle's card or metadata does not name one of ours.

        Raises
        ------
        InvalidBundleError
            Naming what is wrong: missing or malformed metadata, unreadable weights, shapes that
            do not match ``network_data_format``, ONNX and weights that disagree.
        ParityError
            When the ONNX file exported for a bundle without one disagrees with its weights.
        """
        with self._staging() as staging:
            card, bundle_copy, ours = stage_bundle(path, staging, name=name, task=task)
            completed = complete_bundle(card, bundle_copy) if ours else None
            # a radcloud bundle (it has a card) gets metadata for its new version; an external
            # bundle keeps its own metadata.json as it came
            return self._commit(
                bundle_copy,
                card,
                action="import",
                write_metadata=ours,
                detail=f"from {path}" + (f"; {completed}" if completed else ""),
            )

    def import_onnx(
        self,
        onnx_path: Path,
        metadata_json_path: Path,
        *,
        name: str | None = None,
        task: Task | str | None = None,
    ) -> RegisteredModel:
        """Import an ONNX file described by a metadata JSON as the next version, ``staged``.

        Parameters
        ----------
        onnx_path
            The ``.onnx`` file.
        metadata_json_path
            Either a radcloud model card (``card.json`` format) or MONAI bundle metadata (with
            ``network_data_format``); the ONNX input and output shapes must match it.
        name
            Registry name (default: the card's or metadata's ``name``, else the ONNX file's stem).
        task
            The task, when MONAI metadata does not name one of ours.

        Raises
        ------
        InvalidBundleError
            When the metadata is neither format, or the ONNX file does not load or fit it.
        """
        with self._staging() as staging:
            card, from_card = stage_onnx(
                onnx_path, metadata_json_path, staging, name=name, task=task
            )
            return self._commit(
                staging,
                card,
                action="import",
                write_metadata=from_card,
                detail=f"from {onnx_path}",
            )


def _parse_version(text: str) -> int | None:
    return int(text) if text.isdigit() else None
