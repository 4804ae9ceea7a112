"""Pixel data of DICOM instances: decoding in any supported transfer syntax, and rescale.

Implementation of the pixel side of :func:`imaging.volume.load_series`: stored values are
decoded with pydicom's decoders (the installed plugins decide which transfer syntaxes work) and
turned into modality values through the Modality LUT (PS3.3 C.11.1).
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import UID, ExplicitVRLittleEndian

from imaging.exceptions import UnsupportedDataError

logger = logging.getLogger(__name__)


def rescale_of(ds: Dataset) -> tuple[float, float] | None:
    """(RescaleSlope, RescaleIntercept) of ``ds``, or None when it has neither."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
    return None


def modality_values(
    raw: np.ndarray, ds: Dataset, rescale: tuple[float, float] | None
) -> np.ndarray:
    """Stored values of one frame of ``ds`` in modality units.

    ``rescale`` is (slope, intercept); None applies the instance's own Modality LUT.
    """
    if rescale is None:
        values: np.ndarray = apply_modality_lut(raw, ds)
        return values
    slope, intercept = rescale
    scaled = raw.astype(np.float64)  # in place from here: one temporary array, not three
    scaled *= slope
    scaled += intercept
    return scaled


def decode(ds: Dataset) -> np.ndarray:
    """All frames of an instance as a (frames, rows, columns) array of stored values."""
    uid = ds.get("SOPInstanceUID", "<unknown>")
    if "PixelData" not in ds:
        raise UnsupportedDataError(
            f"instance {uid} has no PixelData: expected it read without stop_before_pixels"
        )
    file_meta = getattr(ds, "file_meta", None)
    value = None if file_meta is None else file_meta.get("TransferSyntaxUID")
    if value is None:
        logger.warning("instance %s has no TransferSyntaxUID: assuming Explicit VR LE", uid)
        value = ExplicitVRLittleEndian
    syntax = UID(value)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedDataError(
            f'transfer syntax "{syntax}" ({syntax.name}) of instance {uid} has no pixel '
            "data decoder in pydicom",
            transfer_syntax_uid=syntax,
        ) from exc
    missing = list(decoder.missing_dependencies)
    if not decoder.is_available:
        raise UnsupportedDataError(
            f'cannot decode transfer syntax "{syntax}" ({syntax.name}) of instance {uid}: '
            f"no decoder plugin installed ({'; '.join(missing)})",
            transfer_syntax_uid=syntax,
            missing_plugins=missing,
        )
    try:
        array, _ = decoder.as_array(ds)
    except (RuntimeError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise UnsupportedDataError(
            f'could not decode pixel data of instance {uid} ("{syntax}", {syntax.name}): {exc}',
            transfer_syntax_uid=syntax,
            missing_plugins=missing,
        ) from exc
    return array if array.ndim == 3 else array[np.newaxis]
