"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) on the real API started by ``radcloud up``.

Reads use the dicomweb-client library as a viewer would; status codes and malformed requests use
raw httpx. QIDO/WADO data is uploaded straight to Orthanc, so those tests do not depend on the
gateway process; STOW goes through the gateway process, which ``radcloud up`` starts, and on to
Orthanc (with the default Orthanc edge in batches into Orthanc's own STOW-RS; the spool-full
answer on a second gateway with the pynetdicom edge, whose spool is the only one).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from core.audit import AuditTrail
from core.secrets import load_secrets
from dicom_gateway.quarantine import Quarantine
from radcloud.services import http_ok
from tests.conftest import Stack, settings_from_env
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.integration

DICOM_JSON = "application/dicom+json"
BOUNDARY = "radcloud-test-boundary-5c0f"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
CANNOT_UNDERSTAND, DOES_NOT_MATCH_SOP_CLASS, STUDY_MISMATCH = 0xC000, 0xA900, 0xC409
OUT_OF_RESOURCES = 0xA700


def _dicomweb(stack: Stack, role: str) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"{stack.settings.api_url}/dicom-web",
        headers={"Authorization": f"Bearer {stack.token_for(role)}"},
    )


def _fresh(name: str = "MR_small.dcm") -> Dataset:
    """A test file from pydicom with new UIDs, so that each test stores its own study."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _encode(ds: Dataset) -> bytes:
    with io.BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds)
        return buffer.getvalue()


def _multipart(*parts: bytes) -> bytes:
    """A STOW-RS body: each part ``application/dicom``, closed by the final delimiter."""
    delimiter = f"--{BOUNDARY}".encode()
    body = b"".join(
        delimiter + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        for part in parts
    )
    return body + delimiter + b"--\r\n"


def _stow(stack: Stack, body: bytes, study: str | None = None, **headers: str) -> httpx.Response:
    path = f"/dicom-web/studies/{study}" if study else "/dicom-web/studies"
    with stack.client("pacs") as client:
        return client.post(path, content=body, headers={"Content-Type": MULTIPART, **headers})


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    value: list[Any] = item.get(tag, {}).get("Value", [])
    return value


def _audit(stack: Stack, event_code: str, resource_id: str) -> list[dict[str, Any]]:
    with stack.client("admin") as admin:
        params = {"event_code": event_code, "resource_id": resource_id}
        records: list[dict[str, Any]] = admin.get("/api/audit", params=params).json()
    return records


@pytest.fixture(scope="module")
def ct_small(stack: Stack) -> Dataset:
    """CT_small.dcm with new UIDs, stored through STOW-RS by the test hospital's PACS key: a
    study the API serves must have an owning hospital, which only the gateway records (an
    instance put straight into Orthanc belongs to no one and answers 404). New UIDs: the
    file's own study may be another test hospital's already (the gateway's corpus test sends
    it from its sender), and then the gateway refuses it (another hospital's study)."""
    ds = _fresh("CT_small.dcm")
    answer = _dicomweb(stack, "pacs").store_instances([ds])
    assert "FailedSOPSequence" not in answer
    reader = _dicomweb(stack, "radiologist")

    def owned() -> bool:
        try:
            return bool(reader.search_for_series(ds.StudyInstanceUID))
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code != 404:
                raise
            return False

    assert wait_until(owned, timeout_s=60, interval_s=0.2)
    return ds


@contextmanager
def _process(module: str, env: dict[str, str], health_url: str, log: Path) -> Iterator[None]:
    """``python -m module`` with ``env``, once ``health_url`` answers; terminated after."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=output, stderr=output
        )
    try:
        started = wait_until(lambda: http_ok(health_url), timeout_s=60, interval_s=0.1)
        assert started, f"{module} did not start:\n{log.read_text()}"
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def _api(stack: Stack, log: Path, **settings: str) -> Iterator[str]:
    """A second API process on the stack's database, whose Orthanc is unreachable; yields its
    URL. ``settings``: more ``RADCLOUD_*`` overrides.
    """
    env = stack.env | {
        "RADCLOUD_API_PORT": str(free_port()),
        "RADCLOUD_ORTHANC_HTTP_PORT": str(free_port()),
    }
    env |= {f"RADCLOUD_{key.upper()}": value for key, value in settings.items()}
    url = settings_from_env(env).api_url
    with _process("serving.api", env, f"{url}/healthz", log):
        yield url


@pytest.fixture(scope="module")
def full_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A second gateway process whose spool disk counts as full (it demands more free space than
    any disk has), in its own home with the stack's secrets; yields its HTTP port.
    """
    home = tmp_path_factory.mktemp("full-gateway")
    shutil.copy2(stack.settings.paths.secrets_file, home / "secrets.json")
    port = free_port()
    env = stack.env | {
        "RADCLOUD_HOME": str(home),
        "RADCLOUD_GATEWAY_PORT": str(free_port()),
        "RADCLOUD_GATEWAY_METRICS_PORT": str(port),
        "RADCLOUD_GATEWAY_STOW_PORT": str(free_port()),  # the stack's gateway holds its own
        "RADCLOUD_ORTHANC_HTTP_PORT": str(free_port()),
        "RADCLOUD_GATEWAY_MIN_FREE_DISK_MIB": str(2**40),
        "RADCLOUD_GATEWAY_EDGE": "pynetdicom",  # the edge that spools
    }
    health_url = settings_from_env(env).gateway_health_url
    with _process("dicom_gateway", env, health_url, home / "gateway.log"):
        yield port


@pytest.fixture(scope="module")
def degraded_api(
    stack: Stack, full_gateway: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second API process on the stack's database, whose Orthanc is unreachable and whose
    gateway's spool is full.
    """
    log = tmp_path_factory.mktemp("degraded-api") / "api.log"
    with _api(stack, log, gateway_metrics_port=str(full_gateway), gateway_edge="pynetdicom") as url:
        yield url


# -- QIDO-RS -----------------------------------------------------------------------------------


def test_qido_searches_studies_series_and_instances(stack: Stack, ct_small: Dataset) -> None:
    client = _dicomweb(stack, "radiologist")
    studies = client.search_for_studies(
        search_filters={"StudyInstanceUID": ct_small.StudyInstanceUID}
    )
    assert [_values(s, "0020000D") for s in studies] == [[ct_small.StudyInstanceUID]]
    series = client.search_for_series(ct_small.StudyInstanceUID)
    assert [_values(s, "0020000E") for s in series] == [[ct_small.SeriesInstanceUID]]
    instances = client.search_for_instances(ct_small.StudyInstanceUID, ct_small.SeriesInstanceUID)
    assert [_values(i, "00080018") for i in instances] == [[ct_small.SOPInstanceUID]]


def test_qido_retrieve_urls_name_radcloud_not_orthanc(stack: Stack, ct_small: Dataset) -> None:
    with stack.client("radiologist") as client:
        answer = client.get(
            "/dicom-web/studies", params={"StudyInstanceUID": ct_small.StudyInstanceUID}
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(DICOM_JSON)
    assert f":{stack.settings.orthanc_http_port}" not in answer.text
    [study] = answer.json()
    assert _values(study, "00081190") == [
        f"{stack.settings.api_url}/dicom-web/studies/{ct_small.StudyInstanceUID}"
    ]


# -- WADO-RS -----------------------------------------------------------------------------------


def test_wado_retrieves_the_instance_unchanged(stack: Stack, ct_small: Dataset) -> None:
    instance = _dicomweb(stack, "ml_engineer").retrieve_instance(
        ct_small.StudyInstanceUID, ct_small.SeriesInstanceUID, ct_small.SOPInstanceUID
    )
    assert instance.SOPInstanceUID == ct_small.SOPInstanceUID
    assert instance.PixelData == ct_small.PixelData


def test_wado_study_metadata_never_names_orthanc(stack: Stack, ct_small: Dataset) -> None:
    metadata = _dicomweb(stack, "radiologist").retrieve_study_metadata(ct_small.StudyInstanceUID)
    assert [_values(m, "00080018") for m in metadata] == [[ct_small.SOPInstanceUID]]
    assert f":{stack.settings.orthanc_http_port}" not in json.dumps(metadata)
    with stack.client("radiologist") as client:
        raw = client.get(f"/dicom-web/studies/{ct_small.StudyInstanceUID}/metadata")
        assert f":{stack.settings.orthanc_http_port}" not in raw.text
        bulk_uri = raw.json()[0]["7FE00010"]["BulkDataURI"]
        assert bulk_uri.startswith(f"{stack.settings.api_url}/dicom-web/studies/")
        bulk = client.get(bulk_uri)  # the rewritten BulkDataURI leads back through radcloud
    assert bulk.status_code == 200
    assert bulk.headers["content-type"].startswith("multipart/related")
    assert ct_small.PixelData in bulk.content


def test_wado_retrieves_frames_and_rendered_images(stack: Stack, ct_small: Dataset) -> None:
    uids = (ct_small.StudyInstanceUID, ct_small.SeriesInstanceUID, ct_small.SOPInstanceUID)
    frames = _dicomweb(stack, "radiologist").retrieve_instance_frames(*uids, frame_numbers=[1])
    assert frames == [ct_small.PixelData]
    path = "/dicom-web/studies/{}/series/{}/instances/{}".format(*uids)
    with stack.client("radiologist") as client:
        framed = client.get(f"{path}/frames/1")
        rendered = client.get(f"{path}/rendered", headers={"Accept": "image/png"})
    assert f":{stack.settings.orthanc_http_port}" not in framed.content.decode("latin-1")
    assert rendered.status_code == 200
    assert rendered.headers["content-type"] == "image/png"
    assert rendered.content.startswith(b"\x89PNG")


def test_wado_unknown_study_is_404_json_and_audited(stack: Stack) -> None:
    study = generate_uid()
    with stack.client("radiologist") as client:
        answer = client.get(f"/dicom-web/studies/{study}/metadata")
        bad_uid = client.get("/dicom-web/studies/..$uid/metadata")
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"
    assert bad_uid.status_code == 400  # not a UID: refused before any lookup (issue 14)
    [record] = _audit(stack, "110103", study)
    assert record["outcome"] == 4
    assert record["detail"]["status"] == 404


def test_unreachable_image_store_is_503_not_a_stack_trace(degraded_api: str, stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.token_for('radiologist')}"}
    answer = httpx.get(f"{degraded_api}/dicom-web/studies", headers=headers, timeout=30)
    assert answer.status_code == 503
    assert answer.json()["error"] == "image_store_unavailable"
    assert "image store" in answer.json()["detail"]


# -- STOW-RS -----------------------------------------------------------------------------------


def test_stow_stores_and_the_instance_becomes_retrievable(stack: Stack) -> None:
    ds = _fresh()
    answer = _dicomweb(stack, "pacs").store_instances([ds])
    [stored] = answer.ReferencedSOPSequence
    assert stored.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert stored.ReferencedSOPClassUID == ds.SOPClassUID
    assert stored.RetrieveURL.endswith(
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    assert "FailedSOPSequence" not in answer
    reader = _dicomweb(stack, "radiologist")
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)

    def retrievable() -> bool:
        # STOW-RS answers once the instance is durable (in Orthanc, or spooled with the
        # pynetdicom edge); the study is the API's (its owning hospital known) once the gateway
        # has recorded it: until then the study is 404
        try:
            return bool(reader.search_for_instances(ds.StudyInstanceUID, ds.SeriesInstanceUID))
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code != 404:
                raise
            return False

    assert wait_until(retrievable, timeout_s=30, interval_s=0.1)
    instance = reader.retrieve_instance(*uids)
    assert instance.PixelData == ds.PixelData


def test_stow_refusals_are_reported_and_quarantined(stack: Stack) -> None:
    garbage = f"not DICOM at all {uuid.uuid4()}".encode()
    no_study = _fresh()
    del no_study.StudyInstanceUID
    answer = _stow(stack, _multipart(garbage, _encode(no_study)))
    assert answer.status_code == 409
    assert answer.headers["content-type"] == DICOM_JSON
    unreadable, nonconformant = _values(answer.json(), "00081198")
    assert _values(unreadable, "00081197") == [CANNOT_UNDERSTAND]
    assert "DICM" in _values(unreadable, "00000902")[0]
    assert _values(nonconformant, "00081197") == [DOES_NOT_MATCH_SOP_CLASS]
    assert _values(nonconformant, "00081155") == [no_study.SOPInstanceUID]
    assert "StudyInstanceUID" in _values(nonconformant, "00000902")[0]
    assert "00081199" not in answer.json()
    quarantine = Quarantine(stack.settings.paths.quarantine_dir)
    entries = quarantine.list()
    assert any(e.sop_instance_uid == no_study.SOPInstanceUID for e in entries)
    assert any(
        e.error == "UnreadableInstanceError" and quarantine.data(e.entry_id) == garbage
        for e in entries
    )


def test_stow_with_some_refused_is_202(stack: Stack) -> None:
    good = _fresh()
    answer = _stow(stack, _multipart(_encode(good), b"\x00" * 200))
    assert answer.status_code == 202
    [stored] = _values(answer.json(), "00081199")
    assert _values(stored, "00081155") == [good.SOPInstanceUID]
    [failed] = _values(answer.json(), "00081198")
    assert _values(failed, "00081197") == [CANNOT_UNDERSTAND]


def test_stow_to_a_study_refuses_instances_of_another(stack: Stack) -> None:
    target, other = _fresh(), _fresh()
    answer = _stow(stack, _multipart(_encode(other)), study=target.StudyInstanceUID)
    assert answer.status_code == 409
    [failed] = _values(answer.json(), "00081198")
    assert _values(failed, "00081197") == [STUDY_MISMATCH]
    assert _values(failed, "00081155") == [other.SOPInstanceUID]
    quarantined = Quarantine(stack.settings.paths.quarantine_dir).list()
    assert not any(e.sop_instance_uid == other.SOPInstanceUID for e in quarantined)
    same = _stow(stack, _multipart(_encode(target)), study=target.StudyInstanceUID)
    assert same.status_code == 200
    assert _values(same.json(), "00081190") == [
        f"{stack.settings.api_url}/dicom-web/studies/{target.StudyInstanceUID}"
    ]


def test_stow_parses_unquoted_boundary_preamble_and_tiny_chunks(stack: Stack) -> None:
    ds = _fresh("CT_small.dcm")
    body = b"This is the preamble.\r\n" + _multipart(_encode(ds)) + b"an epilogue"

    def trickle() -> Iterator[bytes]:
        for start in range(0, len(body), 997):
            yield body[start : start + 997]

    content_type = f"Multipart/Related; boundary={BOUNDARY}; type=application/dicom"
    with stack.client("pacs") as client:
        answer = client.post(
            "/dicom-web/studies", content=trickle(), headers={"Content-Type": content_type}
        )
    assert answer.status_code == 200, answer.text
    [stored] = _values(answer.json(), "00081199")
    assert _values(stored, "00081155") == [ds.SOPInstanceUID]


def test_stow_refuses_other_media_types_and_malformed_bodies(stack: Stack) -> None:
    data = _encode(_fresh())
    wrong_type = _stow(stack, data, **{"Content-Type": "application/dicom"})
    json_parts = _stow(
        stack, data, **{"Content-Type": f'multipart/related; type="{DICOM_JSON}"; boundary=x'}
    )
    no_delimiter = _stow(stack, data)
    truncated = _stow(stack, _multipart(data)[:-20])
    assert wrong_type.status_code == 415
    assert json_parts.status_code == 415
    assert wrong_type.json()["error"] == "unsupported_media_type"
    assert no_delimiter.status_code == 400
    assert truncated.status_code == 400
    assert "closing delimiter" in truncated.json()["detail"]


def test_stow_when_the_spool_is_full_is_503_with_retry_after(
    degraded_api: str, stack: Stack
) -> None:
    headers = {"Authorization": f"Bearer {stack.token_for('pacs')}", "Content-Type": MULTIPART}
    body = _multipart(_encode(_fresh()))
    answer = httpx.post(f"{degraded_api}/dicom-web/studies", content=body, headers=headers)
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    [failed] = _values(answer.json(), "00081198")
    assert _values(failed, "00081197") == [OUT_OF_RESOURCES]
    assert "free" in _values(failed, "00000902")[0]


def test_stow_when_the_gateway_is_down_is_503_and_audited(stack: Stack, tmp_path: Path) -> None:
    ds = _fresh()
    headers = {"Authorization": f"Bearer {stack.token_for('pacs')}", "Content-Type": MULTIPART}
    with _api(stack, tmp_path / "api.log", gateway_metrics_port=str(free_port())) as url:
        answer = httpx.post(
            f"{url}/dicom-web/studies/{ds.StudyInstanceUID}",
            content=_multipart(_encode(ds)),
            headers=headers,
            timeout=60,
        )
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    assert answer.json()["error"] == "gateway_unavailable"
    assert "gateway" in answer.json()["detail"]
    [record] = _audit(stack, "110104", ds.StudyInstanceUID)
    assert record["detail"]["status"] == 503
    assert record["detail"]["stored"] == 0


# -- roles and audit ---------------------------------------------------------------------------


def test_roles_are_enforced(stack: Stack, ct_small: Dataset) -> None:
    body = _multipart(_encode(_fresh()))
    with stack.client("radiologist") as radiologist:
        stow = radiologist.post(
            "/dicom-web/studies", content=body, headers={"Content-Type": MULTIPART}
        )
    with stack.client("pacs") as pacs:
        qido = pacs.get("/dicom-web/studies")
        wado = pacs.get(f"/dicom-web/studies/{ct_small.StudyInstanceUID}/metadata")
    with stack.client() as anonymous:
        unauthenticated = [
            anonymous.get("/dicom-web/studies"),
            anonymous.get(f"/dicom-web/studies/{ct_small.StudyInstanceUID}"),
            anonymous.post("/dicom-web/studies", content=body, headers={"Content-Type": MULTIPART}),
        ]
    assert stow.status_code == 403
    assert qido.status_code == 403
    assert wado.status_code == 403
    assert [answer.status_code for answer in unauthenticated] == [401, 401, 401]


def test_queries_retrievals_and_stores_are_audited(stack: Stack, ct_small: Dataset) -> None:
    study = ct_small.StudyInstanceUID
    reader = _dicomweb(stack, "radiologist")
    reader.search_for_series(study)
    reader.search_for_studies(search_filters={"StudyInstanceUID": study})
    reader.retrieve_study_metadata(study)
    stored = _fresh()
    _dicomweb(stack, "pacs").store_instances([stored])

    queries = _audit(stack, "110112", study)
    assert any(r["user_name"] == "test-radiologist" and r["outcome"] == 0 for r in queries)
    # each query names the studies it answered with and their patients, by keyed hash
    db = stack.database()
    try:
        key = AuditTrail.from_secrets(db, load_secrets(stack.settings))
        expected = [
            {
                "study_instance_uid": study,
                "patient_id_hash": key.patient_id_hash(str(ct_small.PatientID)),
            }
        ]
    finally:
        db.dispose()
    searched = {r["detail"]["path"].rsplit("/", 1)[-1]: r for r in queries[:2]}
    assert searched["studies"]["detail"]["returned"] == expected  # a search across studies
    assert searched["series"]["detail"]["returned"] == expected  # within the study
    accesses = _audit(stack, "110103", study)
    access = next(r for r in accesses if r["detail"]["path"].endswith("/metadata"))
    assert access["action"] == "R"
    assert access["resource_type"] == "study"
    assert access["patient_id_hash"]  # the patient ID, keyed-hashed
    [transfer] = _audit(stack, "110104", stored.StudyInstanceUID)
    assert transfer["action"] == "C"
    assert transfer["user_name"] == "test-pacs"
    assert transfer["detail"]["stored"] == 1
    assert transfer["patient_id_hash"]
    everything = json.dumps([*queries, *accesses, transfer])
    assert str(ct_small.PatientName) not in everything
    assert str(ct_small.PatientID) not in everything
