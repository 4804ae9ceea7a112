"""The research de-identifier on what a real DICOMweb node answers: a real Orthanc's QIDO-RS rows
and WADO-RS metadata (DICOM JSON with BulkDataURIs) and its stored Part 10 files, as radcloud
will get them from a remote hospital."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom import Dataset

from core.archive import ArchiveId, OrthancArchive, dicomweb_client, open_archive
from core.config import Settings, load_settings
from core.secrets import Secrets, load_secrets
from imaging.deid import Deidentifier, Pseudonymizer, local_patient_key
from imaging.synthetic import generate_study
from radcloud.services import Supervisor, orthanc_component
from tests.helpers import free_ports
from tests.imaging.test_deid_research import UID_TOKEN, assert_follows_profile, original_uids
from tests.orthanc_studies import identifiable, store

pytestmark = pytest.mark.integration

HOSPITAL = "Hospital B"
BASE = "https://radcloud.example/research/dicom-web"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Secrets]]:
    """Orthanc alone (with its DICOMweb plugin), on free ports: a hospital's own archive."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=tmp_path_factory.mktemp("deid-home"),
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
    )
    secrets = load_secrets(settings)
    supervisor = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    supervisor.up()
    try:
        yield settings, secrets
    finally:
        supervisor.down()


@pytest.fixture(scope="module")
def stored(orthanc: tuple[Settings, Secrets]) -> tuple[list[Dataset], list[bytes]]:
    """An identifiable head CT in Orthanc: the datasets sent and the Part 10 files it keeps."""
    datasets = identifiable(generate_study("head-ct", 5, 13, positive=True), HOSPITAL, 515)[:3]
    with open_archive(*orthanc) as archive:
        store(archive, datasets)
        files = [_file(archive, ds) for ds in datasets]
    return datasets, files


def _file(archive: OrthancArchive, ds: Dataset) -> bytes:
    (found,) = archive.search_for_instances({"SOPInstanceUID": str(ds.SOPInstanceUID)})
    return archive.retrieve_instance(ArchiveId(found.archive_id))


def _get(orthanc: tuple[Settings, Secrets], path: str) -> Any:
    with dicomweb_client(*orthanc) as client:
        answer = client.get(path, headers={"Accept": "application/dicom+json"})
    answer.raise_for_status()
    return answer.json()


def test_wado_metadata_from_orthanc_agrees_with_its_part10_files(
    orthanc: tuple[Settings, Secrets], stored: tuple[list[Dataset], list[bytes]]
) -> None:
    datasets, files = stored
    study = str(datasets[0].StudyInstanceUID)
    patient_key = local_patient_key(HOSPITAL, str(datasets[0].PatientID))
    metadata = _get(orthanc, f"/dicom-web/studies/{study}/metadata")
    assert any("BulkDataURI" in a for item in metadata for a in item.values())  # as sent
    deid = Deidentifier(Pseudonymizer("a research key", "research"), uri_base=BASE)
    by_uid = {
        str(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID): f
        for f in files
    }
    for item in metadata:
        result = deid.deidentify_json(item, patient_key=patient_key)
        original = pydicom.dcmread(io.BytesIO(by_uid[item["00080018"]["Value"][0]]))
        binary = deid.deidentify_dataset(original, patient_key=patient_key)
        assert_follows_profile_json(result, binary)
        text = str(result)
        for uid in original_uids(original):
            assert uid not in text, uid
        for value in (original.PatientID, original.AccessionNumber, HOSPITAL, "127.0.0.1"):
            assert str(value) not in text, value
        bulk = [a["BulkDataURI"] for a in result.values() if "BulkDataURI" in a]
        assert bulk and all(
            uri.startswith(f"{BASE}/studies/{binary.StudyInstanceUID}/") for uri in bulk
        )


def assert_follows_profile_json(result: dict[str, Any], binary: Dataset) -> None:
    """The JSON path's answer gives every attribute the binary path's value (bulk data apart:
    Orthanc sends those as BulkDataURIs)."""
    expected = binary.to_json_dict(bulk_data_threshold=2**62)
    for tag, attribute in result.items():
        if "BulkDataURI" in attribute:
            continue
        assert attribute == expected.get(tag), tag
    missing = {t for t in expected if t not in result and t != "7FE00010"}
    assert not missing, missing  # Orthanc's metadata holds every attribute but pixel data


def test_qido_rows_from_orthanc_are_deidentified_with_the_binary_paths_values(
    orthanc: tuple[Settings, Secrets], stored: tuple[list[Dataset], list[bytes]]
) -> None:
    datasets, files = stored
    study = str(datasets[0].StudyInstanceUID)
    patient_key = local_patient_key(HOSPITAL, str(datasets[0].PatientID))
    (row,) = _get(
        orthanc,
        f"/dicom-web/studies?StudyInstanceUID={study}&includefield=PatientBirthDate"
        "&includefield=InstitutionName&includefield=ReferringPhysicianName",
    )
    assert "00081190" in row  # Orthanc's RetrieveURL names its own address and the UID
    pseudonyms = Pseudonymizer("a research key", "research")
    result = Deidentifier(pseudonyms).deidentify_json(row, patient_key=patient_key)
    binary = Deidentifier(pseudonyms).deidentify_dataset(
        pydicom.dcmread(io.BytesIO(files[0])), patient_key=patient_key
    )
    assert "00081190" not in result  # no research base given: dropped
    assert result["0020000D"]["Value"] == [binary.StudyInstanceUID]
    assert result["00100020"]["Value"] == [binary.PatientID]
    assert result["00080020"]["Value"] == [binary.StudyDate]
    assert not set(UID_TOKEN.findall(str(result))) & original_uids(datasets[0])
    assert HOSPITAL not in str(result) and str(datasets[0].PatientID) not in str(result)
    as_dataset = Dataset.from_json(row)
    assert_follows_profile(as_dataset, Dataset.from_json(result), pseudonyms, patient_key)
