"""Running one registered model: backends, pre-processing from the card, post-processing.

A :class:`ModelRunner` holds one registry version behind one backend:

- ``onnx``: ONNX Runtime with the best execution provider present (TensorRT, CUDA, then CPU);
- ``torch``: the torch network, on CUDA under automatic mixed precision when a GPU is there.

Where CUDA is wanted and the installed ONNX Runtime is the CPU build (``onnxruntime`` rather
than the ``gpu`` extra's ``onnxruntime-gpu``), an ``onnx`` runner runs the torch network on
CUDA instead, with a warning: a GPU machine never serves on its CPU unasked
(:func:`effective_backend`).

It only computes: ``predict(batch) -> logits`` on arrays shaped as the card's input. Turning a
DICOM series into that array (:func:`prepare`) and logits into a score, a critical flag and a
mask on the source grid (:func:`interpret`) are separate functions, so the triage workers run
them on their own CPUs and the model replicas (GPU) only see full batches of ready tensors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from imaging.volume import Volume
from models.card import ModelCard
from models.export import preferred_providers
from models.preprocessing import card_transforms, restore_to_source, volume_item
from models.registry import ModelRegistry, RegisteredModel

__all__ = [
    "Backend",
    "ModelOutput",
    "ModelRunner",
    "Prepared",
    "calibrated_score",
    "effective_backend",
    "interpret",
    "prepare",
]

logger = logging.getLogger(__name__)


class Backend(StrEnum):
    """How a model is executed."""

    ONNX = "onnx"
    TORCH = "torch"


_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def effective_backend(
    backend: Backend, want_cuda: bool, providers: list[str]
) -> tuple[Backend, str | None]:
    """The backend to run when ``backend`` is asked for, CUDA is (or is not) wanted and ONNX
    Runtime offers ``providers``; with the reason when it differs.

    ``onnx`` on CUDA needs a GPU execution provider; without one it becomes ``torch``, which
    runs on CUDA, rather than ONNX Runtime on the CPU beside an idle GPU.
    """
    if backend is Backend.ONNX and want_cuda and not set(_GPU_PROVIDERS) & set(providers):
        return Backend.TORCH, (
            "this onnxruntime build has no CUDA or TensorRT provider (install radcloud's "
            "'gpu' extra, onnxruntime-gpu): running the torch network on CUDA instead"
        )
    return backend, None


class ModelRunner:
    """One registered model version behind one backend.

    Parameters
    ----------
    model
        The registry version to run.
    backend
        ``onnx`` or ``torch`` (``onnx`` on CUDA without a GPU provider runs ``torch``:
        :func:`effective_backend`; :attr:`backend` is what runs).
    device
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    def __init__(self, model: RegisteredModel, backend: Backend | str, device: str = "auto"):
        self.model = model
        self.card = model.card
        want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
        self.backend, reason = effective_backend(Backend(backend), want_cuda, preferred_providers())
        if reason:
            logger.warning("%s: %s", model.name, reason)
        self._session: Any = None
        self._network: torch.nn.Module | None = None
        if self.backend is Backend.ONNX:
            providers = preferred_providers()
            if not want_cuda:
                providers = ["CPUExecutionProvider"]
            self._session = model.onnx_session(providers)
            self.device = (
                "cuda" if self._session.get_providers()[0] != "CPUExecutionProvider" else "cpu"
            )
            self.providers: list[str] = list(self._session.get_providers())
        else:
            self.device = "cuda" if want_cuda else "cpu"
            self._network = model.load_torch(self.device)
            self.providers = []

    @classmethod
    def from_registry(
        cls,
        registry: ModelRegistry,
        name: str,
        version: int | str = "production",
        *,
        backend: Backend | str = Backend.ONNX,
        device: str = "auto",
    ) -> ModelRunner:
        """Load ``name`` at ``version`` (a number or a stage) from ``registry``."""
        return cls(registry.get(name, version), backend, device)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The card's input shape, without the batch axis."""
        return tuple(self.card.inputs.shape)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch ``(n, *input_shape)`` of float32 inputs."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape[1:] != self.input_shape:
            expected = ", ".join(map(str, self.input_shape))
            raise ValueError(f"input batch has shape {batch.shape}: expected (n, {expected})")
        if self._session is not None:
            name = self._session.get_inputs()[0].name
            return np.asarray(self._session.run(None, {name: batch})[0], dtype=np.float32)
        assert self._network is not None  # noqa: S101 - set in __init__ for the torch backend
        tensor = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device, enabled=self.device == "cuda"):
            output: torch.Tensor = self._network(tensor)
        logits: np.ndarray = output.float().cpu().numpy()
        return logits

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> float:
        """Run random batches once (first-call initialisation) and return the seconds taken."""
        started = time.perf_counter()
        generator = np.random.default_rng(0)
        for size in batch_sizes:
            self.predict(generator.random((size, *self.input_shape), dtype=np.float32))
        return time.perf_counter() - started

    def describe(self) -> dict[str, Any]:
        """Name, version, backend, device and execution providers."""
        return {
            "name": self.model.name,
            "version": str(self.model.version),
            "backend": self.backend.value,
            "device": self.device,
            "providers": self.providers,
        }


@dataclass
class Prepared:
    """A series turned into the network's input, with what post-processing needs."""

    array: np.ndarray  # (*input_shape) float32
    image: MetaTensor  # the same, with MONAI's transform trace (to invert)
    transforms: list[Any]
    volume: Volume


def prepare(card: ModelCard, volume: Volume) -> Prepared:
    """Pre-process ``volume`` exactly as the model was trained (the card's input spec)."""
    transforms = card_transforms(card.inputs, track_meta=True)
    image = mt.Compose(transforms)(volume_item(volume, card.inputs))["image"]
    array = np.ascontiguousarray(image.as_tensor().numpy(), dtype=np.float32)
    return Prepared(array=array, image=image, transforms=transforms, volume=volume)


@dataclass
class ModelOutput:
    """What one model says about one series.

    ``score`` is what results, the worklist, the API and the SR show: the calibrated
    probability of a finding when the card has a calibration (``calibrated``), else the
    network's raw study score; ``raw_score`` is the network's score either way. The operating
    ``threshold`` applies to ``score``.
    """

    score: float
    critical: bool
    threshold: float
    probability: np.ndarray | None = None  # (z, y, x) on the source grid, segmenters only
    mask: np.ndarray | None = None  # uint8 (z, y, x), probability >= 0.5
    lesion_volume_ml: float | None = None
    lesion_voxels: int = 0
    raw_score: float | None = None
    calibrated: bool = False


def _softmax_last(logits: np.ndarray) -> np.ndarray:
    """Channel ``-1`` of the softmax over axis 0: the same values as the whole softmax's last
    channel, without dividing the other channels."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp[-1] / exp.sum(axis=0)
    return result


def _top_k_mean(values: np.ndarray, k: int) -> float:
    """Mean of the ``k`` largest values, summed in ascending order (as ``np.sort(...)[-k:]``
    would give them) but found by partition instead of a full sort."""
    flat = values.reshape(-1)
    largest = np.sort(np.partition(flat, flat.size - k)[-k:])
    return float(largest.mean())


_CALIBRATION_CLIP = 1e-6


def calibrated_score(card: ModelCard, raw_score: float) -> float:
    """The card's calibration applied to a raw study score (the raw score without one).

    Platt scaling (:class:`models.card.ScoreCalibration`):
    ``p = sigmoid(slope * logit(raw) + intercept)``, ``raw`` clipped to ``[1e-6, 1 - 1e-6]``.
    """
    calibration = card.calibration
    if calibration is None:
        return raw_score
    raw = min(max(raw_score, _CALIBRATION_CLIP), 1.0 - _CALIBRATION_CLIP)
    logit = float(np.log(raw / (1.0 - raw)))
    return float(1.0 / (1.0 + np.exp(-(calibration.slope * logit + calibration.intercept))))


def _scored(card: ModelCard, raw_score: float, threshold: float) -> dict[str, Any]:
    score = calibrated_score(card, raw_score)
    return {
        "score": score,
        "critical": score >= threshold,
        "threshold": threshold,
        "raw_score": raw_score,
        "calibrated": card.calibration is not None,
    }


def interpret(card: ModelCard, prepared: Prepared, logits: np.ndarray) -> ModelOutput:
    """Score (calibrated when the card says how: :func:`calibrated_score`), critical flag (at
    the card's threshold) and, for segmenters, the lesion mask on the source series' grid with
    its volume.

    Parameters
    ----------
    card
        The model's card.
    prepared
        What :func:`prepare` made of the series.
    logits
        The network's output for it, without the batch axis.
    """
    if card.threshold is None:
        raise ValueError(f"model {card.name} has no operating threshold: it cannot triage")
    threshold = float(card.threshold.value)
    outputs = card.outputs
    if outputs.kind == "classification":
        channel = logits.reshape(-1)[0]
        score = (
            float(1.0 / (1.0 + np.exp(-channel)))
            if outputs.activation == "sigmoid"
            else float(channel)
        )
        return ModelOutput(**_scored(card, score, threshold))
    lesion = _softmax_last(logits) if outputs.activation == "softmax" else logits[-1]
    k = min(outputs.study_score_top_k or 1, lesion.size)
    score = _top_k_mean(lesion, k)
    on_source = restore_to_source(
        prepared.transforms, prepared.image, torch.from_numpy(lesion[None])
    )[0]
    mask = (on_source >= 0.5).astype(np.uint8)
    voxel_ml = float(np.prod(prepared.volume.spacing)) / 1000.0
    return ModelOutput(
        **_scored(card, score, threshold),
        probability=np.clip(on_source, 0.0, 1.0),
        mask=mask,
        lesion_volume_ml=float(mask.sum()) * voxel_ml,
        lesion_voxels=int(mask.sum()),
    )
