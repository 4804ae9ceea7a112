"""NIfTI-1 export and import of :class:`~imaging.volume.Volume` with an exact affine.

DICOM patient coordinates are LPS, NIfTI's world is RAS: the affine written is
``LPS_TO_RAS @ affine_lps`` with its index columns reordered from the volume's
``(k, j, i)`` to NIfTI's ``(i, j, k)`` (the data array is transposed to match, so NIfTI
axis 0 is the DICOM column index). sform and qform both carry it (code 1, scanner
coordinates); the qform is omitted for sheared (gantry-tilted) volumes, which it cannot
represent.

The header stores the affine as float32. So that DICOM → volume → NIfTI → volume keeps
the geometry exactly, the float64 affine and the DICOM provenance (Modality,
SeriesInstanceUID, SOPInstanceUIDs per slice, ``is_2d``) also go into a NIfTI header
extension (code 6, comment) as JSON; on load it is used when it agrees with the header's
affine, which tools that rewrite the file keep authoritative.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zlib
from pathlib import Path
from typing import Any, Literal

import nibabel
import numpy as np

from core.inflation import (
    GZIP_WBITS,
    CorruptCompressedDataError,
    InflationLimitError,
    inflate,
)
from imaging.exceptions import UnsupportedDataError, VolumeTooLargeError
from imaging.volume import LPS_TO_RAS, Volume

__all__ = ["load_nifti", "load_nifti_bytes", "save_nifti"]

logger = logging.getLogger(__name__)

nib: Any = nibabel  # nibabel's API is untyped: keep it Any in one place
_EXTENSION_CODE = 6  # NIFTI_ECODE_COMMENT
_EXTENSION_KEY = "radcloud.volume"
_SCANNER_XFORM = 1  # NIFTI_XFORM_SCANNER_ANAT
_KJI_TO_IJK = [2, 1, 0, 3]
_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_SIZES = {348: "Nifti1Header", 540: "Nifti2Header"}
_MAX_HEADER = 540
_EXTENSIONS_SLACK = 1 << 20  # bytes a file may carry beyond header, extensions and voxels


def save_nifti(volume: Volume, path: Path | str) -> Path:
    """Write a volume as NIfTI-1 (``.nii`` or ``.nii.gz``).

    Parameters
    ----------
    volume
        The volume; its array's dtype is kept (float32 images, integer label maps;
        bool is written as uint8).
    path
        Destination file.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    data = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    affine_ijk = volume.affine_ras()[:, _KJI_TO_IJK]
    image: Any = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine_ijk)
    header = image.header
    header.set_xyzt_units(xyz="mm")
    image.set_sform(affine_ijk, code=_SCANNER_XFORM)
    if _is_orthogonal(affine_ijk):
        image.set_qform(affine_ijk, code=_SCANNER_XFORM)
    else:
        image.set_qform(None, code=0)
    header["descrip"] = f"radcloud {volume.modality or 'volume'}".encode()[:80]
    provenance = {
        _EXTENSION_KEY: {
            "affine_lps": volume.affine_lps().tolist(),
            "modality": volume.modality,
            "series_instance_uid": volume.series_instance_uid,
            "sop_instance_uids": list(volume.sop_instance_uids),
            "frame_numbers": list(volume.frame_numbers),
            "is_2d": volume.is_2d,
        }
    }
    extension = nib.nifti1.Nifti1Extension(_EXTENSION_CODE, json.dumps(provenance).encode())
    header.extensions.append(extension)
    nib.save(image, path)
    logger.debug("wrote %s %s to %s", volume.shape, data.dtype, path)
    return path


def load_nifti(path: Path | str, *, label_map: bool = False) -> Volume:
    """Read a NIfTI-1/2 file as a volume in LPS (the inverse of :func:`save_nifti`).

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file, 2D or 3D (a trailing axis of length 1 is dropped).
    label_map
        Keep integer labels: the array keeps the file's integer dtype (float data with
        integral values becomes int32). Otherwise the array is float32 with the header's
        scaling applied.

    Returns
    -------
    Volume
        Array indexed ``[k, j, i]``; provenance restored when the file came from
        :func:`save_nifti`.

    Raises
    ------
    UnsupportedDataError
        More than three non-trivial axes, or non-integral values with ``label_map``.
    """
    path = Path(path)
    image: Any = nib.load(path)
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise UnsupportedDataError(f"{path} has shape {data.shape}: expected a 2D or 3D image")
    if label_map:
        if not np.issubdtype(data.dtype, np.integer):
            if not np.all(np.isfinite(data)) or not np.array_equal(data, np.rint(data)):
                raise UnsupportedDataError(
                    f"{path} holds non-integer values ({data.dtype}): expected a label map"
                )
            data = data.astype(np.int32)
    else:
        data = data.astype(np.float32, copy=False)
    array = np.ascontiguousarray(data.transpose(2, 1, 0))

    affine_kji = (LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64))[:, _KJI_TO_IJK]
    metadata = _provenance(image.header)
    exact = metadata.pop("affine_lps", None)
    if exact is not None and np.allclose(exact, affine_kji, atol=1e-3):
        affine_kji = np.asarray(exact, dtype=np.float64)
    elif exact is not None:
        logger.info("%s: affine changed since radcloud wrote it; using the header's", path)
    if metadata.get("sop_instance_uids") and len(metadata["sop_instance_uids"]) != len(array):
        metadata["sop_instance_uids"], metadata["frame_numbers"] = (), ()
    metadata.setdefault("is_2d", array.shape[0] == 1)
    return Volume.from_affine_lps(array, affine_kji, **metadata)


def _provenance(header: Any) -> dict[str, Any]:
    """Our JSON extension, as :class:`Volume` keyword arguments (empty if absent)."""
    for extension in header.extensions:
        if extension.get_code() != _EXTENSION_CODE:
            continue
        try:
            content = json.loads(extension.get_content())
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(content, dict) or _EXTENSION_KEY not in content:
            continue
        saved = content[_EXTENSION_KEY]
        return {
            "affine_lps": saved.get("affine_lps"),
            "modality": str(saved.get("modality", "")),
            "series_instance_uid": str(saved.get("series_instance_uid", "")),
            "sop_instance_uids": tuple(saved.get("sop_instance_uids", ())),
            "frame_numbers": tuple(saved.get("frame_numbers", ())),
            "is_2d": bool(saved.get("is_2d", False)),
        }
    return {}


def _is_orthogonal(affine: np.ndarray) -> bool:
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.allclose(columns.T @ columns, np.eye(3), atol=1e-6))


def _header(head: bytes) -> Any:
    """The NIfTI-1/2 header at the start of ``head`` (nibabel), by its ``sizeof_hdr``."""
    orders: tuple[tuple[Literal["little", "big"], str], ...] = (("little", "<"), ("big", ">"))
    for order, endianness in orders:
        size = int.from_bytes(head[:4], order)
        name = _HEADER_SIZES.get(size)
        if name is not None and len(head) >= size:  # the binary block only: no extensions
            return getattr(nib, name)(binaryblock=head[:size], endianness=endianness)
    raise UnsupportedDataError("not a NIfTI-1 or NIfTI-2 file: sizeof_hdr is neither 348 nor 540")


def load_nifti_bytes(data: bytes, *, max_voxels: int, label_map: bool = False) -> Volume:
    """Read NIfTI-1/2 bytes (gzip or not) as :func:`load_nifti` does, within a voxel budget.

    The header is read first (for gzip, by inflating only its first bytes) and a volume of more
    than ``max_voxels`` is refused before anything else is read; gzip data is then inflated to
    at most what the header declares (plus 1 MiB of slack), so a gzip bomb is refused after
    inflating at most that (:mod:`core.inflation`).

    Raises
    ------
    VolumeTooLargeError
        The header declares more than ``max_voxels`` voxels, or the data inflates beyond it.
    UnsupportedDataError
        Not NIfTI, or corrupt.
    """
    compressed = data[:2] == _GZIP_MAGIC
    try:
        head = (
            zlib.decompressobj(GZIP_WBITS).decompress(data[: 1 << 16], _MAX_HEADER)
            if compressed
            else data[:_MAX_HEADER]
        )
        header = _header(head)
    except (zlib.error, ValueError, nibabel.spatialimages.HeaderDataError) as exc:
        raise UnsupportedDataError(f"cannot read the NIfTI header: {exc}") from exc
    shape = header.get_data_shape()
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if voxels > max_voxels:
        raise VolumeTooLargeError(
            f"the NIfTI header declares {voxels} voxels {tuple(shape)}, more than the "
            f"limit of {max_voxels} (RADCLOUD_API_MAX_INFER_VOXELS)",
            voxels=voxels,
            limit=max_voxels,
        )
    if compressed:
        expected = int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
        try:
            data = inflate(data, limit=expected + _EXTENSIONS_SLACK, what="the gzip NIfTI file")
        except InflationLimitError as exc:
            raise VolumeTooLargeError(
                f"{exc}: more than its header's {voxels} voxels declare",
                voxels=None,
                limit=max_voxels,
            ) from exc
        except CorruptCompressedDataError as exc:
            raise UnsupportedDataError(str(exc)) from exc
    with tempfile.NamedTemporaryFile(suffix=".nii") as handle:
        handle.write(data)
        handle.flush()
        return load_nifti(handle.name, label_map=label_map)
