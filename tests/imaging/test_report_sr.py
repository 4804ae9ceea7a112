"""The radiologist's signed report as a Comprehensive SR (imaging.report_sr)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset

from imaging.report_sr import (
    ADDED_FINDING,
    AI_AGREEMENT,
    AddedFindingItem,
    FindingDecisionItem,
    person_name,
    write_report_sr,
)
from tests.imaging.dicom_series import assert_dcmtk_accepts, ct_series


def _items(item: Any, code_value: str) -> list[Dataset]:
    """Every content item in ``item``'s tree whose concept name has ``code_value``."""
    found = []
    for child in item.get("ContentSequence") or []:
        names = child.get("ConceptNameCodeSequence") or []
        if names and names[0].CodeValue == code_value:
            found.append(child)
        found += _items(child, code_value)
    return found


def test_signed_report_is_verified_final_and_states_each_decision(tmp_path: Path) -> None:
    images = ct_series()
    marked = images[3]
    decisions = [
        FindingDecisionItem("Haemorrhage", "ich-seg", "2", 0.91, True, "confirmed"),
        FindingDecisionItem("Fracture", "fx-cls", "1", None, False, "rejected"),
    ]
    added = [
        AddedFindingItem("Mass", marked, {"x": 2.0, "y": 3.0, "width": 4.0, "height": 5.0}),
        AddedFindingItem("Oedema", images[5]),
    ]
    sr = write_report_sr(
        [images[0], marked, images[5]],
        author="dr-smith",
        organization="General Hospital",
        text="Acute haemorrhage.",
        decisions=decisions,
        added=added,
    )
    path = tmp_path / "report.dcm"
    pydicom.dcmwrite(path, sr, enforce_file_format=True)
    assert_dcmtk_accepts(path, tool="dsrdump")
    read = pydicom.dcmread(path)

    assert read.StudyInstanceUID == images[0].StudyInstanceUID
    assert read.SeriesInstanceUID != images[0].SeriesInstanceUID and read.SeriesNumber == 990
    assert (read.CompletionFlag, read.VerificationFlag) == ("COMPLETE", "VERIFIED")
    observer = read.VerifyingObserverSequence[0]
    assert observer.VerifyingObserverName == "dr-smith^"
    assert observer.VerifyingOrganization == "General Hospital"

    agreements = _items(read, AI_AGREEMENT.value)
    assert [a.ConceptCodeSequence[0].CodeValue for a in agreements] == ["373066001", "373067005"]
    texts = [a.ContentSequence[0].TextValue for a in agreements]
    assert texts == [
        "Haemorrhage by ich-seg 2, score 0.910, critical: confirmed by the radiologist",
        "Fracture by fx-cls 1: rejected by the radiologist",
    ]

    mass, oedema = _items(read, ADDED_FINDING.value)
    assert (mass.TextValue, oedema.TextValue) == ("Mass", "Oedema")
    region = mass.ContentSequence[0]
    assert region.GraphicType == "POLYLINE"
    assert list(region.GraphicData) == [2, 3, 6, 3, 6, 8, 2, 8, 2, 3]
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        marked.SOPInstanceUID
    )
    image = oedema.ContentSequence[0]
    assert image.RelationshipType == "HAS PROPERTIES"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == images[5].SOPInstanceUID


def test_person_name_marks_a_bare_user_name_as_family_name() -> None:
    assert person_name("dr-smith") == "dr-smith^"
    assert person_name("Smith^Anna") == "Smith^Anna"
