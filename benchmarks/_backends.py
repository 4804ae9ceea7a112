"""The inference suite's backends: one callable ``predict(batch) -> logits`` each.

``torch-cpu`` and ``torch-cuda-amp`` are serving's own :class:`serving.inference.ModelRunner`
(torch eager; on CUDA under float16 autocast). The ONNX Runtime backends are sessions on the
registered ``model.onnx`` with one execution provider each, so that CUDA and TensorRT are
measured apart and ``threads`` can set the CPU provider's intra-op threads like torch's.
TensorRT gets one engine for a batch profile 1..max (float16, cached for the run).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "Backend",
    "UnavailableError",
    "open_backend",
    "unavailable_reason",
    "wanted_backends",
]

BACKENDS = ("torch-cpu", "onnx-cpu", "torch-cuda-amp", "onnx-cuda", "onnx-tensorrt")
logger = logging.getLogger(__name__)

_PROVIDER = {  # the ONNX Runtime backends' one execution provider each
    "onnx-cpu": "CPUExecutionProvider",
    "onnx-cuda": "CUDAExecutionProvider",
    "onnx-tensorrt": "TensorrtExecutionProvider",
}
PRECISION = {
    "torch-cpu": "float32",
    "onnx-cpu": "float32",
    "torch-cuda-amp": "float16 autocast (AMP)",
    "onnx-cuda": "float32",
    "onnx-tensorrt": "float16 (TensorRT)",
}


@dataclass
class Backend:
    name: str
    device: str
    predict: Callable[[np.ndarray], np.ndarray]
    providers: list[str] = field(default_factory=list)
    load_s: float = 0.0


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def wanted_backends(device: str) -> list[str]:
    """Backends to try on ``device`` (``cpu`` or ``cuda``), the baseline first."""
    return list(BACKENDS) if device == "cuda" else ["torch-cpu", "onnx-cpu"]


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine, found without opening it; or None."""
    if name.startswith("torch-cuda") and not cuda_available():
        return "torch sees no CUDA device"
    import onnxruntime

    wanted = _PROVIDER.get(name)
    if wanted and wanted not in onnxruntime.get_available_providers():
        return f"this onnxruntime build has no {wanted} (install onnxruntime-gpu)"
    return None


def _ort_session(
    path: Path, name: str, input_shape: tuple[int, ...], max_batch: int, threads: int | None
) -> tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """An ONNX Runtime session with only ``name``'s provider (GPU ones fall back to CPU for
    the nodes they cannot run); ``threads`` intra-op threads (None: ONNX Runtime's default)."""
    import onnxruntime

    from models.export import INPUT_NAME

    wanted = _PROVIDER[name]
    if name != "onnx-cpu" and hasattr(onnxruntime, "preload_dlls"):
        # onnxruntime-gpu >= 1.21 can load CUDA and cuDNN from the nvidia-* wheels that torch
        # brought; without them it looks in the system's library path.
        try:
            onnxruntime.preload_dlls()
        except (OSError, RuntimeError) as exc:
            logger.warning("onnxruntime.preload_dlls(): %s", exc)
    providers: list[Any] = [wanted, "CPUExecutionProvider"]
    if name == "onnx-cpu":
        providers = [wanted]
    elif name == "onnx-tensorrt":
        dims = "x".join(map(str, input_shape))
        cache = Path(tempfile.mkdtemp(prefix="radcloud-trt-"))
        options = {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x{dims}",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:{max_batch}x{dims}",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch}x{dims}",
        }
        providers = [(wanted, options), "CUDAExecutionProvider", "CPUExecutionProvider"]
    session_options = onnxruntime.SessionOptions()
    if threads:
        session_options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        str(path), sess_options=session_options, providers=providers
    )
    if session.get_providers()[0] != wanted:
        raise UnavailableError(
            f"ONNX Runtime fell back to {session.get_providers()[0]}: {wanted} could not load "
            "(its libraries are missing: see ONNX Runtime's log above)"
        )
    input_name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: batch})[0], dtype=np.float32)

    return session, predict


class UnavailableError(Exception):
    """A backend this machine cannot run; the message says why."""


def open_backend(name: str, model: Any, max_batch: int, threads: int | None) -> Backend:
    from serving.inference import ModelRunner

    started = time.perf_counter()
    shape = tuple(model.card.inputs.shape)
    if reason := unavailable_reason(name):
        raise UnavailableError(reason)
    if name.startswith("torch-"):
        runner = ModelRunner(model, "torch", "cuda" if "cuda" in name else "cpu")
        backend = Backend(name, runner.device, runner.predict, runner.providers)
    else:
        session, predict = _ort_session(model.onnx_path, name, shape, max_batch, threads)
        device = "cpu" if name == "onnx-cpu" else "cuda"
        backend = Backend(name, device, predict, list(session.get_providers()))
    backend.predict(np.zeros((1, *shape), dtype=np.float32))  # first call: engines, kernels
    backend.load_s = time.perf_counter() - started
    return backend
