"""The networks radcloud trains and serves, built from MONAI code with random initialisation.

Each architecture has a name, a MONAI constructor with fixed default parameters, a default input
shape (channels first, no batch axis) and the tasks it suits. Nothing is downloaded: MONAI's
``pretrained=True`` is refused.

Measured on the development machine's CPU (2 cores, shared; torch 2.13 CPU build and ONNX
Runtime 1.32 CPU, 2 threads each, float32, random inputs at the default shape, median of 5
forwards after a warm-up, best of 3 runs), in ms per forward:

===================  =============  ==========  =====  =====  ======  ======
architecture         default input  parameters  torch  torch  ORT     ORT
                     (no batch)                 b=1    b=8    b=1     b=8
===================  =============  ==========  =====  =====  ======  ======
densenet121-2d       1x224x224       6,948,609     29    221      13     113
densenet121-3d       1x128x128x64   11,243,649    173  2,387     214   1,718
densenet-compact-3d  1x128x128x64      142,573     24    185      24     187
resnet10-3d          1x128x128x64   14,356,929    103  1,477      64     510
unet-3d              1x96x96x64      4,806,481    124    741      65     539
segresnet-3d         1x96x96x64      4,700,914  1,987  8,606     603   3,440
===================  =============  ==========  =====  =====  ======  ======

(``models/README.md`` keeps this table with notes; re-measure on the serving GPU.)

Segmenters are trained on patches of their default shape; :func:`sliding_window_inferer` runs
them over whole volumes.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from monai.inferers.inferer import SlidingWindowInferer
from torch import nn

from models.card import ArchitectureRef, Task
from models.exceptions import ArchitectureError

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_PARITY_TOLERANCE",
    "SEGMENTER_PARITY_TOLERANCE",
    "Architecture",
    "architecture_ref",
    "build_network",
    "count_parameters",
    "default_device",
    "get_architecture",
    "sliding_window_inferer",
]

logger = logging.getLogger(__name__)

#: Largest absolute difference allowed between torch and ONNX Runtime outputs (float32 logits).
#: The classifiers meet it with a wide margin (measured below 3e-7 at their default inputs).
DEFAULT_PARITY_TOLERANCE = 1e-4

#: The 3D segmenters normalise over whole 96x96x64 feature maps (instance and group norm), where
#: float32 summation order alone moves logits by up to 6e-5 (measured, random weights); they are
#: allowed 1e-3, which changes a softmax probability by less than 2.5e-4.
SEGMENTER_PARITY_TOLERANCE = 1e-3

_MONAI_NETS = "monai.networks.nets"


@dataclass(frozen=True)
class Architecture:
    """A named network: its MONAI constructor, default parameters and default input.

    Attributes
    ----------
    name
        Registry name, e.g. ``"densenet121-2d"``.
    target
        The MONAI constructor, ``monai.networks.nets.<Name>``.
    params
        Default constructor parameters (JSON-compatible); callers override any of them.
    input_shape
        Default input shape without the batch axis: ``(channels, *spatial)``.
    kind
        ``classification`` (logits ``(batch, out)``) or ``segmentation`` (logits
        ``(batch, out, *spatial)``).
    tasks
        The tasks it suits.
    spatial_multiple
        Every spatial size must be a multiple of this (the network's total downsampling).
    parity_tolerance
        Allowed torch vs ONNX Runtime difference for this architecture.
    description
        One line for listings.
    """

    name: str
    target: str
    params: Mapping[str, Any]
    input_shape: tuple[int, ...]
    kind: Literal["classification", "segmentation"]
    tasks: tuple[Task, ...]
    spatial_multiple: int = 1
    parity_tolerance: float = DEFAULT_PARITY_TOLERANCE
    description: str = ""

    @property
    def spatial_dims(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.input_shape) - 1


_HEAD_CT_SHAPE = (1, 128, 128, 64)
_SEG_PATCH_SHAPE = (1, 96, 96, 64)

ARCHITECTURES: Mapping[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            name="densenet121-2d",
            target=f"{_MONAI_NETS}.DenseNet121",
            params={"spatial_dims": 2, "in_channels": 1, "out_channels": 1},
            input_shape=(1, 224, 224),
            kind="classification",
            tasks=(Task.CHEST_XR_TRIAGE,),
            description="DenseNet-121, 2D: chest radiograph triage",
        ),
        Architecture(
            name="resnet-small-2d",
            target=f"{_MONAI_NETS}.ResNet",
            params={
                "block": "basic",
                "layers": [1, 1, 1, 1],
                "block_inplanes": [16, 32, 64, 128],
                "spatial_dims": 2,
                "n_input_channels": 1,
                "num_classes": 1,
                "conv1_t_size": 7,
                "conv1_t_stride": 2,
            },
            input_shape=(1, 256, 256),
            kind="classification",
            tasks=(Task.CHEST_XR_TRIAGE,),
            description="ResNet, 2D, one basic block per stage (16-128 channels, 0.3 M "
            "parameters): chest radiograph triage at full 256-pixel resolution on CPU",
        ),
        Architecture(
            name="densenet121-3d",
            target=f"{_MONAI_NETS}.DenseNet121",
            params={"spatial_dims": 3, "in_channels": 1, "out_channels": 1},
            input_shape=_HEAD_CT_SHAPE,
            kind="classification",
            tasks=(Task.HEAD_CT_TRIAGE,),
            description="DenseNet-121, 3D: head CT triage (heavy on CPU)",
        ),
        Architecture(
            name="densenet-compact-3d",
            target=f"{_MONAI_NETS}.DenseNet",
            params={
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 1,
                "init_features": 16,
                "growth_rate": 8,
                "block_config": [2, 4, 6, 4],
            },
            input_shape=_HEAD_CT_SHAPE,
            kind="classification",
            tasks=(Task.HEAD_CT_TRIAGE,),
            description="compact 3D DenseNet (16 features, growth 8, blocks 2-4-6-4): head CT "
            "triage on CPU",
        ),
        Architecture(
            name="resnet10-3d",
            target=f"{_MONAI_NETS}.resnet10",
            params={
                "spatial_dims": 3,
                "n_input_channels": 1,
                "num_classes": 1,
                "conv1_t_stride": 2,
            },
            input_shape=_HEAD_CT_SHAPE,
            kind="classification",
            tasks=(Task.HEAD_CT_TRIAGE,),
            description="ResNet-10, 3D, first convolution strided in all axes: head CT triage",
        ),
        Architecture(
            name="unet-3d",
            target=f"{_MONAI_NETS}.UNet",
            params={
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "channels": [16, 32, 64, 128, 256],
                "strides": [2, 2, 2, 2],
                "num_res_units": 2,
            },
            input_shape=_SEG_PATCH_SHAPE,
            kind="segmentation",
            tasks=(Task.HEAD_CT_LESION_SEG,),
            spatial_multiple=16,
            parity_tolerance=SEGMENTER_PARITY_TOLERANCE,
            description="residual UNet, 3D, 5 levels: lesion segmentation (patches)",
        ),
        Architecture(
            name="unet-2.5d",
            target="models.slice_stack.SliceStackUNet",
            params={
                "context": 1,
                "out_channels": 2,
                "channels": [16, 32, 64, 128],
                "strides": [2, 2, 2],
                "num_res_units": 2,
            },
            input_shape=(1, 128, 128, 32),
            kind="segmentation",
            tasks=(Task.HEAD_CT_LESION_SEG, Task.HEAD_CT_TRIAGE),
            spatial_multiple=8,
            parity_tolerance=SEGMENTER_PARITY_TOLERANCE,
            description="residual UNet, 2D over 3-slice axial stacks (2.5D): head CT lesion "
            "segmentation and triage on whole volumes",
        ),
        Architecture(
            name="segresnet-3d",
            target=f"{_MONAI_NETS}.SegResNet",
            params={
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 2,
                "init_filters": 16,
            },
            input_shape=_SEG_PATCH_SHAPE,
            kind="segmentation",
            tasks=(Task.HEAD_CT_LESION_SEG,),
            spatial_multiple=8,
            parity_tolerance=SEGMENTER_PARITY_TOLERANCE,
            description="SegResNet, 3D, 16 initial filters: lesion segmentation (patches)",
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    """The architecture called ``name``.

    Raises
    ------
    ArchitectureError
        When no architecture has that name (the message lists the known ones).
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ArchitectureError(name, f"unknown: expected one of {known}") from None


def _json_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        normalised: dict[str, Any] = json.loads(json.dumps(dict(params)))
    except (TypeError, ValueError) as exc:
        raise ArchitectureError(name, f"parameters are not JSON-compatible: {exc}") from exc
    return normalised


def architecture_ref(name: str, **overrides: Any) -> ArchitectureRef:
    """A card's architecture entry: ``name`` with its defaults and ``overrides``, all spelled out.

    The card records every parameter, so that later changes of the defaults here never change
    what an old model builds.

    Parameters
    ----------
    name
        A name from :data:`ARCHITECTURES`.
    overrides
        Constructor parameters that replace the defaults (e.g. ``out_channels=3``).

    Returns
    -------
    ArchitectureRef
        Name and full, JSON-compatible parameters.

    Raises
    ------
    ArchitectureError
        When ``name`` is unknown or a parameter is not JSON-compatible.
    """
    arch = get_architecture(name)
    return ArchitectureRef(name=name, params=_json_params(name, {**arch.params, **overrides}))


def _resolve_target(ref: ArchitectureRef) -> tuple[Any, dict[str, Any]]:
    if ref.name in ARCHITECTURES:
        arch = ARCHITECTURES[ref.name]
        return _import_target(ref.name, arch.target), {**arch.params, **ref.params}
    target = ref.name if "." in ref.name else f"{_MONAI_NETS}.{ref.name}"
    if not target.startswith(f"{_MONAI_NETS}."):
        raise ArchitectureError(
            ref.name,
            f"unknown: expected one of {', '.join(sorted(ARCHITECTURES))} or a "
            f"{_MONAI_NETS}.<Name> constructor",
        )
    return _import_target(ref.name, target), dict(ref.params)


def _import_target(name: str, target: str) -> Any:
    module_name, _, attribute = target.rpartition(".")
    try:
        constructor = getattr(importlib.import_module(module_name), attribute, None)
    except ImportError:
        constructor = None
    if constructor is None or not callable(constructor):
        raise ArchitectureError(
            name,
            f"unknown: expected one of {', '.join(sorted(ARCHITECTURES))} or a MONAI network "
            f"constructor ({target} does not exist)",
        )
    return constructor


def build_network(architecture: ArchitectureRef | str, **overrides: Any) -> nn.Module:
    """Build a network with random weights, in eval mode, on the CPU.

    Parameters
    ----------
    architecture
        A card's :class:`~models.card.ArchitectureRef`, or an architecture name.
    overrides
        Constructor parameters replacing the defaults (and the card's).

    Returns
    -------
    torch.nn.Module
        The network.

    Raises
    ------
    ArchitectureError
        When the architecture is unknown, asks for pretrained weights, or the parameters do not
        build a network.
    """
    ref = (
        architecture
        if isinstance(architecture, ArchitectureRef)
        else ArchitectureRef(name=architecture)
    )
    constructor, params = _resolve_target(ref)
    params.update(overrides)
    if params.get("pretrained"):
        raise ArchitectureError(
            ref.name, "pretrained=True: radcloud never downloads weights; expected False"
        )
    try:
        network = constructor(**params)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ArchitectureError(ref.name, f"parameters {params} do not build: {exc}") from exc
    if not isinstance(network, nn.Module):
        raise ArchitectureError(ref.name, f"{constructor!r} did not return a torch module")
    return network.eval()


def count_parameters(network: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers excluded)."""
    return sum(parameter.numel() for parameter in network.parameters())


def default_device() -> torch.device:
    """``cuda`` when a GPU is usable, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sliding_window_inferer(
    roi_size: Sequence[int],
    *,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    mode: Literal["gaussian", "constant"] = "gaussian",
    device: torch.device | str | None = None,
) -> SlidingWindowInferer:
    """A MONAI sliding-window inferer for a segmenter trained on patches of ``roi_size``.

    Parameters
    ----------
    roi_size
        The patch (spatial) shape: the card's ``inputs.spatial_shape``.
    sw_batch_size
        Patches per forward.
    overlap
        Fraction by which neighbouring patches overlap.
    mode
        How overlapping patch outputs are blended.
    device
        Where the stitched output is kept (``None``: the input's device). Keep it on the CPU
        for very large volumes on a small GPU.

    Returns
    -------
    monai.inferers.SlidingWindowInferer
        Call it as ``inferer(volume, network)`` with ``volume`` of shape
        ``(batch, channels, *spatial)``; the output covers the whole volume.
    """
    if any(size < 1 for size in roi_size):
        raise ValueError(f"roi_size {list(roi_size)} has an empty axis")
    return SlidingWindowInferer(
        roi_size=list(roi_size),
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode=mode,
        device=device,
    )
