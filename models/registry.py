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

A version directory is assembled in a hidden staging directory under the root and renamed into
place only when complete, so a failed export, parity check or import leaves nothing behind.
Changes take an exclusive lock on ``<root>/.lock`` (``fcntl``), so several processes can share
a registry.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import onnxruntime
import torch
from pydantic import BaseModel, Field, ValidationError
from torch import nn

from models.bundle import (
    CARD_FILE,
    INFERENCE_FILE,
    METADATA_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    inference_config,
    load_state_dict,
    monai_metadata,
    stage_bundle,
    stage_onnx,
)
from models.card import ModelCard, Task
from models.exceptions import (
    ArchitectureError,
    CardError,
    ModelLoadError,
    ModelNotFoundError,
    RegistryIndexError,
    StageError,
)
from models.export import check_parity, export_onnx, onnx_session
from models.networks import ARCHITECTURES, DEFAULT_PARITY_TOLERANCE, build_network, default_device

__all__ = ["ModelRegistry", "RegisteredModel", "RegistryEvent", "Stage"]

logger = logging.getLogger(__name__)

INDEX_FILE = "registry.json"
METRICS_FILE = "metrics.json"
TRAINING_CONFIG_FILE = "training_config.json"
MANIFEST_FILE = "data_manifest.sha256"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # as ModelCard.name
_PARITY_SEED = 0


class Stage(StrEnum):
    """Where a model version is in its life."""

    STAGED = "staged"
    PRODUCTION = "production"
    ARCHIVED = "archived"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RegistryEvent(BaseModel):
    """One change in a model's registry index."""

    at: dt.datetime = Field(default_factory=_now)
    action: Literal["register", "import", "promote", "rollback"]
    version: int
    detail: str = ""


class _VersionEntry(BaseModel):
    stage: Stage = Stage.STAGED
    registered_at: dt.datetime = Field(default_factory=_now)


class _Index(BaseModel):
    name: str
    versions: dict[int, _VersionEntry] = Field(default_factory=dict)
    production_history: list[int] = Field(default_factory=list)
    history: list[RegistryEvent] = Field(default_factory=list)

    @property
    def production(self) -> int | None:
        for version, entry in self.versions.items():
            if entry.stage is Stage.PRODUCTION:
                return version
        return None


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model version.

    Attributes
    ----------
    name, version
        Registry name and integer version.
    stage
        Its stage when it was read.
    path
        Its bundle directory.
    card
        Its model card.
    """

    name: str
    version: int
    stage: Stage
    path: Path
    card: ModelCard

    @property
    def weights_path(self) -> Path:
        """``models/model.pt`` (may be absent for ONNX-only imports)."""
        return self.path / WEIGHTS_FILE

    @property
    def onnx_path(self) -> Path:
        """``models/model.onnx`` (may be absent for weights-only imports)."""
        return self.path / ONNX_FILE

    def metrics(self) -> dict[str, Any]:
        """The full evaluation results (``metrics.json``; empty when there are none)."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            return {}
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return loaded

    def load_torch(self, device: torch.device | str | None = None) -> nn.Module:
        """Build the card's architecture and load ``models/model.pt`` (``weights_only=True``).

        Parameters
        ----------
        device
            Where to put the network (default: CUDA when available, else CPU).

        Returns
        -------
        torch.nn.Module
            The network in eval mode.

        Raises
        ------
        ModelLoadError
            When the model has no architecture or weights, or they do not fit each other.
        """
        if self.card.architecture is None:
            raise ModelLoadError(self.path, "ONNX-only model: the card names no architecture")
        state = load_state_dict(self.weights_path)
        try:
            network = build_network(self.card.architecture)
            network.load_state_dict(state, strict=True)
        except (ArchitectureError, RuntimeError) as exc:
            raise ModelLoadError(self.weights_path, str(exc).splitlines()[0]) from exc
        return network.to(device if device is not None else default_device()).eval()

    def onnx_session(self, providers: Sequence[str] | None = None) -> onnxruntime.InferenceSession:
        """An ONNX Runtime session on ``models/model.onnx``.

        Parameters
        ----------
        providers
            Execution providers, best first (default: TensorRT, CUDA, CPU, whichever this
            ``onnxruntime`` build offers).

        Raises
        ------
        ModelLoadError
            When there is no ONNX file or ONNX Runtime cannot load it.
        """
        return onnx_session(self.onnx_path, providers)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk (before it is renamed into place)."""
    for directory, _, files in os.walk(root):
        for filename in files:
            _fsync_path(Path(directory) / filename)
        _fsync_path(Path(directory))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(value: Mapping[str, Any] | BaseModel) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(dict(value), default=str))


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

    def _read_index(self, name: str) -> _Index:
        if not _NAME.match(name):  # never a path outside the registry
            raise ModelNotFoundError(name)
        path = self._index_path(name)
        try:
            return _Index.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ModelNotFoundError(name) from None
        except (OSError, ValidationError) as exc:
            raise RegistryIndexError(path, str(exc).splitlines()[0]) from exc

    def _write_index(self, index: _Index) -> None:
        path = self._index_path(index.name)
        _write_atomic(path, index.model_dump_json(indent=2) + "\n")

    def _model(self, index: _Index, version: int) -> RegisteredModel:
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

    def history(self, name: str) -> list[RegistryEvent]:
        """Registrations, imports, promotions and rollbacks of ``name``, oldest first."""
        return list(self._read_index(name).history)

    # --- stages --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
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
            index.history.append(
                RegistryEvent(
                    action="rollback", version=restored, detail=f"version {current} archived"
                )
            )
            self._write_index(index)
            logger.info("%s rolled back: version %d archived, %d restored", name, current, restored)
            return self._model(index, restored)

    # --- adding versions -----------------------------------------------------------------

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        self.root.mkdir(parents=True, exist_ok=True)
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
                index = _Index(name=card.name)
            numbered = [int(p.name) for p in name_dir.glob("*") if p.name.isdigit()]
            version = max([0, *index.versions, *numbered]) + 1
            card = card.model_copy(update={"version": version})
            _write_text(staging / CARD_FILE, card.to_json())
            if write_metadata:
                changelog = {v: self._changelog(card.name, v) for v in index.versions}
                changelog[version] = card.changelog
                _write_json(staging / METADATA_FILE, monai_metadata(card, changelog))
                inference = inference_config(card)
                if inference is not None:
                    _write_json(staging / INFERENCE_FILE, inference)
            if card.training_data.manifest_sha256:
                _write_text(staging / MANIFEST_FILE, card.training_data.manifest_sha256 + "\n")
            for filename in (METRICS_FILE, TRAINING_CONFIG_FILE):
                if not (staging / filename).exists():
                    _write_json(staging / filename, {})
            _fsync_tree(staging)
            name_dir.mkdir(parents=True, exist_ok=True)
            staging.rename(name_dir / str(version))
            _fsync_path(name_dir)
            index.versions[version] = _VersionEntry()
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
        card = self._checked_card(card, example_input, data_manifest_sha256)
        assert card.architecture is not None  # noqa: S101 - checked by _checked_card
        tolerance = parity_tolerance
        if tolerance is None:
            arch = ARCHITECTURES.get(card.architecture.name)
            tolerance = arch.parity_tolerance if arch else DEFAULT_PARITY_TOLERANCE
        trained = copy.deepcopy(model).float().cpu().eval()
        state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
        rebuilt = self._rebuild(card, state)
        example = example_input.detach().float().cpu()
        generator = torch.Generator().manual_seed(_PARITY_SEED)
        probes = [example, torch.rand((2, *card.inputs.shape), generator=generator)]
        with self._staging() as staging:
            onnx_path = export_onnx(trained, example, staging / ONNX_FILE, opset=opset)
            session = onnx_session(onnx_path, ["CPUExecutionProvider"])
            diff = check_parity(trained, onnx_path, probes, tolerance, session=session)
            self._check_rebuilt(card, trained, rebuilt, probes, tolerance)
            torch.save(state, staging / WEIGHTS_FILE)
            _write_json(staging / METRICS_FILE, _jsonable(metrics))
            _write_json(staging / TRAINING_CONFIG_FILE, _jsonable(training_config))
            return self._commit(
                staging,
                card,
                action="register",
                write_metadata=True,
                detail=f"ONNX parity {diff:.2g} (tolerance {tolerance:.2g})",
            )

    def _checked_card(
        self, card: ModelCard, example_input: torch.Tensor, manifest_sha256: str
    ) -> ModelCard:
        if card.architecture is None:
            raise CardError(card.name, "architecture is missing: register needs the network")
        if tuple(example_input.shape[1:]) != card.inputs.shape:
            raise CardError(
                card.name,
                f"example_input has shape {list(example_input.shape)}: expected (batch, "
                f"{', '.join(map(str, card.inputs.shape))}) as card.inputs.shape says",
            )
        if not _SHA256.match(manifest_sha256):
            raise CardError(
                card.name,
                f'data_manifest_sha256 "{manifest_sha256}": expected 64 lowercase hex digits',
            )
        declared = card.training_data.manifest_sha256
        if declared is not None and declared != manifest_sha256:
            raise CardError(
                card.name,
                f"training_data.manifest_sha256 {declared} differs from data_manifest_sha256 "
                f"{manifest_sha256}",
            )
        training_data = card.training_data.model_copy(update={"manifest_sha256": manifest_sha256})
        return card.model_copy(update={"training_data": training_data})

    @staticmethod
    def _rebuild(card: ModelCard, state: dict[str, torch.Tensor]) -> nn.Module:
        assert card.architecture is not None  # noqa: S101 - checked by the caller
        network = build_network(card.architecture)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:3])
            raise CardError(
                card.name,
                f"the model's weights do not fit architecture {card.architecture.name} "
                f"{card.architecture.params}: {detail}",
            ) from exc
        return network

    @staticmethod
    def _check_rebuilt(
        card: ModelCard,
        trained: nn.Module,
        rebuilt: nn.Module,
        probes: Sequence[torch.Tensor],
        tolerance: float,
    ) -> None:
        with torch.no_grad():
            for probe in probes:
                diff = float((trained(probe) - rebuilt(probe)).abs().max())
                if not diff <= tolerance:
                    raise CardError(
                        card.name,
                        f"architecture {card.architecture.name if card.architecture else None} "
                        f"with the model's weights gives outputs up to {diff:.3g} away from the "
                        f"model's: expected at most {tolerance:.3g}",
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
        """
        with self._staging() as staging:
            card, bundle_copy, ours = stage_bundle(path, staging, name=name, task=task)
            # a radcloud bundle (it has a card) gets metadata for its new version; an external
            # bundle keeps its own metadata.json as it came
            return self._commit(
                bundle_copy, card, action="import", write_metadata=ours, detail=f"from {path}"
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
