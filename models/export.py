"""ONNX export and the torch vs ONNX Runtime parity check.

Export uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). In
torch 2.13 the default is the ``torch.export``-based ("dynamo") exporter, which needs the
``onnxscript`` package; radcloud does not depend on it, and the TorchScript exporter handles every
shipped MONAI network (parity below 1e-5). The TorchScript exporter is deprecated upstream: when
it is removed, add ``onnxscript`` and switch here (one place).

The exported graph has one input ``image`` of shape ``(batch, *card.inputs.shape)`` and one
output ``pred``; only the batch axis is dynamic, so ONNX files state their spatial shape.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from models.exceptions import ExportError, ModelLoadError, ParityError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "check_parity",
    "export_onnx",
    "onnx_session",
    "preferred_providers",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "pred"

_PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` to an ONNX file and check the file with ``onnx.checker``.

    Parameters
    ----------
    model
        The network; it is put in eval mode.
    example_input
        A batch of the input shape, on the model's device.
    path
        The ``.onnx`` file to write (weights inside it, no external data files).
    opset
        ONNX opset version.
    dynamic_batch
        Make the batch axis of ``image`` and ``pred`` dynamic.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ExportError
        When the exporter fails or writes an invalid model.
    """
    model.eval()
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # The exporter's warnings (the TorchScript exporter's deprecation, tracer warnings about
        # Python values in MONAI and torch code, InstanceNorm exported "with train=True", which
        # is what eval mode computes without running statistics) go to the debug log: whether
        # the graph is right is decided by check_parity, not by warnings.
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        for message in sorted({f"{w.category.__name__}: {w.message}" for w in caught}):
            logger.debug("export of %s: %s", path.name, message)
        onnx.checker.check_model(str(path))
    except (RuntimeError, ValueError, TypeError, onnx.checker.ValidationError) as exc:
        raise ExportError(path, f"{type(exc).__name__}: {exc}") from exc
    logger.info("exported %s (opset %d, %.1f MB)", path, opset, path.stat().st_size / 1e6)
    return path


def preferred_providers() -> list[str]:
    """ONNX Runtime execution providers to use, best first: TensorRT, CUDA, then CPU.

    Only providers this ``onnxruntime`` build offers are returned (the CPU build offers CPU
    only; ``onnxruntime-gpu`` adds CUDA and TensorRT).
    """
    available = set(onnxruntime.get_available_providers())
    return [provider for provider in _PROVIDER_PREFERENCE if provider in available]


def onnx_session(
    path: Path, providers: Sequence[str] | None = None
) -> onnxruntime.InferenceSession:
    """Open an ONNX Runtime session on ``path``.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    providers
        Execution providers, best first (default: :func:`preferred_providers`).

    Returns
    -------
    onnxruntime.InferenceSession
        The session.

    Raises
    ------
    ModelLoadError
        When the file is missing or ONNX Runtime cannot load it.
    """
    chosen = list(providers) if providers is not None else preferred_providers()
    if not path.is_file():
        raise ModelLoadError(path, "no such file")
    try:
        return onnxruntime.InferenceSession(str(path), providers=chosen)
    except Exception as exc:  # onnxruntime raises bare pybind11 errors
        raise ModelLoadError(path, f"ONNX Runtime cannot load it: {exc}") from exc


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}: expected a tensor")


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    tolerance: float,
    *,
    session: onnxruntime.InferenceSession | None = None,
) -> float:
    """Run ``model`` (torch) and ``onnx_path`` (ONNX Runtime, CPU) on ``inputs`` and compare.

    Parameters
    ----------
    model
        The torch network, in eval mode.
    onnx_path
        Its exported ONNX file.
    inputs
        One batch or several; each must fit the ONNX input (batch axis free when exported with
        ``dynamic_batch``).
    tolerance
        Largest allowed absolute difference of any output element.
    session
        An open session on ``onnx_path`` to reuse (default: a new CPU session).

    Returns
    -------
    float
        The largest absolute difference over all inputs and output elements.

    Raises
    ------
    ParityError
        When the difference exceeds ``tolerance``, an output is not finite, or the output shapes
        differ (reported as an infinite difference).
    ModelLoadError
        When ONNX Runtime cannot load ``onnx_path``.
    """
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    sess = session or onnx_session(onnx_path, ["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    worst = 0.0
    for batch in batches:
        with torch.no_grad():
            expected = _first_tensor(model(batch.to(device))).detach().cpu().numpy()
        actual = np.asarray(sess.run(None, {input_name: batch.detach().cpu().numpy()})[0])
        if actual.shape != expected.shape:
            logger.warning(
                "ONNX output shape %s differs from torch's %s", actual.shape, expected.shape
            )
            raise ParityError(float("inf"), tolerance)
        if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
            raise ParityError(float("nan"), tolerance)
        worst = max(worst, float(np.max(np.abs(actual.astype(np.float64) - expected))))
    logger.info("ONNX parity: max abs diff %.3g (tolerance %.3g)", worst, tolerance)
    if worst > tolerance:
        raise ParityError(worst, tolerance)
    return worst
