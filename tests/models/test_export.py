"""ONNX export of the shipped architectures, and the parity check that guards it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from models import (
    ARCHITECTURES,
    ExportError,
    ModelLoadError,
    ParityError,
    build_network,
    check_parity,
    export_onnx,
    get_architecture,
    onnx_session,
    preferred_providers,
)

# Narrow networks on small inputs: the exporter sees the same operators as at full size.
SMALL: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "densenet121-2d": ({"init_features": 4, "growth_rate": 2}, (1, 32, 32)),
    "resnet-small-2d": ({"block_inplanes": [2, 4, 4, 4]}, (1, 32, 32)),
    "densenet121-3d": ({"init_features": 4, "growth_rate": 2}, (1, 32, 32, 32)),
    "densenet-compact-3d": ({}, (1, 32, 32, 32)),
    "resnet10-3d": ({"widen_factor": 0.125}, (1, 32, 32, 16)),
    "unet-2.5d": ({"channels": [4, 8, 8, 8], "num_res_units": 1}, (1, 32, 32, 8)),
    "unet-3d": ({"channels": [2, 4, 4, 4, 4], "num_res_units": 1}, (1, 32, 32, 16)),
    "segresnet-3d": ({"init_filters": 8}, (1, 32, 32, 16)),
}


def test_every_architecture_is_exported_here() -> None:
    assert set(SMALL) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_shipped_architecture_exports_with_parity(name: str, tmp_path: Path) -> None:
    params, shape = SMALL[name]
    network = build_network(name, **params)
    path = export_onnx(network, torch.rand(1, *shape), tmp_path / "model.onnx")

    batch = torch.rand(3, *shape)  # another batch size than the example: the axis is dynamic
    diff = check_parity(network, path, batch, get_architecture(name).parity_tolerance)
    assert diff <= get_architecture(name).parity_tolerance

    session = onnx_session(path, ["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert session.get_inputs()[0].shape[1:] == list(shape)  # spatial shape is stated
    assert [o.name for o in session.get_outputs()] == ["pred"]


def _corrupt_weights(path: Path) -> None:
    model = onnx.load(str(path))
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.size > 1:
            initializer.CopyFrom(numpy_helper.from_array(values + 0.5, initializer.name))
            break
    onnx.save(model, str(path))


def test_onnx_file_with_altered_weights_fails_parity(tmp_path: Path) -> None:
    network = build_network("densenet-compact-3d")
    path = export_onnx(network, torch.rand(1, 1, 32, 32, 32), tmp_path / "model.onnx")
    _corrupt_weights(path)
    with pytest.raises(ParityError) as caught:
        check_parity(network, path, torch.rand(2, 1, 32, 32, 32), 1e-4)
    assert caught.value.max_abs_diff > 1e-4
    assert caught.value.tolerance == 1e-4
    assert "expected at most 0.0001" in str(caught.value)


class _BranchOnInput(nn.Module):
    """Python control flow on the data: tracing freezes the branch the example took."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out if float(x.mean()) > 0.7 else out + 1.0


def test_module_whose_trace_differs_from_eager_fails_parity(tmp_path: Path) -> None:
    model = _BranchOnInput()
    path = export_onnx(model, torch.full((1, 4), 0.9), tmp_path / "model.onnx")
    with pytest.raises(ParityError, match="differ by up to 1"):
        check_parity(model, path, torch.zeros(2, 4), 1e-4)


class _Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this network cannot be traced")


def test_failed_export_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="cannot be traced") as caught:
        export_onnx(_Broken(), torch.rand(1, 4), target)
    assert caught.value.path == target


def test_unloadable_onnx_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load it"):
        onnx_session(path)
    with pytest.raises(ModelLoadError, match="no such file"):
        onnx_session(tmp_path / "absent.onnx")


def test_providers_prefer_the_gpu_and_always_include_the_cpu() -> None:
    providers = preferred_providers()
    assert providers[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" in providers:
        assert providers.index("CUDAExecutionProvider") < providers.index("CPUExecutionProvider")
