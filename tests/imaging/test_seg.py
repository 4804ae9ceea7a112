"""DICOM SEG: written from a mask, conformant, readable by highdicom, aligned to the source."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes

from imaging import (
    AI_RESULT_NOTICE,
    HEMORRHAGE,
    AlgorithmIdentity,
    ConformanceError,
    GeometryError,
    SegmentSpec,
    Volume,
    load_nifti,
    load_series,
    read_segmentation,
    save_nifti,
    write_segmentation,
)
from tests.imaging.dicom_series import (
    assert_dcmtk_accepts,
    chest_radiograph,
    ct_series,
    enhanced_ct,
)

ALGORITHM = AlgorithmIdentity("ich-seg", "1.2.0", parameters={"threshold": "0.5"})
EDEMA = SegmentSpec(
    label="Edema",
    property_category=codes.SCT.MorphologicallyAbnormalStructure,
    property_type=codes.SCT.Edema,
    tracking_id="edema",
)


def two_segment_mask(volume: Volume) -> np.ndarray:
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[3:7, 10:20, 5:15] = 1
    mask[8:10, 2:6, 3:7] = 2
    return mask


def written(seg: Dataset, path: Path) -> Dataset:
    """Write with a conformant file meta, check it with dcmtk, read it back."""
    pydicom.dcmwrite(path, seg, enforce_file_format=True)
    assert_dcmtk_accepts(path)
    return pydicom.dcmread(path)


def test_seg_round_trip_is_aligned_to_the_source_volume(tmp_path: Path) -> None:
    datasets = ct_series()
    volume = load_series(datasets)
    mask = two_segment_mask(volume)
    seg = write_segmentation(datasets, mask, [HEMORRHAGE, EDEMA], ALGORITHM)
    back = written(seg, tmp_path / "seg.dcm")

    assert np.array_equal(read_segmentation(back, volume, label_map=True), mask)
    stacked = read_segmentation(back, volume)
    assert stacked.shape == (2, *volume.shape)
    assert np.array_equal(stacked[1], mask == 2)
    # highdicom's own reader agrees, slice by referenced source instance
    by_instance = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids), combine_segments=True
    )
    assert np.array_equal(by_instance, mask)


def test_seg_describes_its_segments_and_algorithm(tmp_path: Path) -> None:
    datasets = ct_series()
    volume = load_series(datasets)
    seg = write_segmentation(datasets, two_segment_mask(volume), [HEMORRHAGE, EDEMA], ALGORITHM)
    parsed = hd.seg.Segmentation.from_dataset(written(seg, tmp_path / "seg.dcm"))
    assert parsed.number_of_segments == 2
    hemorrhage = parsed.get_segment_description(1)
    assert hemorrhage.segment_label == "Hemorrhage"
    assert hemorrhage.SegmentDescription == "Intracranial hemorrhage"
    assert hemorrhage.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    assert hemorrhage.segmented_property_type.value == "50960005"
    assert hemorrhage.algorithm_type.value == "AUTOMATIC"
    algorithm = hemorrhage.algorithm_identification
    assert algorithm is not None
    assert (algorithm[0].AlgorithmName, algorithm[0].AlgorithmVersion) == ("ich-seg", "1.2.0")
    assert algorithm[0].AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert hemorrhage.tracking_id == "hemorrhage"
    assert hemorrhage.tracking_uid
    assert parsed.get_segment_description(2).tracking_id == "edema"


def test_seg_is_a_new_series_in_the_source_study(tmp_path: Path) -> None:
    datasets = ct_series()
    volume = load_series(datasets)
    seg = write_segmentation(datasets, two_segment_mask(volume), [HEMORRHAGE, EDEMA], ALGORITHM)
    back = written(seg, tmp_path / "seg.dcm")
    source = datasets[0]
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert (back.PatientID, back.PatientName, back.PatientBirthDate) == (
        source.PatientID,
        source.PatientName,
        source.PatientBirthDate,
    )
    assert back.Manufacturer == "radcloud"
    assert back.SeriesNumber == 901
    assert back.SeriesNumber != source.SeriesNumber
    assert "ich-seg" in back.SeriesDescription
    assert back.ContentDescription == AI_RESULT_NOTICE
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in datasets}


def test_fractional_seg_keeps_probabilities(tmp_path: Path) -> None:
    datasets = ct_series()
    volume = load_series(datasets)
    probabilities = np.zeros((1, *volume.shape), dtype=np.float32)
    probabilities[0, 2:5, 3:9, 3:9] = 0.7
    probabilities[0, 6, 10:12, 10:12] = 1.0
    seg = write_segmentation(datasets, probabilities, [HEMORRHAGE], ALGORITHM, fractional=True)
    back = written(seg, tmp_path / "fractional.dcm")
    assert back.SegmentationType == "FRACTIONAL"
    assert back.SegmentationFractionalType == "PROBABILITY"
    read = read_segmentation(back, volume)
    assert read.dtype == np.float32
    assert np.abs(read - probabilities).max() <= 1 / 255


def test_seg_of_an_enhanced_multi_frame_source(tmp_path: Path) -> None:
    source = enhanced_ct()
    volume = load_series([source])
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[1:4, 3:8, 4:9] = 1  # slices in spatial order, frames stored shuffled
    back = written(write_segmentation([source], mask, [HEMORRHAGE], ALGORITHM), tmp_path / "s.dcm")
    assert np.array_equal(read_segmentation(back, volume, label_map=True), mask)
    positions_only = replace(volume, sop_instance_uids=(), frame_numbers=())
    assert np.array_equal(read_segmentation(back, positions_only, label_map=True), mask)


def test_seg_of_a_radiograph(tmp_path: Path) -> None:
    source = chest_radiograph()
    volume = load_series([source])
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[0, 5:15, 8:20] = 1
    back = written(write_segmentation([source], mask, [HEMORRHAGE], ALGORITHM), tmp_path / "s.dcm")
    assert np.array_equal(read_segmentation(back, volume, label_map=True), mask)


def test_seg_frames_are_placed_by_position_on_a_nifti_copy(tmp_path: Path) -> None:
    datasets = ct_series()
    volume = load_series(datasets)
    mask = two_segment_mask(volume)
    back = written(
        write_segmentation(datasets, mask, [HEMORRHAGE, EDEMA], ALGORITHM), tmp_path / "s.dcm"
    )
    copy = load_nifti(save_nifti(volume, tmp_path / "ct.nii.gz"))
    copy = replace(copy, sop_instance_uids=(), frame_numbers=())
    assert np.array_equal(read_segmentation(back, copy, label_map=True), mask)


def test_seg_of_another_series_does_not_fit(tmp_path: Path) -> None:
    datasets = ct_series()
    volume = load_series(datasets)
    back = written(
        write_segmentation(datasets, two_segment_mask(volume), [HEMORRHAGE, EDEMA], ALGORITHM),
        tmp_path / "s.dcm",
    )
    elsewhere = load_series(ct_series(origin=(0.0, 0.0, 0.0)))
    with pytest.raises(GeometryError, match="SEG frame"):
        read_segmentation(back, elsewhere)


def test_empty_mask_gives_a_valid_seg(tmp_path: Path) -> None:
    datasets = ct_series(slices=4)
    volume = load_series(datasets)
    empty = np.zeros(volume.shape, dtype=np.uint8)
    back = written(write_segmentation(datasets, empty, [HEMORRHAGE], ALGORITHM), tmp_path / "e.dcm")
    assert not read_segmentation(back, volume).any()


def test_mask_must_match_the_source_volume() -> None:
    datasets = ct_series()
    with pytest.raises(GeometryError, match=r"expected the source volume's \(12, 32, 24\)"):
        write_segmentation(datasets, np.zeros((12, 24, 32), np.uint8), [HEMORRHAGE], ALGORITHM)
    too_many = np.zeros((12, 32, 24), np.uint8)
    too_many[0, 0, 0] = 2
    with pytest.raises(ValueError, match="segment number 2"):
        write_segmentation(datasets, too_many, [HEMORRHAGE], ALGORITHM)


def test_non_conformant_values_copied_from_the_source_are_refused() -> None:
    source = enhanced_ct()
    volume = load_series([source])
    orientation = source.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    # full float precision: DS values over 16 characters (invalid, PS3.5 6.2), still loadable
    orientation.ImageOrientationPatient = [v + 1e-12 for v in volume.direction.T[:2].ravel()]
    assert np.allclose(load_series([source]).direction, volume.direction, atol=1e-9)
    with pytest.raises(ConformanceError, match="ImageOrientationPatient") as caught:
        write_segmentation([source], np.zeros(volume.shape, np.uint8), [HEMORRHAGE], ALGORITHM)
    assert caught.value.keyword == "ImageOrientationPatient"
