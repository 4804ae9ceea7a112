"""TID 1500 Measurement Report: written, conformant, read back with the AI's identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from imaging import (
    AI_RESULT_NOTICE,
    HEMORRHAGE,
    AlgorithmIdentity,
    Finding,
    load_series,
    read_findings,
    score_statement,
    write_measurement_report,
    write_segmentation,
)
from tests.imaging.dicom_series import assert_dcmtk_accepts, chest_radiograph, ct_series

ALGORITHM = AlgorithmIdentity("ich-seg", "1.2.0", parameters={"threshold": "0.5"})


def written(sr: Dataset, path: Path) -> Dataset:
    """Write, check with dcmdump and dsrdump (SR constraints), read back."""
    pydicom.dcmwrite(path, sr, enforce_file_format=True)
    assert_dcmtk_accepts(path)
    assert_dcmtk_accepts(path, tool="dsrdump")
    return pydicom.dcmread(path)


def hemorrhage_report(tmp_path: Path) -> tuple[list[Dataset], Dataset, Dataset, float]:
    datasets = ct_series()
    volume = load_series(datasets)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[3:7, 10:20, 5:15] = 1
    volume_mm3 = float(mask.sum() * np.prod(volume.spacing))
    seg = write_segmentation(datasets, mask, [HEMORRHAGE], ALGORITHM)
    finding = Finding(
        "Hemorrhage",
        segment_number=1,
        score=0.93,
        critical=True,
        volume_mm3=volume_mm3,
        text="Suspected acute subdural hematoma",
    )
    sr = write_measurement_report(datasets, seg, [finding], ALGORITHM, study_level_score=0.95)
    return datasets, seg, written(sr, tmp_path / "sr.dcm"), volume_mm3


def test_findings_round_trip_with_algorithm_and_lesion_volume(tmp_path: Path) -> None:
    _, seg, back, volume_mm3 = hemorrhage_report(tmp_path)
    finding, study = read_findings(back)
    assert finding["algorithm_name"] == "ich-seg"
    assert finding["algorithm_version"] == "1.2.0"
    assert finding["volume_mm3"] == pytest.approx(volume_mm3)
    assert finding["measurements"]["Volume"][1] == "mm3"
    assert finding["score"] == pytest.approx(0.93)
    assert finding["critical"] is True
    assert finding["finding"] == "Hemorrhage"
    assert finding["text"] == ["Suspected acute subdural hematoma"]
    assert finding["segment_number"] == 1
    assert finding["segmentation_sop_instance_uid"] == seg.SOPInstanceUID
    # the measurement group tracks the same lesion as the SEG segment
    assert finding["tracking_uid"] == seg.SegmentSequence[0].TrackingUID
    assert finding["tracking_id"] == seg.SegmentSequence[0].TrackingID
    assert study["tracking_id"] == "study"
    assert study["score"] == pytest.approx(0.95)
    assert study["critical"] is False


def test_report_is_a_comprehensive_3d_sr_with_a_device_observer(tmp_path: Path) -> None:
    _, seg, back, _ = hemorrhage_report(tmp_path)
    parsed = hd.sr.srread(tmp_path / "sr.dcm")
    assert isinstance(parsed, hd.sr.Comprehensive3DSR)
    assert back.SOPClassUID == Comprehensive3DSRStorage
    report: Any = parsed.content  # a MeasurementReport (typed as its base class)
    observers = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert len(observers) == 1
    device = observers[0].observer_identifying_attributes
    assert device.name == "ich-seg"
    assert device.manufacturer_name == "radcloud"
    assert device.model_name == "ich-seg 1.2.0"
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1
    assert groups[0].referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    volume = groups[0].get_measurements(name=codes.SCT.Volume)[0]
    assert volume.unit == codes.UCUM.CubicMillimeter
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.PreliminaryFlag == "PRELIMINARY"


def test_report_says_it_is_not_verified_by_a_radiologist(tmp_path: Path) -> None:
    _, _, back, _ = hemorrhage_report(tmp_path)
    dump = assert_dcmtk_accepts(tmp_path / "sr.dcm", tool="dsrdump")
    assert "Qualitative Evaluations" in dump
    texts = [
        item.TextValue
        for container in back.ContentSequence
        if container.ValueType == "CONTAINER"
        for item in container.get("ContentSequence", [])
        if item.ValueType == "TEXT"
    ]
    assert AI_RESULT_NOTICE in texts


def test_report_is_a_new_series_in_the_source_study(tmp_path: Path) -> None:
    datasets, seg, back, _ = hemorrhage_report(tmp_path)
    source = datasets[0]
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID not in {source.SeriesInstanceUID, seg.SeriesInstanceUID}
    assert back.SeriesNumber == 902
    assert back.Manufacturer == "radcloud"
    assert (back.PatientID, back.PatientName) == (source.PatientID, source.PatientName)
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in back.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert {ds.SOPInstanceUID for ds in datasets} | {seg.SOPInstanceUID} == evidence


def test_findings_without_a_segmentation(tmp_path: Path) -> None:
    datasets = ct_series(slices=4)
    finding = Finding("Hemorrhage", score=0.2, finding_type=codes.SCT.Hemorrhage)
    sr = write_measurement_report(datasets, None, [finding], ALGORITHM, study_level_score=None)
    (read,) = read_findings(written(sr, tmp_path / "sr.dcm"))
    assert read["tracking_id"] == "Hemorrhage"
    assert read["finding"] == "Hemorrhage"
    assert read["segment_number"] is None
    assert read["score"] == pytest.approx(0.2)


def test_2d_finding_reports_an_area_on_its_segmentation_frame(tmp_path: Path) -> None:
    source = chest_radiograph()
    volume = load_series([source])
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[0, 5:15, 8:20] = 1
    area = float(mask.sum() * volume.spacing[1] * volume.spacing[2])
    seg = write_segmentation([source], mask, [HEMORRHAGE], ALGORITHM)
    finding = Finding("Hemorrhage", segment_number=1, area_mm2=area, score=0.6)
    sr = write_measurement_report([source], seg, [finding], ALGORITHM, study_level_score=0.6)
    back = written(sr, tmp_path / "sr.dcm")
    report: Any = hd.sr.Comprehensive3DSR.from_dataset(back).content
    assert len(report.get_planar_roi_measurement_groups()) == 1
    read = read_findings(back)[0]
    assert read["area_mm2"] == pytest.approx(area)
    assert read["segment_number"] == 1


def test_a_finding_needs_its_segment() -> None:
    datasets = ct_series(slices=4)
    with pytest.raises(ValueError, match="no segmentation"):
        write_measurement_report(
            datasets,
            None,
            [Finding("Hemorrhage", segment_number=1)],
            ALGORITHM,
            study_level_score=None,
        )
    with pytest.raises(ValueError, match="nothing to report"):
        write_measurement_report(datasets, None, [], ALGORITHM, study_level_score=None)


def test_a_calibrated_score_is_stated_as_a_probability_with_its_threshold(
    tmp_path: Path,
) -> None:
    assert score_statement(0.871, 0.42, calibrated=True) == "AI probability 0.87 (threshold 0.42)"
    assert score_statement(0.991, 0.9, calibrated=False) == "AI score 0.99 (threshold 0.90)"
    assert score_statement(0.5, None, calibrated=True) == "AI probability 0.50"

    statement = score_statement(0.87, 0.42, calibrated=True)
    finding = Finding("Hemorrhage", score=0.87, critical=True, text=statement)
    sr = write_measurement_report(
        ct_series(slices=4), None, [finding], ALGORITHM, study_level_score=0.87
    )
    first = read_findings(written(sr, tmp_path / "sr.dcm"))[0]
    assert first["score"] == pytest.approx(0.87) and first["text"] == [statement]
