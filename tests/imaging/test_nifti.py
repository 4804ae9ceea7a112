"""NIfTI export/import: DICOM LPS ↔ NIfTI RAS, exact geometry round trips, label maps."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pytest

from imaging import UnsupportedDataError, load_nifti, load_series, save_nifti
from imaging.exceptions import VolumeTooLargeError
from imaging.nifti import load_nifti_bytes
from tests.imaging.dicom_series import chest_radiograph, ct_series, enhanced_ct

nib: Any = nibabel  # untyped API


def test_dicom_to_nifti_to_volume_round_trips_geometry_and_voxels(tmp_path: Path) -> None:
    volume = load_series(ct_series())
    loaded = load_nifti(save_nifti(volume, tmp_path / "ct.nii.gz"))
    assert np.abs(loaded.affine_lps() - volume.affine_lps()).max() < 1e-4
    assert np.array_equal(loaded.array, volume.array)
    assert loaded.array.dtype == np.float32
    assert loaded.modality == "CT"
    assert loaded.series_instance_uid == volume.series_instance_uid
    assert loaded.sop_instance_uids == volume.sop_instance_uids


def test_nifti_world_coordinates_are_ras_of_the_dicom_position(tmp_path: Path) -> None:
    datasets = ct_series()
    volume = load_series(datasets)
    image = nib.load(save_nifti(volume, tmp_path / "ct.nii"))
    data = np.asanyarray(image.dataobj)
    assert data.shape == (24, 32, 12)  # NIfTI axes: column, row, slice
    k, j, i = 6, 11, 4
    assert data[i, j, k] == volume.array[k, j, i]
    first = next(ds for ds in datasets if ds.SOPInstanceUID == volume.sop_instance_uids[k])
    x, y, z = first.ImagePositionPatient  # voxel (i, j) = (0, 0) of slice k, in LPS
    assert image.affine @ [0, 0, k, 1] == pytest.approx([-x, -y, z, 1], abs=1e-4)
    assert int(image.header["sform_code"]) == 1
    assert int(image.header["qform_code"]) == 1


def test_header_affine_alone_still_round_trips(tmp_path: Path) -> None:
    """A file rewritten by another tool loses our extension but keeps its geometry."""
    volume = load_series([enhanced_ct()])
    written = nib.load(save_nifti(volume, tmp_path / "enhanced.nii.gz"))
    bare = nib.Nifti1Image(np.asanyarray(written.dataobj), written.affine)
    nib.save(bare, tmp_path / "bare.nii.gz")
    loaded = load_nifti(tmp_path / "bare.nii.gz")
    assert np.abs(loaded.affine_lps() - volume.affine_lps()).max() < 1e-4
    assert np.array_equal(loaded.array, volume.array)
    assert loaded.sop_instance_uids == ()


def test_label_maps_keep_their_integer_dtype(tmp_path: Path) -> None:
    volume = load_series(ct_series())
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[3:6, 10:14, 4:9] = 2
    path = save_nifti(volume.with_array(labels), tmp_path / "labels.nii.gz")
    loaded = load_nifti(path, label_map=True)
    assert loaded.array.dtype == np.uint8
    assert np.array_equal(loaded.array, labels)
    as_image = load_nifti(path)
    assert as_image.array.dtype == np.float32


def test_non_integer_data_is_not_a_label_map(tmp_path: Path) -> None:
    volume = load_series(ct_series())
    path = save_nifti(volume.with_array(volume.array + 0.25), tmp_path / "float.nii.gz")
    with pytest.raises(UnsupportedDataError, match="non-integer"):
        load_nifti(path, label_map=True)


def test_2d_radiograph_round_trips(tmp_path: Path) -> None:
    volume = load_series([chest_radiograph()])
    loaded = load_nifti(save_nifti(volume, tmp_path / "cxr.nii.gz"))
    assert loaded.is_2d
    assert loaded.shape == volume.shape
    assert np.allclose(loaded.affine_lps(), volume.affine_lps(), atol=1e-4)


def test_four_dimensional_data_is_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(UnsupportedDataError, match=r"\(4, 4, 4, 3\)"):
        load_nifti(tmp_path / "4d.nii")


def _header_bytes(shape: tuple[int, ...]) -> bytes:
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    return bytes(header.binaryblock) + b"\0" * 4


def test_nifti_bytes_load_within_the_voxel_budget(tmp_path: Path) -> None:
    volume = load_series(ct_series())
    for name in ("ct.nii", "ct.nii.gz"):
        data = save_nifti(volume, tmp_path / name).read_bytes()
        loaded = load_nifti_bytes(data, max_voxels=volume.array.size)
        assert np.array_equal(loaded.array, volume.array)
        with pytest.raises(VolumeTooLargeError, match="RADCLOUD_API_MAX_INFER_VOXELS"):
            load_nifti_bytes(data, max_voxels=volume.array.size - 1)


def test_a_header_declaring_too_many_voxels_is_refused_before_reading() -> None:
    small_file = _header_bytes((4096, 4096, 4096))  # declares 256 GiB, holds nothing
    with pytest.raises(VolumeTooLargeError) as refused:
        load_nifti_bytes(gzip.compress(small_file), max_voxels=2**28)
    assert refused.value.voxels == 4096**3


def test_a_gzip_bomb_is_refused_after_its_declared_size() -> None:
    deflater = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = deflater.compress(_header_bytes((8, 8, 8)))
    bomb += b"".join(deflater.compress(zeros) for _ in range(64)) + deflater.flush()
    with pytest.raises(VolumeTooLargeError, match="inflates beyond"):
        load_nifti_bytes(bomb, max_voxels=2**28)


def test_not_nifti_bytes_are_unsupported() -> None:
    with pytest.raises(UnsupportedDataError, match="sizeof_hdr"):
        load_nifti_bytes(b"\0" * 600, max_voxels=100)
