"""A model card's input specification as MONAI transforms, shared by training and serving.

Training loads cached NIfTI files with ``LoadImaged``; serving builds the same channel-first
``MetaTensor`` from a DICOM series already in memory (:func:`volume_item`). Both then run
:func:`card_transforms`, so a served model sees exactly the tensors it was trained on. Serving
keeps MONAI's transform trace so that a segmenter's output goes back onto the source series'
voxel grid (:func:`restore_to_source`) before it is written as a DICOM SEG.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from imaging.volume import Volume
from models.card import InputSpec

__all__ = ["card_transforms", "restore_to_source", "volume_item"]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_KJI_TO_IJK = [2, 1, 0, 3]


def _normalization_step(inputs: InputSpec) -> mt.MapTransform | None:
    norm = inputs.normalization
    low, high = norm.output_range
    if norm.method == "window":
        width, level = float(norm.window_width or 0.0), float(norm.window_level or 0.0)
        return mt.ScaleIntensityRanged(
            keys="image",
            a_min=level - width / 2,
            a_max=level + width / 2,
            b_min=low,
            b_max=high,
            clip=True,
        )
    if norm.method == "percentile":
        lower, upper = norm.percentiles or (0.0, 100.0)  # the card validator requires them
        return mt.ScaleIntensityRangePercentilesd("image", lower, upper, low, high, clip=True)
    if norm.method == "minmax":
        return mt.ScaleIntensityd("image", minv=low, maxv=high)
    if norm.method == "zscore":
        return mt.NormalizeIntensityd("image")
    if norm.method == "none":
        return None
    raise ValueError(
        "normalization 'external' is defined by the bundle's own transforms: radcloud cannot "
        "reproduce it; expected window, percentile, minmax, zscore or none"
    )


def card_transforms(
    inputs: InputSpec, *, label_keys: Sequence[str] = (), track_meta: bool = False
) -> list[Any]:
    """The deterministic steps from a loaded image to the network input.

    Parameters
    ----------
    inputs
        The card's input specification.
    label_keys
        Label maps transformed with the image (nearest-neighbour), e.g. ``["mask"]`` in training.
    track_meta
        Keep ``MetaTensor`` outputs with their transform trace (serving, to invert); otherwise
        plain tensors (training).

    Returns
    -------
    list
        MONAI dictionary transforms for key ``image`` (channel first, RAS affine, as
        ``LoadImaged`` + ``EnsureChannelFirstd`` give).
    """
    keys = ["image", *label_keys]
    steps: list[Any] = []
    volumetric = inputs.spacing_mm is not None
    if inputs.spacing_mm is not None:
        steps.append(
            mt.Orientationd(keys=keys, axcodes=inputs.orientation or "RAS", labels=_RAS_LABELS)
        )
        if any(value > 0 for value in inputs.spacing_mm):  # 0 on an axis: the source spacing
            steps.append(
                mt.Spacingd(
                    keys=keys,
                    pixdim=inputs.spacing_mm,
                    mode=("bilinear", *["nearest"] * len(label_keys)),
                )
            )
    normalization = _normalization_step(inputs)
    if normalization is not None:
        steps.append(normalization)
    if volumetric:
        steps.append(mt.ResizeWithPadOrCropd(keys=keys, spatial_size=inputs.spatial_shape))
    else:
        steps.append(mt.Resized(keys="image", spatial_size=inputs.spatial_shape))
    steps.append(mt.EnsureTyped(keys=keys, dtype=torch.float32, track_meta=track_meta))
    return steps


def volume_item(volume: Volume, inputs: InputSpec) -> dict[str, MetaTensor]:
    """``{"image": MetaTensor}`` as ``LoadImaged`` + channel-first would read the volume's NIfTI.

    The array is in NIfTI index order (column, row, slice) with the RAS affine; a 2D input
    (a radiograph) drops the slice axis, as training's ``SqueezeDimd`` does.
    """
    data = np.array(volume.array.transpose(2, 1, 0), dtype=np.float32, order="C")  # one copy
    affine = torch.as_tensor(volume.affine_ras()[:, _KJI_TO_IJK], dtype=torch.float64)
    if inputs.spacing_mm is None:
        data = data[..., 0]
    image = MetaTensor(data[np.newaxis], affine=affine)
    image.meta["original_affine"] = affine.clone()
    image.meta["space"] = "RAS"
    return {"image": image}


def restore_to_source(
    transforms: Sequence[Any], prepared: MetaTensor, channels: torch.Tensor
) -> np.ndarray:
    """Map per-voxel network outputs back onto the source volume's grid.

    Parameters
    ----------
    transforms
        The steps that made ``prepared`` (:func:`card_transforms` with ``track_meta=True``).
    prepared
        The network input as those steps produced it (it carries their trace).
    channels
        ``(C, *spatial)`` values on the network's grid (e.g. probabilities), linearly
        interpolated back.

    Returns
    -------
    numpy.ndarray
        ``(C, z, y, x)``, indexed like :attr:`imaging.volume.Volume.array`.
    """
    output = MetaTensor(channels.detach().float().cpu(), meta=dict(prepared.meta))
    # a deep copy: MONAI's inverse pops entries out of the nested trace (ResizeWithPadOrCrop's
    # crop_info), which would leave ``prepared`` unable to be restored a second time
    output.applied_operations = copy.deepcopy(prepared.applied_operations)
    chain = mt.Compose(list(transforms))
    restored = chain.inverse({"image": output})["image"]  # type: ignore[no-untyped-call]
    array = np.asarray(torch.as_tensor(restored).numpy(), dtype=np.float32)
    return np.ascontiguousarray(array.transpose(0, 3, 2, 1))
