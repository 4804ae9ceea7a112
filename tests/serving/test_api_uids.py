"""UIDs on the real API started by ``radcloud up`` (issue 14, item 5): every route that names a
study, series or instance in its path refuses a value that is not a safe UID with 400 before the
route runs, so nothing is looked up by it, in the database or in Orthanc; QIDO refuses UID
matching keys that are not UID lists; STOW-RS quarantines an instance whose UIDs are paths.
"""

from __future__ import annotations

import io
import uuid
import warnings
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicom_gateway.quarantine import Quarantine
from tests.conftest import Stack

pytestmark = pytest.mark.integration

BOUNDARY = "radcloud-uid-boundary-93af"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
DOES_NOT_MATCH_SOP_CLASS = 0xA900
GOOD = "1.2.826.0.1.3680043.8.498.1"

# values that must never reach a lookup; "%2E%2E" arrives as ".." once the path is decoded
UNSAFE = ["1.2.abc", "1..2", "%2E%2E", "1.2.3*", "1." + "2" * 64, "1.2.3%0A"]

# (role, method, path with {uid} where the UID goes)
ROUTES = [
    ("radiologist", "GET", "/dicom-web/studies/{uid}"),
    ("radiologist", "GET", "/dicom-web/studies/{uid}/metadata"),
    ("radiologist", "GET", "/dicom-web/studies/{uid}/series"),
    ("radiologist", "GET", f"/dicom-web/studies/{GOOD}/series/{{uid}}/metadata"),
    ("radiologist", "GET", f"/dicom-web/studies/{GOOD}/series/{GOOD}/instances/{{uid}}"),
    ("radiologist", "GET", f"/dicom-web/studies/{GOOD}/series/{GOOD}/instances/{{uid}}/frames/1"),
    ("pacs", "POST", "/dicom-web/studies/{uid}"),
    ("radiologist", "GET", "/api/studies/{uid}/results"),
    ("ml_engineer", "POST", "/api/studies/{uid}/reprocess"),
    ("radiologist", "GET", "/api/studies/{uid}/viewer"),
    ("radiologist", "GET", "/api/studies/{uid}/findings/1/mask"),
    ("radiologist", "POST", "/api/studies/{uid}/sign"),
    ("radiologist", "POST", "/api/studies/{uid}/amend"),
    ("radiologist", "POST", "/api/worklist/{uid}/claim"),
    ("radiologist", "POST", "/api/worklist/{uid}/release"),
    ("radiologist", "POST", "/api/worklist/{uid}/report"),
]


def _audit(stack: Stack, **params: str) -> list[dict[str, Any]]:
    with stack.client("admin") as admin:
        records: list[dict[str, Any]] = admin.get("/api/audit", params=params).json()
    return records


@pytest.mark.parametrize("uid", UNSAFE)
@pytest.mark.parametrize(("role", "method", "path"), ROUTES)
def test_route_refuses_an_unsafe_uid_in_its_path_with_400(
    stack: Stack, role: str, method: str, path: str, uid: str
) -> None:
    with stack.client(role) as client:
        answer = client.request(method, path.format(uid=uid), json={})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad_request"


def test_refused_path_never_reaches_the_route(stack: Stack) -> None:
    """A WADO request is audited by its route (110103), even when Orthanc answers 404; one with
    an unsafe UID leaves no record: the route, and so Orthanc, never saw it."""
    unknown, unsafe = f"{GOOD}.{uuid.uuid4().int % 10**9 + 1}", f"{GOOD}.abc"
    with stack.client("radiologist") as client:
        assert client.get(f"/dicom-web/studies/{unsafe}/metadata").status_code == 400
        assert client.get(f"/dicom-web/studies/{unknown}/metadata").status_code == 404
    assert len(_audit(stack, event_code="110103", resource_id=unknown)) == 1
    assert _audit(stack, event_code="110103", resource_id=unsafe) == []


@pytest.mark.parametrize(
    "query",
    [
        {"StudyInstanceUID": "../../x"},
        {"StudyInstanceUID": "1.2.3*"},
        {"0020000D": "1.2.3,1.2.abc"},
        {"SeriesInstanceUID": "1." + "2" * 64},
        {"SOPInstanceUID": "1..2"},
    ],
)
def test_qido_refuses_uid_keys_that_are_not_uid_lists(stack: Stack, query: dict[str, str]) -> None:
    with stack.client("radiologist") as client:
        answer = client.get("/dicom-web/studies", params=query)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad_request"
    assert "is not a valid UID" in answer.json()["detail"]


def test_qido_accepts_a_uid_list(stack: Stack) -> None:
    with stack.client("radiologist") as client:
        answer = client.get("/dicom-web/studies", params={"StudyInstanceUID": f"{GOOD},{GOOD}.2"})
    assert answer.status_code in (200, 204), answer.text


def test_stow_quarantines_an_instance_whose_uids_are_paths(stack: Stack) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns of the invalid UID
        ds.StudyInstanceUID = "../../x"
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds)
    delimiter = f"--{BOUNDARY}".encode()
    body = (
        delimiter
        + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + buffer.getvalue()
        + b"\r\n"
        + delimiter
        + b"--\r\n"
    )
    with stack.client("pacs") as client:
        headers = {"Content-Type": MULTIPART}
        answer = client.post("/dicom-web/studies", content=body, headers=headers)
    assert answer.status_code == 409, answer.text
    [failed] = answer.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [DOES_NOT_MATCH_SOP_CLASS]
    assert "is not a valid UID" in failed["00000902"]["Value"][0]
    [entry] = [
        e
        for e in Quarantine(stack.settings.paths.quarantine_dir).list()
        if e.sop_instance_uid == ds.SOPInstanceUID
    ]
    assert entry.source == "stow"
    assert "(0020,000D) StudyInstanceUID '../../x'" in entry.reason
    home = stack.settings.home
    assert not (home.parent / "x").exists()
    assert not (home / "x").exists()
