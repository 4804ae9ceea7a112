"""The research de-identifier (imaging.deid.Deidentifier), checked tag by tag against PS3.15
Table E.1-1 on pydicom's corpus and radcloud's synthetic studies, and its DICOM JSON path
against its binary path."""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from imaging import (
    HEMORRHAGE,
    AlgorithmIdentity,
    Finding,
    read_findings,
    write_measurement_report,
    write_segmentation,
)
from imaging._deid_rules import dummy_value, is_well_known_uid, shift_da, shift_dt
from imaging._deid_table import TABLE, Action, action_of
from imaging.deid import Deidentifier, Pseudonymizer, local_patient_key
from imaging.exceptions import BurnedInAnnotationError, DeidentificationError
from imaging.synthetic import generate_study
from tests.imaging.dicom_series import assert_dcmtk_accepts
from tests.orthanc_studies import identifiable

KEY = "a deployment's de-identification key, 64 characters long........"
BASE = "https://radcloud.example/research/dicom-web"
PATIENT = "radcloud-patient-0042"
UID_TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+)+")
# pydicom's corpus, by name (no download): CT, MR, RT, waveform, nested private sequences, ...
CORPUS = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "rtstruct.dcm",
    "waveform_ecg.dcm",
    "nested_priv_SQ.dcm",
    "priv_SQ.dcm",
    "UN_sequence.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "SC_rgb_small_odd.dcm",
)
# secondary capture, ultrasound, "OT", none flagged NO
WITHHELD = {
    "JPEG2000.dcm",
    "examples_palette.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "image_dfl.dcm",
    "SC_rgb_small_odd.dcm",
}


def deidentifier(key: str = KEY, scope: str = "research", base: str | None = BASE) -> Deidentifier:
    return Deidentifier(Pseudonymizer(key, scope), uri_base=base)


def walk(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)


def values(elem: DataElement) -> list[str]:
    if elem.value is None or elem.value == "":
        return []
    items = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
    return [str(v) for v in items]


def original_uids(ds: Dataset) -> set[str]:
    found = {v for e in walk(ds) if e.VR == "UI" for v in values(e)}
    return {u for u in found if not is_well_known_uid(u)}


def assert_follows_profile(
    original: Dataset, result: Dataset, pseudonyms: Pseudonymizer, patient_key: str = PATIENT
) -> None:
    """Every element of ``result`` (sequences included) as Table E.1-1 and the option want."""
    uids = original_uids(original)
    remapped = {pseudonyms.uid(u) for u in uids}
    for elem in walk(result):
        action = action_of(elem.tag)
        where = f"{elem.keyword or elem.tag} ({action})"
        assert not elem.tag.is_private, where
        modified_date = elem.VR in ("DA", "DT", "TM") and "Birth" not in elem.keyword
        assert action is not Action.X or modified_date, where  # the option's C
        if elem.VR == "UI":
            for uid in values(elem):
                assert is_well_known_uid(uid) or uid in remapped, where
        elif elem.keyword in ("PatientID", "PatientName"):
            assert values(elem) == [pseudonyms.patient_pseudonym(patient_key)], where
        elif action is None or modified_date or elem.VR == "SQ":
            continue  # kept; dates shifted (checked below); sequences walked
        elif action in (Action.D, Action.X_D):
            assert values(elem) in ([], [str(dummy_value(elem.VR))]), where
        else:
            assert values(elem) == [], where
    days = pseudonyms.date_shift(patient_key).days
    for elem in original:  # top-level dates: each moved by the patient's shift
        if elem.VR in ("DA", "DT") and "Birth" not in elem.keyword and values(elem):
            shift = shift_da if elem.VR == "DA" else shift_dt
            assert values(result[elem.tag]) == [shift(v, days) for v in values(elem)], elem
    text = " ".join(v for e in walk(result) if e.VR != "SQ" for v in values(e))
    assert not set(UID_TOKEN.findall(text)) & uids, "an original UID left"
    assert result.PatientIdentityRemoved == "YES"
    assert result.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [item.CodeValue for item in result.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]


def corpus(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not in this pydicom's corpus (pinned in pyproject.toml)"
    return pydicom.dcmread(path, force=True)


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_instances_follow_table_e11(name: str) -> None:
    original = corpus(name)
    before = copy.deepcopy(original)
    try:
        result = deidentifier().deidentify_dataset(original, patient_key=PATIENT)
    except BurnedInAnnotationError as exc:
        assert name in WITHHELD, exc
        return
    assert name not in WITHHELD
    assert_follows_profile(original, result, Pseudonymizer(KEY, "research"))
    assert original == before, "the input was changed"


@pytest.fixture(scope="module")
def head_ct() -> list[Dataset]:
    study = generate_study("head-ct", 3, 11, positive=True)
    return identifiable(study, "Hospital A", 7)


def test_synthetic_study_follows_profile_and_keeps_series_consistent(
    head_ct: list[Dataset],
) -> None:
    pseudonyms = Pseudonymizer(KEY, "research")
    results = [deidentifier().deidentify_dataset(ds, patient_key=PATIENT) for ds in head_ct[:3]]
    for original, result in zip(head_ct, results, strict=False):
        assert_follows_profile(original, result, pseudonyms)
        assert "ACME HOSPITAL" not in str(result) and "Hospital A" not in str(result)
        assert not result.get("PatientBirthDate")  # Z, not shifted
        assert np.array_equal(result.pixel_array, original.pixel_array)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({r[keyword].value for r in results}) == 1, keyword
        assert results[0][keyword].value == pseudonyms.uid(head_ct[0][keyword].value)
    assert len({r.SOPInstanceUID for r in results}) == 3


def test_same_input_and_key_give_the_same_output_and_another_key_not(
    head_ct: list[Dataset],
) -> None:
    first = deidentifier().deidentify_dataset(head_ct[0], patient_key=PATIENT)
    again = deidentifier().deidentify_dataset(head_ct[0], patient_key=PATIENT)
    other = deidentifier(key="another key").deidentify_dataset(head_ct[0], patient_key=PATIENT)
    assert first == again
    assert first.SOPInstanceUID != other.SOPInstanceUID and first.PatientID != other.PatientID


def test_seg_references_point_to_deidentified_sources(head_ct: list[Dataset]) -> None:
    mask = np.zeros((len(head_ct), head_ct[0].Rows, head_ct[0].Columns), dtype=np.uint8)
    mask[1, 10:20, 10:20] = 1
    seg = write_segmentation(head_ct, mask, [HEMORRHAGE], AlgorithmIdentity("ich-seg", "1.0"))
    deid = deidentifier()
    sources = {deid.deidentify_dataset(ds, patient_key=PATIENT).SOPInstanceUID for ds in head_ct}
    result = deid.deidentify_dataset(seg, patient_key=PATIENT)
    assert_follows_profile(seg, result, Pseudonymizer(KEY, "research"))
    (series,) = result.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == deid.pseudonyms.uid(head_ct[0].SeriesInstanceUID)
    referenced = {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence}
    assert referenced == sources
    derived = {
        source.ReferencedSOPInstanceUID
        for frame in result.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for source in derivation.SourceImageSequence
    }
    assert derived and derived <= sources
    assert result.StudyInstanceUID == deid.pseudonyms.uid(head_ct[0].StudyInstanceUID)


def shifted(ds: Dataset, key: str) -> Dataset:
    return deidentifier().deidentify_dataset(ds, patient_key=key)


def test_one_patient_key_gives_one_pseudonym_and_shift_across_hospitals(
    head_ct: list[Dataset],
) -> None:
    at_a = head_ct[0]
    at_b = copy.deepcopy(at_a)  # the same study held by hospital B under its own patient ID
    at_b.PatientID, at_b.IssuerOfPatientID, at_b.InstitutionName = "B-991", "HOSP-B", "Hospital B"
    a, b = shifted(at_a, PATIENT), shifted(at_b, PATIENT)
    assert a.PatientID == b.PatientID == str(a.PatientName)
    assert a.StudyDate == b.StudyDate != at_a.StudyDate
    assert a.StudyInstanceUID == b.StudyInstanceUID
    local_a = local_patient_key("Hospital A", str(at_a.PatientID))
    local_b = local_patient_key("Hospital B", "B-991", "HOSP-B")
    c, d = shifted(at_a, local_a), shifted(at_b, local_b)
    assert len({a.PatientID, c.PatientID, d.PatientID}) == 3
    pseudonyms = Pseudonymizer(KEY, "research")
    assert pseudonyms.date_shift(local_a) != pseudonyms.date_shift(local_b)
    assert 365 <= -pseudonyms.date_shift(PATIENT).days <= 3652


def test_intervals_between_a_patients_dates_are_kept(head_ct: list[Dataset]) -> None:
    first, later = copy.deepcopy(head_ct[0]), copy.deepcopy(head_ct[0])
    first.StudyDate, later.StudyDate = "20250101", "20250311"
    later.AcquisitionDateTime = "20250311143000.5+0100"
    a, b = shifted(first, PATIENT), shifted(later, PATIENT)

    def day(text: str) -> date:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    assert (day(b.StudyDate) - day(a.StudyDate)).days == 69
    assert b.AcquisitionDateTime == b.StudyDate + "143000.5+0100"
    assert day(a.StudyDate) - day("20250101") == Pseudonymizer(KEY, "research").date_shift(PATIENT)


@pytest.mark.parametrize(
    ("changes", "withheld"),
    [
        ({"BurnedInAnnotation": "YES"}, True),
        ({"Modality": "US"}, True),
        ({"Modality": "OT"}, True),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, True),  # Secondary Capture
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, True),  # Encapsulated PDF
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.4.1"}, True),  # Video Photographic
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, False),
        ({"BurnedInAnnotation": "NO"}, False),
    ],
)
def test_instances_that_may_show_text_in_pixels_are_withheld(
    head_ct: list[Dataset], changes: dict[str, str], withheld: bool
) -> None:
    ds = copy.deepcopy(head_ct[0])
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "BurnedInAnnotation" not in changes and "BurnedInAnnotation" in ds:
        del ds.BurnedInAnnotation
    if withheld:
        with pytest.raises(BurnedInAnnotationError) as caught:
            deidentifier().deidentify_dataset(ds, patient_key=PATIENT)
        assert caught.value.sop_instance_uid == ds.SOPInstanceUID
    else:
        deidentifier().deidentify_dataset(ds, patient_key=PATIENT)


def test_part10_file_round_trip_is_valid_dicom(head_ct: list[Dataset], tmp_path: Path) -> None:
    buffer = io.BytesIO()
    head_ct[0].save_as(buffer, enforce_file_format=True)
    data = deidentifier().deidentify_file(buffer.getvalue(), patient_key=PATIENT)
    result = pydicom.dcmread(io.BytesIO(data))
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    assert result.SOPInstanceUID == Pseudonymizer(KEY, "research").uid(head_ct[0].SOPInstanceUID)
    assert str(head_ct[0].PatientID).encode() not in data
    assert b"ACME HOSPITAL" not in data and b"Hospital A" not in data
    (tmp_path / "deid.dcm").write_bytes(data)
    assert_dcmtk_accepts(tmp_path / "deid.dcm")


def test_a_uid_hidden_in_a_kept_text_is_refused(head_ct: list[Dataset]) -> None:
    ds = copy.deepcopy(head_ct[0])
    ds.Manufacturer = f"see study {ds.StudyInstanceUID}"
    with pytest.raises(DeidentificationError, match="Manufacturer still holds an original UID"):
        deidentifier().deidentify_dataset(ds, patient_key=PATIENT)


def metadata_json(ds: Dataset, base: str = "https://hospital-b.example/dicom-web") -> dict:
    """``ds`` as a WADO-RS metadata answer gives it: pixel data as a BulkDataURI."""
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    where = f"{base}/studies/{study}/series/{series}/instances/{sop}"

    def bulk(elem: DataElement) -> str:
        return f"{where}/bulkdata/{elem.tag:08X}"

    answer = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk)
    answer["00081190"] = {"vr": "UR", "Value": [where]}  # RetrieveURL
    return answer


def test_json_path_agrees_with_binary_path(head_ct: list[Dataset]) -> None:
    deid = deidentifier()
    original = head_ct[0]
    as_json = metadata_json(original)
    result = deid.deidentify_json(as_json, patient_key=PATIENT)
    binary = deid.deidentify_dataset(original, patient_key=PATIENT)
    expected = binary.to_json_dict(bulk_data_threshold=2**62)
    study, series, sop = binary.StudyInstanceUID, binary.SeriesInstanceUID, binary.SOPInstanceUID
    where = f"{BASE}/studies/{study}/series/{series}/instances/{sop}"
    assert result.pop("7FE00010") == {"vr": "OW", "BulkDataURI": f"{where}/bulkdata/7FE00010"}
    assert result.pop("00081190") == {"vr": "UR", "Value": [where]}
    expected.pop("7FE00010")
    assert result == expected
    text = str(result)
    for uid in original_uids(original):
        assert uid not in text, uid
    assert str(original.PatientID) not in text and "hospital-b" not in text


def test_json_without_a_base_drops_uris_and_withholds_like_the_binary_path(
    head_ct: list[Dataset],
) -> None:
    result = deidentifier(base=None).deidentify_json(metadata_json(head_ct[0]), patient_key=PATIENT)
    assert "7FE00010" not in result and "00081190" not in result
    us = copy.deepcopy(head_ct[0])
    us.Modality = "US"
    del us.BurnedInAnnotation
    with pytest.raises(BurnedInAnnotationError):
        deidentifier().deidentify_json(us.to_json_dict(), patient_key=PATIENT)
    study_row = {
        "0020000D": {"vr": "UI", "Value": [head_ct[0].StudyInstanceUID]},
        "00080061": {"vr": "CS", "Value": ["US"]},
        "00100020": {"vr": "LO", "Value": [str(head_ct[0].PatientID)]},
    }
    row = deidentifier().deidentify_json(study_row, patient_key=PATIENT)
    assert row["0020000D"]["Value"] == [
        Pseudonymizer(KEY, "research").uid(head_ct[0].StudyInstanceUID)
    ]
    assert row["00100020"]["Value"] == [Pseudonymizer(KEY, "research").patient_pseudonym(PATIENT)]


def test_empty_patient_key_is_refused(head_ct: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="patient key is empty"):
        deidentifier().deidentify_dataset(head_ct[0], patient_key=" ")
    with pytest.raises(ValueError, match="needs a hospital and a patient ID"):
        local_patient_key("Hospital A", "")


def without_bulk(expected: dict, original: dict, uris: list[str] | None = None) -> dict:
    """``expected`` without the attributes that are BulkDataURIs in ``original`` (their URIs
    collected in ``uris``), sequences included."""
    kept = {}
    for tag, attribute in expected.items():
        source = original.get(tag, {})
        if "BulkDataURI" in source:
            if uris is not None:
                uris.append(source["BulkDataURI"])
            continue
        kept[tag] = attribute
        if attribute.get("vr") == "SQ" and attribute.get("Value"):
            items = source.get("Value") or [{}] * len(attribute["Value"])
            pairs = zip(attribute["Value"], items, strict=True)
            kept[tag] = {**attribute, "Value": [without_bulk(i, o, uris) for i, o in pairs]}
    return kept


NOT_INSTANCES = frozenset({"UN_sequence.dcm", "nested_priv_SQ.dcm", "priv_SQ.dcm"})
"""Corpus files that are data sets, not instances (no SOP Instance UID): no WADO-RS metadata."""


def test_the_corpus_files_left_out_of_the_json_comparison_are_not_instances() -> None:
    for name in sorted(NOT_INSTANCES):
        assert "SOPInstanceUID" not in corpus(name), name


@pytest.mark.parametrize("name", sorted(set(CORPUS) - WITHHELD - NOT_INSTANCES))
def test_json_path_agrees_with_binary_path_on_the_corpus(name: str) -> None:
    original = corpus(name)
    assert "SOPInstanceUID" in original, name
    deid = deidentifier()
    as_json = metadata_json(original)
    result = deid.deidentify_json(as_json, patient_key=PATIENT)
    binary = deid.deidentify_dataset(original, patient_key=PATIENT)
    expected = without_bulk(binary.to_json_dict(bulk_data_threshold=2**62), as_json)
    study, series = binary.StudyInstanceUID, binary.SeriesInstanceUID
    retrieve_url = f"{BASE}/studies/{study}/series/{series}/instances/{binary.SOPInstanceUID}"
    assert result.pop("00081190") == {"vr": "UR", "Value": [retrieve_url]}
    uris: list[str] = []
    assert without_bulk(result, result, uris) == expected
    uids = original_uids(original)
    for uri in uris:
        assert uri.startswith(f"{retrieve_url}/bulkdata/"), uri
        assert not set(UID_TOKEN.findall(uri)) & uids


def test_ai_report_sr_references_point_to_deidentified_seg_and_sources(
    head_ct: list[Dataset],
) -> None:
    mask = np.zeros((len(head_ct), head_ct[0].Rows, head_ct[0].Columns), dtype=np.uint8)
    mask[1, 10:20, 10:20] = 1
    algorithm = AlgorithmIdentity("ich-seg", "1.0")
    seg = write_segmentation(head_ct, mask, [HEMORRHAGE], algorithm)
    finding = Finding("Hemorrhage", segment_number=1, score=0.93, critical=True)
    sr = write_measurement_report(head_ct, seg, [finding], algorithm, study_level_score=0.9)
    deid = deidentifier()
    targets = {deid.deidentify_dataset(seg, patient_key=PATIENT).SOPInstanceUID} | {
        deid.deidentify_dataset(ds, patient_key=PATIENT).SOPInstanceUID for ds in head_ct
    }
    result = deid.deidentify_dataset(sr, patient_key=PATIENT)
    assert_follows_profile(sr, result, Pseudonymizer(KEY, "research"))
    referenced = {str(e.value) for e in walk(result) if e.keyword == "ReferencedSOPInstanceUID"}
    assert referenced and referenced <= targets
    findings = [f for f in read_findings(result) if f.get("finding") == "Hemorrhage"]
    assert [(f["score"], f["critical"]) for f in findings] == [(0.93, True)]
    assert findings[0]["segmentation_sop_instance_uid"] in targets


def test_a_metadata_answer_keeps_what_may_go_and_counts_what_is_withheld(
    head_ct: list[Dataset],
) -> None:
    us = copy.deepcopy(head_ct[1])
    us.Modality = "US"
    del us.BurnedInAnnotation
    answer = [metadata_json(head_ct[0]), metadata_json(us), metadata_json(head_ct[2])]
    deid = deidentifier()
    kept, withheld = deid.deidentify_json_answer(answer, patient_key=lambda row: PATIENT)
    assert [row["00080018"]["Value"][0] for row in kept] == [
        deid.pseudonyms.uid(head_ct[0].SOPInstanceUID),
        deid.pseudonyms.uid(head_ct[2].SOPInstanceUID),
    ]
    assert [exc.sop_instance_uid for exc in withheld] == [us.SOPInstanceUID]


SAMPLES: dict[str, object] = {
    "PN": "DOE^IDENT",
    "DA": "20200102",
    "DT": "20200102030405",
    "TM": "030405",
    "DS": "7.5",
    "IS": "7",
    "AS": "042Y",
    "US": 7,
    "SS": 7,
    "UL": 7,
    "SL": 7,
    "UV": 7,
    "SV": 7,
    "FL": 7.5,
    "FD": 7.5,
    "AT": 0x00100010,
    "OB": b"IDENT!",
    "OW": b"IDENT!",
    "OF": b"IDEN",
    "OD": b"IDENTIFY",
    "OL": b"IDEN",
    "OV": b"IDENTIFY",
    "UN": b"IDENT!",
    "UR": "https://hospital.example/IDENT",
    "CS": "IDENT",
}


def every_table_attribute() -> tuple[Dataset, dict[int, str]]:
    """A dataset holding every attribute of Table E.1-1 (and one of each repeating group) with
    an identifying value, sequences with an identifying item; and each tag's VR."""
    tags = [*TABLE, 0x60003000, 0x60004000, 0x50000010]
    ds, vrs = Dataset(), {}
    for tag in tags:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if " or " in vr:
            vr = vr.split(" or ")[0]
        if vr == "SQ":
            item = Dataset()
            item.PatientName = "NESTED^IDENT"
            item.ReferencedSOPInstanceUID = f"1.2.3.4.{tag}"
            value: object = [item]
        elif vr == "UI":
            value = f"1.2.3.{tag}"
        else:
            value = SAMPLES.get(vr, f"IDENT{tag:08X}"[:16])
        ds.add_new(tag, vr, value)
        vrs[tag] = vr
    ds.SOPInstanceUID, ds.BurnedInAnnotation = "1.2.3.99", "NO"
    return ds, vrs


def test_every_attribute_of_table_e11_gets_its_action() -> None:
    original, vrs = every_table_attribute()
    assert len(vrs) > 550
    pseudonyms = Pseudonymizer(KEY, "research")
    result = deidentifier(base=None).deidentify_dataset(original, patient_key=PATIENT)
    days = pseudonyms.date_shift(PATIENT).days
    for tag, vr in vrs.items():
        action, elem = action_of(tag), result.get(tag)
        where = f"{Tag(tag)} {keyword_for_tag(tag)} {vr} {action}"
        if tag in (0x00100010, 0x00100020):  # PatientName, PatientID: the pseudonym
            assert str(elem.value) == pseudonyms.patient_pseudonym(PATIENT), where
        elif vr in ("DA", "DT", "TM") and tag not in (0x00100030, 0x00100032):
            shifted = {"DA": shift_da, "DT": shift_dt}.get(vr)
            expected = shifted(str(original[tag].value), days) if shifted else "030405"
            assert elem is not None and elem.value == expected, where  # the option's C
        elif action is Action.X or vr in ("UN", "UR"):
            assert elem is None, where  # removed (a URI too, without a research base)
        elif vr == "UI":
            assert elem.value == pseudonyms.uid(original[tag].value), where
        elif vr == "SQ" and action in (Action.D, Action.X_D, Action.X_Z_U):
            (item,) = elem.value  # kept, cleaned by the same table
            assert str(item.PatientName) == pseudonyms.patient_pseudonym(PATIENT), where
            assert item.ReferencedSOPInstanceUID == pseudonyms.uid(f"1.2.3.4.{tag}"), where
        elif vr == "SQ":
            assert elem is not None and len(elem.value) == 0, where  # Z: an empty sequence
        elif action in (Action.D, Action.X_D):
            assert elem is not None and elem.value == dummy_value(vr), where
        else:  # Z, Z/D, X/Z, X/Z/D, X/Z/U*, U on a value that is no UID
            assert elem is not None and elem.value in (None, "", b""), where
    assert "IDENT" not in str(result)
