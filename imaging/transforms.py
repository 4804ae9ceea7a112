"""Pixel transforms: windowing presets, the DICOM linear window, resampling to a spacing.

Resampling uses :func:`scipy.ndimage.affine_transform` with a diagonal matrix (one scale
per axis, no coordinate grid in memory): linear interpolation for images, nearest
neighbour for label maps. It runs on the CPU; MONAI's ``Spacing`` would do the same on
tensors but needs a MetaTensor and its own affine conventions, which this module avoids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np
from scipy import ndimage

from imaging.volume import Volume

__all__ = [
    "WINDOW_PRESETS",
    "WindowPreset",
    "apply_window",
    "resample",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowPreset:
    """A named VOI window (WindowWidth/WindowCenter, PS3.3 C.11.2.1.2), in modality units.

    Parameters
    ----------
    name
        Preset name, e.g. ``"brain"``.
    width
        Window width (> = 1).
    level
        Window level (centre).
    """

    name: str
    width: float
    level: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        """:func:`apply_window` with this preset's width and level."""
        return apply_window(array, self.width, self.level)


WINDOW_PRESETS: MappingProxyType[str, WindowPreset] = MappingProxyType(
    {
        preset.name: preset
        for preset in (
            WindowPreset("brain", width=80, level=40),
            WindowPreset("subdural", width=200, level=80),
            WindowPreset("stroke", width=40, level=40),
            WindowPreset("bone", width=2800, level=600),
            WindowPreset("lung", width=1500, level=-600),
        )
    }
)
"""CT presets in HU by name: brain 80/40, subdural 200/80, stroke 40/40, bone 2800/600,
lung 1500/-600 (width/level)."""


def apply_window(array: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map modality values through a linear VOI window onto [0, 1].

    The DICOM "LINEAR" function (PS3.3 C.11.2.1.2.1) with output range 0..1::

        x <= c - 0.5 - (w - 1) / 2  ->  0
        x >  c - 0.5 + (w - 1) / 2  ->  1
        otherwise                   ->  ((x - (c - 0.5)) / (w - 1) + 0.5)

    Parameters
    ----------
    array
        Modality values (e.g. HU).
    width
        Window width ``w``, at least 1 (1 is a threshold at ``c - 0.5``).
    level
        Window centre ``c``.

    Returns
    -------
    numpy.ndarray
        float32, same shape, values in [0, 1].

    Raises
    ------
    ValueError
        If ``width`` is below 1 (the standard requires w >= 1).
    """
    if not width >= 1:
        raise ValueError(f"window width {width} is invalid: expected >= 1 (PS3.3 C.11.2.1.2)")
    values = np.asarray(array, dtype=np.float64)
    centre = level - 0.5
    if width == 1:
        return (values > centre).astype(np.float32)
    scaled = (values - centre) / (width - 1) + 0.5
    lower = values <= centre - (width - 1) / 2
    upper = values > centre + (width - 1) / 2
    out = np.where(lower, 0.0, np.where(upper, 1.0, scaled))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resample(
    volume: Volume,
    spacing: tuple[float, float, float],
    *,
    label_map: bool = False,
) -> Volume:
    """Resample a volume to a new voxel spacing, keeping its origin and physical extent.

    The centre of voxel ``[0, 0, 0]`` stays at ``volume.origin``; each axis gets
    ``round(n * old / new)`` voxels (at least one), so the extent ``n * spacing`` is
    kept to within half a new voxel. Samples past the last input voxel centre repeat
    the edge value. A 2D volume (``is_2d``) keeps its single slice and nominal slice
    spacing whatever ``spacing[0]`` asks.

    Parameters
    ----------
    volume
        The volume to resample.
    spacing
        Target (slice, row, column) spacing in mm.
    label_map
        Nearest-neighbour interpolation keeping the integer labels and dtype (for masks);
        otherwise trilinear interpolation to float32.

    Returns
    -------
    Volume
        The resampled volume. ``sop_instance_uids``/``frame_numbers`` are kept only if
        the slices are unchanged.

    Raises
    ------
    ValueError
        If a target spacing is not positive.
    """
    target = tuple(float(s) for s in spacing)
    if len(target) != 3 or min(target) <= 0:
        raise ValueError(f"target spacing {spacing}: expected three positive values (mm)")
    if volume.is_2d or volume.shape[0] == 1:
        target = (volume.spacing[0], target[1], target[2])
    old = np.array(volume.spacing)
    new = np.array(target)
    shape = tuple(max(1, round(n * o / t)) for n, o, t in zip(volume.shape, old, new, strict=True))
    if shape == volume.shape and np.allclose(old, new):
        return volume
    source = volume.array if label_map else volume.array.astype(np.float32, copy=False)
    resampled = ndimage.affine_transform(
        source,
        matrix=new / old,  # output index * new / old = input index (diagonal matrix)
        offset=0.0,
        output_shape=shape,
        order=0 if label_map else 1,
        mode="nearest",
        prefilter=False,
        output=source.dtype,
    )
    same_slices = shape[0] == volume.shape[0] and np.isclose(old[0], new[0])
    logger.debug("resampled %s at %s mm to %s at %s mm", volume.shape, old, shape, new)
    return replace(
        volume,
        array=resampled,
        spacing=(float(new[0]), float(new[1]), float(new[2])),
        sop_instance_uids=volume.sop_instance_uids if same_slices else (),
        frame_numbers=volume.frame_numbers if same_slices else (),
    )
