"""Errors of the ``models`` package: networks, cards, export and the model registry.

::

    ModelError                                   (a RadcloudError: the CLI reports it cleanly)
    ├── ArchitectureError(name, reason)          unknown architecture or bad parameters
    ├── CardError(source, reason)                a model card that does not validate
    ├── ExportError(path, reason)                torch.onnx.export failed
    ├── ParityError(max_abs_diff, tolerance)     torch and ONNX Runtime disagree
    │   └── HalfPrecisionParityError             float16 weights change the outputs too much
    ├── ModelLoadError(path, reason)             weights or ONNX file cannot be loaded
    └── RegistryError
        ├── ModelNotFoundError(name, version)    also a radcloud NotFoundError (HTTP 404)
        ├── StageError(name, version, reason)    a stage change that is not allowed
        ├── RegistryIndexError(path, reason)     a registry.json that cannot be read
        └── InvalidBundleError(path, reason)     an imported bundle or ONNX file is refused
"""

from __future__ import annotations

from pathlib import Path

from core.exceptions import NotFoundError, RadcloudError

__all__ = [
    "ArchitectureError",
    "CardError",
    "ExportError",
    "HalfPrecisionParityError",
    "InvalidBundleError",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ParityError",
    "RegistryError",
    "RegistryIndexError",
    "StageError",
]


class ModelError(RadcloudError):
    """Root of the errors raised by the ``models`` package."""


class ArchitectureError(ModelError):
    """An architecture name is unknown, or its parameters do not build a network."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f'architecture "{name}": {reason}')


class CardError(ModelError):
    """A model card (or the metadata it is made from) does not validate."""

    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"model card {source}: {reason}")


class ExportError(ModelError):
    """Exporting a network to ONNX failed."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"ONNX export to {path} failed: {reason}")


class ParityError(ModelError):
    """The exported ONNX model's outputs differ from the torch model's by more than allowed."""

    def __init__(self, max_abs_diff: float, tolerance: float) -> None:
        self.max_abs_diff, self.tolerance = max_abs_diff, tolerance
        super().__init__(
            f"ONNX Runtime and torch outputs differ by up to {max_abs_diff:.3g}: "
            f"expected at most {tolerance:.3g}"
        )


class HalfPrecisionParityError(ParityError):
    """Weights rounded to float16 (for shipping) change an output probability too much."""

    def __init__(self, max_abs_diff: float, tolerance: float) -> None:
        self.max_abs_diff, self.tolerance = max_abs_diff, tolerance
        ModelError.__init__(
            self,
            f"float16 weights change an output probability by up to {max_abs_diff:.3g}: "
            f"expected at most {tolerance:.3g}",
        )


class ModelLoadError(ModelError):
    """Stored weights or an ONNX file cannot be loaded into a network or session."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot load {path}: {reason}")


class RegistryError(ModelError):
    """Root of the model registry's errors."""


class ModelNotFoundError(RegistryError, NotFoundError):
    """No model of that name, or no such version of it."""

    def __init__(self, name: str, version: int | str | None = None) -> None:
        self.kind = "model"
        self.name, self.version = name, version
        if version is None:
            message = f'model "{name}" is not registered'
        elif version == "production":
            message = f'model "{name}" has no production version'
        else:
            message = f'model "{name}" has no version {version}'
        Exception.__init__(self, message)


class StageError(RegistryError):
    """A stage change that the registry does not allow (e.g. rollback with no earlier one)."""

    def __init__(self, name: str, version: int | None, reason: str) -> None:
        self.name, self.version, self.reason = name, version, reason
        which = f'model "{name}"' if version is None else f'model "{name}" version {version}'
        super().__init__(f"{which}: {reason}")


class RegistryIndexError(RegistryError):
    """A model's ``registry.json`` is unreadable or inconsistent."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"registry index {path}: {reason}")


class InvalidBundleError(RegistryError):
    """An external MONAI bundle or ONNX file cannot be imported; ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot import {path}: {reason}")
