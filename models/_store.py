"""The registry's on-disk records: the index model, registered versions and atomic writes.

Private to :mod:`models`; :mod:`models.registry` re-exports :class:`Stage`,
:class:`RegistryEvent` and :class:`RegisteredModel`. The layout is in the
:mod:`models.registry` docstring.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import onnxruntime
import torch
from pydantic import BaseModel, Field
from torch import nn

from models._validate import ONNX_FILE, WEIGHTS_FILE, load_state_dict
from models.card import ModelCard
from models.exceptions import ArchitectureError, ModelLoadError
from models.export import onnx_session
from models.networks import build_network, default_device

__all__ = [
    "INDEX_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "TRAINING_CONFIG_FILE",
    "Index",
    "RegisteredModel",
    "RegistryEvent",
    "Stage",
    "VersionEntry",
    "fsync_path",
    "fsync_tree",
    "jsonable",
    "write_atomic",
    "write_json",
    "write_text",
]

INDEX_FILE = "registry.json"
METRICS_FILE = "metrics.json"
TRAINING_CONFIG_FILE = "training_config.json"
MANIFEST_FILE = "data_manifest.sha256"


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
    action: Literal["register", "import", "promote", "rollback", "shadow"]
    version: int
    detail: str = ""


class VersionEntry(BaseModel):
    """One version's stage and registration time in the index."""

    stage: Stage = Stage.STAGED
    registered_at: dt.datetime = Field(default_factory=_now)


class Index(BaseModel):
    """A model's ``registry.json``: its versions, production history and event log."""

    name: str
    versions: dict[int, VersionEntry] = Field(default_factory=dict)
    production_history: list[int] = Field(default_factory=list)
    history: list[RegistryEvent] = Field(default_factory=list)
    shadow: int | None = None  # the version run beside production on live studies, unseen

    @property
    def production(self) -> int | None:
        """The version in production, or ``None``."""
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


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path``, creating its directory (inside a staging directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (see :func:`write_text`)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk (before it is renamed into place)."""
    for directory, _, files in os.walk(root):
        for filename in files:
            fsync_path(Path(directory) / filename)
        fsync_path(Path(directory))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: a synced temporary file renamed over it."""
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
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Flush one file or directory to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def jsonable(value: Mapping[str, Any] | BaseModel) -> Any:
    """``value`` as plain JSON data (pydantic models dumped, other values via ``str``)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(dict(value), default=str))
