"""DICOM series → volume: ordering, geometry, rescale, multi-frame, 2D, codecs, bad series."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from imaging import (
    InconsistentSeriesError,
    UnsupportedDataError,
    load_series,
    load_series_files,
    series_geometry,
    split_by_series,
)
from tests.imaging.dicom_series import (
    RESCALE_INTERCEPT,
    chest_radiograph,
    ct_series,
    enhanced_ct,
    rotation,
    stored_values,
)


def bundled(name: str) -> Path:
    """A pydicom test file by name (skips when it is not bundled with this pydicom)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom (it lives in pydicom-data)")
    return Path(str(path))


def by_position(datasets: list[Dataset]) -> list[Dataset]:
    """The series sorted by slice position (the factory's spatial index)."""
    normal = rotation()[:, 2]
    return sorted(datasets, key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))


def test_slices_follow_positions_not_instance_number_or_file_order() -> None:
    datasets = ct_series()  # shuffled; InstanceNumber runs against the positions
    volume = load_series(datasets)
    expected_order = [ds.SOPInstanceUID for ds in by_position(datasets)]
    assert list(volume.sop_instance_uids) == expected_order
    assert np.array_equal(volume.array, stored_values(12, 32, 24) + RESCALE_INTERCEPT)
    numbers = [ds.InstanceNumber for ds in by_position(datasets)]
    assert numbers == sorted(numbers, reverse=True)


def test_rescale_gives_hounsfield_units_at_a_known_voxel() -> None:
    volume = load_series(ct_series())
    assert volume.array.dtype == np.float32
    assert volume.array[5, 7, 3] == 1000 + 40 * 5 + 3 * 7 + 3 - 1024  # HU = stored - 1024


def test_geometry_comes_from_the_headers() -> None:
    datasets = ct_series(slice_spacing=2.5, pixel_spacing=(0.7, 0.8))
    volume = load_series(datasets)
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.8), abs=1e-5)  # not SliceThickness 5
    assert not volume.is_2d
    assert volume.modality == "CT"
    assert volume.series_instance_uid == datasets[0].SeriesInstanceUID
    affine = volume.affine_lps()
    for k in (0, 4, 11):
        ds = next(d for d in datasets if d.SOPInstanceUID == volume.sop_instance_uids[k])
        row, column = (
            np.array(ds.ImageOrientationPatient[:3]),
            np.array(ds.ImageOrientationPatient[3:]),
        )
        j, i = 9, 5  # PS3.3 C.7.6.2.1.1: P = S + i * dc * row + j * dr * column
        expected = (
            np.array(ds.ImagePositionPatient)
            + i * ds.PixelSpacing[1] * row
            + j * ds.PixelSpacing[0] * column
        )
        assert affine @ [k, j, i, 1] == pytest.approx([*expected, 1.0], abs=1e-4)


def test_headers_alone_give_the_same_geometry(tmp_path: Path) -> None:
    datasets = ct_series()
    for index, ds in enumerate(datasets):
        pydicom.dcmwrite(tmp_path / f"{index}.dcm", ds, enforce_file_format=True)
    headers = [
        pydicom.dcmread(tmp_path / f"{index}.dcm", stop_before_pixels=True)
        for index in range(len(datasets))
    ]
    geometry = series_geometry(headers)
    volume = load_series_files(sorted(tmp_path.glob("*.dcm")))
    assert geometry.shape == volume.shape
    assert tuple(s.sop_instance_uid for s in geometry.slices) == volume.sop_instance_uids
    assert np.allclose(geometry.volume(volume.array).affine_lps(), volume.affine_lps())


def test_enhanced_multi_frame_uses_per_frame_positions_and_rescale() -> None:
    dataset = enhanced_ct(frames=6, slope=2.0, intercept=-1000.0)
    volume = load_series([dataset])
    assert volume.shape == (6, 16, 20)
    assert volume.spacing == pytest.approx((3.0, 0.9, 0.6), abs=1e-5)
    assert np.array_equal(volume.array, stored_values(6, 16, 20) * 2.0 - 1000.0)
    positions = [
        dataset.PerFrameFunctionalGroupsSequence[n - 1]
        .PlanePositionSequence[0]
        .ImagePositionPatient
        for n in volume.frame_numbers
    ]
    assert volume.affine_lps() @ [3, 0, 0, 1] == pytest.approx([*positions[3], 1], abs=1e-4)
    assert sorted(volume.frame_numbers) == [1, 2, 3, 4, 5, 6]
    assert volume.frame_numbers != (1, 2, 3, 4, 5, 6)  # stored out of spatial order


def test_single_multi_frame_with_grid_frame_offsets() -> None:
    dataset = pydicom.dcmread(bundled("rtdose.dcm"))
    volume = load_series([dataset])
    offsets = np.array(dataset.GridFrameOffsetVector, dtype=float)
    assert volume.shape == (int(dataset.NumberOfFrames), dataset.Rows, dataset.Columns)
    assert volume.spacing[0] == pytest.approx(abs(offsets[1] - offsets[0]))
    expected = dataset.pixel_array * float(dataset.DoseGridScaling)
    assert volume.array == pytest.approx(expected.astype(np.float32), rel=1e-6)


def test_radiograph_loads_as_one_flagged_2d_slice() -> None:
    volume = load_series([chest_radiograph(rows=40, columns=30)])
    assert volume.is_2d
    assert volume.shape == (1, 40, 30)
    assert volume.spacing[1:] == pytest.approx((0.143, 0.139))  # ImagerPixelSpacing
    assert np.allclose(np.abs(volume.direction.T @ volume.direction), np.eye(3))
    assert np.array_equal(volume.array[0], stored_values(1, 40, 30)[0])


def test_gantry_tilt_keeps_exact_slice_positions() -> None:
    axes = np.eye(3)
    tilted = ct_series(slices=6, axes=axes, shuffle=False)
    for k, ds in enumerate(tilted):  # slide each slice along the column direction
        shift = np.array([0.0, 0.4 * k, 0.0])
        ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient) + shift]
    volume = load_series(tilted)
    for k, ds in enumerate(tilted):
        assert volume.affine_lps() @ [k, 0, 0, 1] == pytest.approx(
            [*ds.ImagePositionPatient, 1], abs=1e-6
        )


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_series_decode_to_the_same_volume(syntax: str) -> None:
    encoder = get_encoder(syntax)  # the encoders are declared dependencies: never skipped
    assert encoder.is_available, f"no encoder for {syntax}: {encoder.missing_dependencies}"
    datasets = ct_series(slices=3, rows=64, columns=64)  # J2K needs >= 32 px per side
    expected = load_series(datasets).array
    compressed = []
    for ds in datasets:
        copied = copy.deepcopy(ds)
        copied.compress(syntax)
        compressed.append(copied)
    assert compressed[0].file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(load_series(compressed).array, expected)


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"],
)
def test_bundled_compressed_files_match_their_uncompressed_original(name: str) -> None:
    original = load_series([pydicom.dcmread(bundled("MR_small.dcm"))])
    decoded = load_series([pydicom.dcmread(bundled(name))])
    assert np.array_equal(decoded.array, original.array)
    assert decoded.spacing == original.spacing


def test_bundled_ct_small_is_in_hounsfield_units() -> None:
    dataset = pydicom.dcmread(bundled("CT_small.dcm"))
    volume = load_series([dataset])
    expected = dataset.pixel_array[64, 70] * dataset.RescaleSlope + dataset.RescaleIntercept
    assert volume.array[0, 64, 70] == expected


def test_bundled_jpeg2000_image_without_position_is_2d() -> None:
    dataset = pydicom.dcmread(bundled("JPEG2000.dcm"))
    volume = load_series([dataset])
    assert volume.is_2d
    assert volume.shape == (1, dataset.Rows, dataset.Columns)
    assert np.array_equal(volume.array[0], dataset.pixel_array.astype(np.float32))


def test_bundled_compressed_multi_frame_matches_its_uncompressed_twin() -> None:
    compressed = pydicom.dcmread(bundled("rtdose_rle.dcm"))  # RLE Lossless, 15 frames
    plain = pydicom.dcmread(bundled("rtdose.dcm"))
    volume = load_series([compressed])
    assert volume.shape[0] == int(compressed.NumberOfFrames) > 1
    assert np.allclose(volume.array, load_series([plain]).array)


def test_undecodable_pixel_data_names_the_transfer_syntax() -> None:
    dataset = pydicom.dcmread(bundled("JPEG-lossy.dcm"))  # a known-bad 12-bit JPEG stream
    with pytest.raises(UnsupportedDataError) as caught:
        load_series([dataset])
    assert caught.value.transfer_syntax_uid == dataset.file_meta.TransferSyntaxUID
    assert "JPEG Extended" in str(caught.value)


def test_transfer_syntax_without_a_decoder_is_refused() -> None:
    dataset = ct_series(slices=1)[0]
    dataset.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6")
    with pytest.raises(UnsupportedDataError, match=r"1\.2\.3\.4\.5\.6") as caught:
        load_series([dataset])
    assert caught.value.transfer_syntax_uid == "1.2.3.4.5.6"


def test_colour_images_are_refused() -> None:
    dataset = pydicom.dcmread(bundled("SC_rgb_rle_2frame.dcm"))
    with pytest.raises(UnsupportedDataError, match="SamplesPerPixel 3"):
        load_series([dataset])


def test_mixed_orientation_names_the_odd_instance() -> None:
    datasets = ct_series()
    odd = datasets[4]
    odd.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(InconsistentSeriesError, match="ImageOrientationPatient") as caught:
        load_series(datasets)
    assert caught.value.instance_uids == (odd.SOPInstanceUID,)
    assert odd.SOPInstanceUID in str(caught.value)
    assert "[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]" in caught.value.values[odd.SOPInstanceUID]


def test_missing_slice_names_the_instances_around_the_gap() -> None:
    ordered = by_position(ct_series())
    with_gap = ordered[:5] + ordered[6:]
    with pytest.raises(InconsistentSeriesError, match="missing slices") as caught:
        load_series(with_gap)
    assert set(caught.value.instance_uids) == {ordered[4].SOPInstanceUID, ordered[6].SOPInstanceUID}


def test_duplicate_position_names_both_instances() -> None:
    datasets = ct_series()
    duplicate = copy.deepcopy(datasets[3])
    duplicate.SOPInstanceUID = generate_uid()
    with pytest.raises(InconsistentSeriesError, match="duplicate slice position") as caught:
        load_series([*datasets, duplicate])
    assert set(caught.value.instance_uids) == {datasets[3].SOPInstanceUID, duplicate.SOPInstanceUID}


def test_mixed_rows_and_columns_names_the_odd_instance() -> None:
    datasets = ct_series(rows=32, columns=24)
    odd = datasets[7]
    odd.Rows, odd.Columns = 16, 16
    odd.PixelData = np.zeros((16, 16), np.int16).tobytes()
    with pytest.raises(InconsistentSeriesError, match="Rows/Columns") as caught:
        load_series(datasets)
    assert caught.value.instance_uids == (odd.SOPInstanceUID,)
    assert caught.value.values[odd.SOPInstanceUID] == "16x16"


def test_mixed_series_are_refused_and_can_be_split() -> None:
    first, second = ct_series(slices=4), ct_series(slices=3)
    with pytest.raises(InconsistentSeriesError, match="SeriesInstanceUID") as caught:
        load_series([*first, *second])
    assert set(caught.value.instance_uids) == {ds.SOPInstanceUID for ds in second}
    groups = split_by_series([*first, *second])
    assert [len(group) for group in groups.values()] == [4, 3]
    assert load_series(groups[second[0].SeriesInstanceUID]).shape[0] == 3


def test_slice_off_the_line_is_refused() -> None:
    datasets = ct_series()
    odd = datasets[2]
    row = np.array(odd.ImageOrientationPatient[:3])
    odd.ImagePositionPatient = [float(v) for v in np.array(odd.ImagePositionPatient) + 5 * row]
    with pytest.raises(InconsistentSeriesError, match="not on one line") as caught:
        load_series(datasets)
    assert caught.value.instance_uids == (odd.SOPInstanceUID,)


def test_missing_position_in_a_multi_slice_series_is_refused() -> None:
    datasets = ct_series()
    del datasets[0].ImagePositionPatient
    with pytest.raises(InconsistentSeriesError, match="ImagePositionPatient") as caught:
        load_series(datasets)
    assert caught.value.instance_uids == (datasets[0].SOPInstanceUID,)


def test_unreadable_file_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "not-dicom.dcm"
    path.write_bytes(b"hello")
    with pytest.raises(UnsupportedDataError, match=r"not-dicom\.dcm"):
        load_series_files([path])
