"""Architectures build from code, run on their default inputs, and are found by name."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from models import (
    ARCHITECTURES,
    ArchitectureError,
    ArchitectureRef,
    architecture_ref,
    build_network,
    count_parameters,
    default_device,
    get_architecture,
    sliding_window_inferer,
)
from models.slice_stack import SliceStackd

# Same depth as the defaults (so the default input shapes are exercised), much less width.
SLIM: dict[str, dict[str, Any]] = {
    "densenet121-2d": {"init_features": 4, "growth_rate": 2},
    "resnet-small-2d": {"block_inplanes": [4, 4, 4, 4]},
    "densenet121-3d": {"init_features": 4, "growth_rate": 2},
    "densenet-compact-3d": {},
    "resnet10-3d": {"widen_factor": 0.125},
    "unet-3d": {"channels": [2, 4, 4, 4, 4], "num_res_units": 1},
    "unet-2.5d": {"channels": [2, 4, 4, 4], "num_res_units": 1},
    "segresnet-3d": {"init_filters": 8, "blocks_down": [1, 1, 1, 1]},
}

# The numbers in models/README.md and the networks module docstring.
DOCUMENTED_PARAMETERS = {
    "densenet121-2d": 6_948_609,
    "densenet121-3d": 11_243_649,
    "densenet-compact-3d": 142_573,
    "resnet10-3d": 14_356_929,
    "unet-3d": 4_806_481,
    "unet-2.5d": 402_181,
    "resnet-small-2d": 308_241,
    "segresnet-3d": 4_700_914,
}


def test_every_architecture_is_covered_here() -> None:
    assert set(SLIM) == set(ARCHITECTURES) == set(DOCUMENTED_PARAMETERS)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_runs_on_its_default_input_shape(name: str) -> None:
    arch = get_architecture(name)
    network = build_network(name, **SLIM[name])
    assert not network.training
    with torch.inference_mode():
        output = network(torch.rand(2, *arch.input_shape))
    out_channels = network_out_channels(arch.params)
    if arch.kind == "classification":
        assert output.shape == (2, out_channels)
    else:
        assert output.shape == (2, out_channels, *arch.input_shape[1:])
        assert all(size % arch.spatial_multiple == 0 for size in arch.input_shape[1:])


def test_slice_stack_unet_segments_each_slice_with_its_neighbours() -> None:
    network = build_network("unet-2.5d", **SLIM["unet-2.5d"])
    volume = torch.rand(2, 1, 16, 24, 5)
    with torch.inference_mode():
        output = network(volume)
        for z in (0, 2, 4):  # ends repeat the edge slice
            neighbours = [min(max(k, 0), 4) for k in (z - 1, z, z + 1)]
            stack = volume[:, 0][..., neighbours].permute(0, 3, 1, 2)  # (2, 3, 16, 24)
            torch.testing.assert_close(output[..., z], network(stack), rtol=1e-4, atol=1e-5)
    assert output.shape == (2, 2, 16, 24, 5)


def test_slice_stackd_turns_a_crop_into_one_training_sample() -> None:
    image = torch.arange(4 * 6 * 3, dtype=torch.float32).reshape(1, 4, 6, 3)
    mask = (image > 40).to(torch.uint8)
    sample = SliceStackd("image", ["mask"], context=1)({"image": image, "mask": mask})
    assert sample["image"].shape == (3, 4, 6)
    torch.testing.assert_close(sample["image"][1], image[0, ..., 1])
    torch.testing.assert_close(sample["mask"], mask[..., 1])
    with pytest.raises(ValueError, match="expects"):
        SliceStackd("image", ["mask"], context=2)({"image": image, "mask": mask})


def network_out_channels(params: dict[str, Any] | Any) -> int:
    return int(params.get("out_channels", params.get("num_classes", 1)))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_documented_parameter_counts(name: str) -> None:
    assert count_parameters(build_network(name)) == DOCUMENTED_PARAMETERS[name]


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ArchitectureError, match="densenet121-2d") as caught:
        build_network("vit-huge")
    assert caught.value.name == "vit-huge"


def test_pretrained_weights_are_never_downloaded() -> None:
    with pytest.raises(ArchitectureError, match="pretrained"):
        build_network("densenet121-2d", pretrained=True)


def test_bad_parameters_are_reported_with_the_architecture() -> None:
    with pytest.raises(ArchitectureError, match="unet-3d"):
        build_network("unet-3d", strides=[2, 2], channels=[4])


def test_card_reference_spells_out_every_parameter_and_survives_json() -> None:
    ref = architecture_ref("unet-3d", out_channels=3)
    assert ref.params["out_channels"] == 3
    assert ref.params["channels"] == [16, 32, 64, 128, 256]  # defaults recorded in the card
    again = ArchitectureRef.model_validate_json(json.dumps(ref.model_dump()))
    first, second = build_network(ref).state_dict(), build_network(again).state_dict()
    assert {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in second.items()}


def test_monai_constructors_by_target_build_but_nothing_else() -> None:
    ref = ArchitectureRef(
        name="monai.networks.nets.UNet",
        params={
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "channels": [2, 4],
            "strides": [2],
        },
    )
    assert build_network(ref)(torch.rand(1, 1, 8, 8)).shape == (1, 2, 8, 8)
    with pytest.raises(ArchitectureError, match=r"monai\.networks\.nets"):
        build_network(ArchitectureRef(name="os.system"))


def test_sliding_window_inferer_covers_a_volume_larger_than_the_patch() -> None:
    network = build_network("unet-3d", channels=[2, 4], strides=[2], num_res_units=0)
    inferer = sliding_window_inferer((16, 16, 16), sw_batch_size=2)
    volume = torch.rand(1, 1, 40, 24, 20)
    with torch.inference_mode():
        output = inferer(volume, network)
    assert isinstance(output, torch.Tensor)
    assert output.shape == (1, 2, 40, 24, 20)


def test_default_device_is_usable() -> None:
    device = default_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.zeros(1, device=device).device.type == device.type
