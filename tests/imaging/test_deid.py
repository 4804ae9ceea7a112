"""De-identification through a real Orthanc's Basic Profile with keyed, consistent UIDs."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from core.archive import OrthancArchive, open_archive
from core.secrets import load_secrets
from imaging.deid import (
    PSEUDONYM_PREFIX,
    DeidentifiedInstance,
    OrthancDeidentifier,
    Pseudonymizer,
)
from imaging.exceptions import DeidentificationError, OrthancUnavailableError
from imaging.synthetic import generate_study
from imaging.volume import load_series
from tests.conftest import Stack
from tests.helpers import free_port
from tests.imaging.dicom_series import assert_dcmtk_accepts
from tests.orthanc_studies import identifiable, store

HOSPITAL = "Deid Test Hospital"
KEY = "a deployment's de-identification key, 64 characters long........"
UID = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def test_pseudonyms_are_keyed_scoped_and_deterministic() -> None:
    training = Pseudonymizer(KEY, "training")
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert training.uid(uid) == Pseudonymizer(KEY, "training").uid(uid)
    others = {
        Pseudonymizer("another key", "training").uid(uid),
        Pseudonymizer(KEY, "research-partner").uid(uid),
        training.uid(uid + "1"),
    }
    assert training.uid(uid) not in others and len(others) == 3
    assert training.patient_id("MRN1", "Hospital A") != training.patient_id("MRN1", "Hospital B")
    assert training.patient_id("MRN1").startswith(PSEUDONYM_PREFIX)
    assert KEY not in repr(training)


def test_remapped_uids_are_valid_uuid_derived_uids() -> None:
    pseudonyms = Pseudonymizer(KEY, "training")
    for n in range(200):
        new = pseudonyms.uid(f"1.2.3.{n}")
        assert UID.match(new) and len(new) <= 64, new  # PS3.5 9.1, B.2
        value = int(new.removeprefix("2.25."))
        assert value < 2**128
        assert (value >> 76) & 0xF == 8  # UUID version 8
        assert (value >> 62) & 0x3 == 0b10  # RFC 9562 variant


def test_empty_key_or_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="key is empty"):
        Pseudonymizer("", "training")
    with pytest.raises(ValueError, match="scope is empty"):
        Pseudonymizer(KEY, "")


@pytest.fixture(scope="module")
def orthanc(stack: Stack) -> Iterator[OrthancArchive]:
    with stack.archive() as archive:
        yield archive


@pytest.fixture(scope="module")
def original(orthanc: OrthancArchive) -> tuple[list[Dataset], list[str]]:
    """A head CT with a hospital's identifiers in Orthanc, and its instances' Orthanc IDs."""
    datasets = identifiable(generate_study("head-ct", 3, 11, positive=True), HOSPITAL, 901)
    store(orthanc, datasets)
    ids = [_instance_id(orthanc, ds) for ds in datasets]
    return datasets, ids


def _instance_id(orthanc: OrthancArchive, ds: Dataset) -> str:
    (found,) = orthanc.search_for_instances({"SOPInstanceUID": str(ds.SOPInstanceUID)})
    return found.archive_id


def deidentify(
    orthanc: OrthancArchive, ids: list[str], key: str = KEY
) -> list[DeidentifiedInstance]:
    deidentifier = OrthancDeidentifier(orthanc, Pseudonymizer(key, "training"))
    return [deidentifier.deidentify_instance(i, issuer_of_patient_id=HOSPITAL) for i in ids]


def read(instances: list[DeidentifiedInstance]) -> list[Dataset]:
    return [pydicom.dcmread(io.BytesIO(instance.data)) for instance in instances]


@pytest.mark.integration
def test_identifying_attributes_are_removed_or_replaced(
    orthanc: OrthancArchive, original: tuple[list[Dataset], list[str]]
) -> None:
    datasets, ids = original
    source = datasets[0]
    result = read(deidentify(orthanc, ids))
    pseudonym = Pseudonymizer(KEY, "training").patient_id(str(source.PatientID), HOSPITAL)
    for ds in result:
        assert ds.PatientID == pseudonym and str(ds.PatientName) == pseudonym
        for keyword in (
            "PatientBirthDate",
            "AccessionNumber",
            "ReferringPhysicianName",
            "StudyDate",
            "StudyTime",
            "ContentDate",
            "StudyID",
        ):
            assert not ds.get(keyword), f"{keyword} = {ds.get(keyword)!r}"  # Z: emptied
        for keyword in (
            "InstitutionName",
            "OtherPatientIDs",
            "PatientAge",
            "SeriesDate",
            "StudyDescription",
            "SeriesDescription",
            "ImageComments",
        ):
            assert keyword not in ds, keyword  # X: removed
        assert not any(element.tag.is_private for element in ds), "private tags kept"
        assert ds.PatientIdentityRemoved == "YES"
        method = list(ds.DeidentificationMethod)
        assert "PS3.15-2021b" in method[0] and "Basic Profile" in method[0], method
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    text = b"".join(instance.data for instance in deidentify(orthanc, ids))
    for value in (source.PatientName, source.PatientID, HOSPITAL, source.OtherPatientIDs):
        assert str(value).encode() not in text, value


@pytest.mark.integration
def test_uids_are_replaced_consistently_and_keyed(
    orthanc: OrthancArchive, original: tuple[list[Dataset], list[str]]
) -> None:
    datasets, ids = original
    first, second = deidentify(orthanc, ids), deidentify(orthanc, ids)
    assert [i.data for i in first] == [i.data for i in second]  # byte-identical exports
    result = read(first)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword)) for ds in result}
        assert len(values) == 1, f"{keyword} is not consistent across the series: {values}"
        assert values.isdisjoint(str(ds.get(keyword)) for ds in datasets)
        assert all(UID.match(v) for v in values)
    new_sops = [str(ds.SOPInstanceUID) for ds in result]
    assert len(set(new_sops)) == len(datasets)
    assert set(new_sops).isdisjoint(str(ds.SOPInstanceUID) for ds in datasets)
    assert [ds.file_meta.MediaStorageSOPInstanceUID for ds in result] == new_sops
    assert [i.source_sop_instance_uid for i in first] == [str(ds.SOPInstanceUID) for ds in datasets]
    other = deidentify(orthanc, ids, key="another deployment's key")
    assert {i.study_instance_uid for i in other}.isdisjoint(i.study_instance_uid for i in first)
    assert {i.patient_id for i in other}.isdisjoint(i.patient_id for i in first)


@pytest.mark.integration
def test_series_reads_as_the_same_volume_and_dcmtk_accepts_it(
    orthanc: OrthancArchive, original: tuple[list[Dataset], list[str]], tmp_path: Path
) -> None:
    datasets, ids = original
    instances = deidentify(orthanc, ids)
    before, after = load_series(datasets), load_series(read(instances))
    np.testing.assert_array_equal(after.array, before.array)
    np.testing.assert_allclose(after.affine_lps(), before.affine_lps(), atol=1e-9)
    assert after.modality == "CT"
    for instance in instances[:: max(1, len(instances) // 4)]:
        path = tmp_path / f"{instance.sop_instance_uid}.dcm"
        path.write_bytes(instance.data)
        assert_dcmtk_accepts(path)


@pytest.mark.integration
def test_burned_in_annotation_is_refused(orthanc: OrthancArchive) -> None:
    ds = identifiable(generate_study("head-ct", 4, 11, positive=False), HOSPITAL, 902)[0]
    ds.BurnedInAnnotation = "YES"
    store(orthanc, [ds])
    orthanc_id = _instance_id(orthanc, ds)
    with pytest.raises(DeidentificationError, match="BurnedInAnnotation is YES") as caught:
        deidentify(orthanc, [orthanc_id])
    assert caught.value.orthanc_id == orthanc_id


@pytest.mark.integration
def test_unknown_instance_and_orthanc_down_are_clear_errors(
    stack: Stack, orthanc: OrthancArchive
) -> None:
    with pytest.raises(DeidentificationError, match="Orthanc has no such instance") as caught:
        deidentify(orthanc, ["0000-no-such-instance"])
    assert caught.value.status_code == 404
    down = stack.settings.model_copy(update={"orthanc_http_port": free_port()})
    with (
        open_archive(down, load_secrets(stack.settings), timeout_s=2) as client,
        pytest.raises(OrthancUnavailableError, match="cannot be reached") as unreachable,
    ):
        deidentify(client, ["any"])
    assert str(down.orthanc_http_port) in unreachable.value.url
