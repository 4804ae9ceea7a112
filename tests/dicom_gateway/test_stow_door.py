"""The gateway's own STOW-RS door (``dicom_gateway.stow_door``), ``POST /dicom-web/studies`` on
``gateway_stow_port``, against Orthanc and the gateway process started as ``radcloud up`` starts
them (no API, no Ray), with each DICOM edge: the pynetdicom edge stores through the spool, the
Orthanc edge with Orthanc's own STOW-RS.

Checked as a PACS and an auditor would notice: a study posted with a ``pacs`` key of one
hospital is in Orthanc, owned by that hospital, and raises its ``study.ready``; credentials,
roles and hospitals are refused as on the API (401 / 403 / 404, audited); another hospital's
study is 0xC409 and quarantined; malformed bodies, media types and limits answer 400 / 415 /
413; every request writes one 110104 record with its counts. TLS is in ``test_listeners.py``
(the door of a gateway beyond loopback), the bound on connections below without a stack.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.audit import AuditTrail
from core.config import GatewayEdge
from core.db.models import Role, Study
from core.secrets import load_secrets
from core.security import Accounts, Actor, TokenService
from dicom_gateway._door_http import StowDoorServer
from dicom_gateway.quarantine import Quarantine
from tests.audit_records import audit_records
from tests.conftest import EDGES, Stack, edge_id, start_dicom_doors
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.helpers import wait_until
from tests.serving.test_stow_edge import (
    BOUNDARY,
    MULTIPART,
    STUDY_MISMATCH,
    _in_orthanc,
    _multipart,
    _uids,
    _values,
)

pytestmark = pytest.mark.integration

MAX_PARTS = 4


class Door:
    """A doors-only radcloud with pacs keys of two hospitals."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        tag = uuid.uuid4().hex[:8]
        self.hospital, self.other = f"Door A {tag}", f"Door B {tag}"
        db = stack.database()
        try:
            accounts = Accounts(db, AuditTrail.from_secrets(db, load_secrets(stack.settings)))
            create = accounts.create_api_key
            self.key = create(
                f"door-a-{tag}", Role.PACS, hospital=self.hospital, actor=Actor.cli()
            ).key
            self.other_key = create(
                f"door-b-{tag}", Role.PACS, hospital=self.other, actor=Actor.cli()
            ).key
            self.nowhere_key = create(f"door-none-{tag}", Role.PACS, actor=Actor.cli()).key
            self.reader_key = create(
                f"door-reader-{tag}", Role.RADIOLOGIST, hospital=self.hospital, actor=Actor.cli()
            ).key
        finally:
            db.dispose()

    @property
    def url(self) -> str:
        url = self.stack.settings.gateway_stow_url
        assert url is not None
        return url

    def post(
        self,
        *parts: bytes,
        key: str | None = None,
        study: str | None = None,
        content_type: str = MULTIPART,
        body: bytes | None = None,
        bearer: bool = True,
    ) -> httpx.Response:
        headers = {"Content-Type": content_type}
        credential = self.key if key is None else key
        if credential:
            if bearer:
                headers["Authorization"] = f"Bearer {credential}"
            else:
                headers["X-API-Key"] = credential
        path = f"{self.url}/studies/{study}" if study else f"{self.url}/studies"
        content = _multipart(*parts) if body is None else body
        return httpx.post(path, content=content, headers=headers, timeout=60)

    def last_seq(self) -> int:
        records = audit_records(self.stack.settings.home)
        return int(records[-1]["seq"]) if records else 0

    def records(self, after: int, event_code: str) -> list[dict[str, Any]]:
        return [
            r
            for r in audit_records(self.stack.settings.home, after)
            if r["event_code"] == event_code
        ]


def _sop(data: bytes) -> str:
    return _uids(data)[2]


def _stored(stack: Stack, data: bytes) -> bool:
    return _in_orthanc(stack, data) is not None


@pytest.fixture(scope="module", params=EDGES, ids=edge_id)
def door(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Door]:
    edge: GatewayEdge = request.param
    stack = start_dicom_doors(
        tmp_path_factory.mktemp("radcloud-door"),
        gateway_edge=edge.value,
        api_max_stow_parts=MAX_PARTS,
        api_max_stow_mib=1,
    )
    try:
        yield Door(stack)
    finally:
        stack.down()


def test_a_study_through_the_door_is_stored_owned_ready_and_audited_once(door: Door) -> None:
    study, series = generate_uid(), generate_uid()
    instances = [synthetic_ct(study, series, instance=n) for n in range(1, 4)]
    after = door.last_seq()
    answer = door.post(*instances)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    stored = _values(answer.json(), "00081199")
    assert [_values(item, "00081155")[0] for item in stored] == [_sop(d) for d in instances]
    api = f"{door.stack.settings.api_url}/dicom-web/studies/{study}"
    assert _values(answer.json(), "00081190") == [api]  # WADO-RS lives on the API
    if door.stack.edge is GatewayEdge.ORTHANC:  # answered stored: Orthanc has it already
        assert all(_stored(door.stack, data) for data in instances)
    else:  # fsync-ed to the spool; the forwarder moves it on
        assert wait_until(lambda: all(_stored(door.stack, d) for d in instances), 60)
    assert wait_until(lambda: bool(door.stack.ready_events(study)), timeout_s=90)
    [event] = door.stack.ready_events(study)
    assert event.payload["hospital"] == door.hospital
    db = door.stack.database()
    try:
        with db.session() as session:
            owner = session.scalar(select(Study).where(Study.study_instance_uid == study))
            assert owner is not None and owner.hospital is not None
            assert owner.hospital.name == door.hospital
    finally:
        db.dispose()
    [record] = door.records(after, "110104")
    assert record["user_name"].startswith("door-a-")
    assert record["source_address"] == "127.0.0.1"
    assert record["resource_id"] == study
    detail = record["detail"]
    assert detail["source"] == "stow-gateway"
    assert (detail["hospital"], detail["status"], detail["stored"], detail["failed"]) == (
        door.hospital,
        200,
        3,
        0,
    )
    assert detail["studies"] == [study]


def test_status_shows_the_doors_url_and_port(door: Door) -> None:
    assert door.stack.supervisor is not None
    [gateway] = [c for c in door.stack.supervisor.status() if c.name == "gateway"]
    assert gateway.healthy and gateway.details is not None
    assert gateway.details["stow-rs"] == f"{door.url}/studies"
    port = door.stack.settings.gateway_stow_port
    assert (port, "RADCLOUD_GATEWAY_STOW_PORT") in gateway.ports


def test_no_or_a_wrong_credential_is_401_and_audited(door: Door) -> None:
    data = synthetic_ct(generate_uid())
    after = door.last_seq()
    missing = door.post(data, key="")
    assert missing.status_code == 401
    assert missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = door.post(data, key="rck_0123456789abcdef_not-the-secret")
    assert wrong.status_code == 401
    assert wrong.json()["detail"] == "API key is not valid"
    forged = door.post(data, key="not-a-jwt", bearer=True)
    assert forged.status_code == 401
    records = door.records(after, "110114")
    assert len(records) == 3
    assert {r["resource_id"] for r in records} == {"POST /dicom-web/studies"}
    assert all(r["outcome"] == 4 for r in records)  # minor failure
    assert not door.records(after, "110104")
    assert not _stored(door.stack, data)


def test_a_users_token_stores_for_the_users_hospitals_as_they_are_now(door: Door) -> None:
    name = f"door-user-{uuid.uuid4().hex[:8]}"
    db = door.stack.database()
    secrets = load_secrets(door.stack.settings)
    try:
        accounts = Accounts(db, AuditTrail.from_secrets(db, secrets))
        accounts.add_user(name, Role.PACS, hospitals=[door.hospital], actor=Actor.cli())
        token = TokenService(door.stack.settings, secrets.jwt_signing_key).issue(name, [Role.PACS])
        data = synthetic_ct(generate_uid())
        assert door.post(data, key=token).status_code == 200  # Bearer JWT
        accounts.assign_hospital(name, door.other, actor=Actor.cli())
        again = door.post(synthetic_ct(generate_uid()), key=token)  # the same token
        assert again.status_code == 403
        assert "stores for no single hospital" in again.json()["detail"]
        accounts.set_disabled(name, True, actor=Actor.cli())
        assert door.post(synthetic_ct(generate_uid()), key=token).status_code == 401
    finally:
        db.dispose()


def test_a_role_other_than_pacs_or_a_key_of_no_single_hospital_is_403(door: Door) -> None:
    data = synthetic_ct(generate_uid())
    after = door.last_seq()
    reader = door.post(data, key=door.reader_key, bearer=False)  # X-API-Key
    assert reader.status_code == 403
    assert reader.json()["error"] == "forbidden"
    [alert] = door.records(after, "110113")
    assert alert["detail"]["reason"] == "role not allowed"
    nowhere = door.post(data, key=door.nowhere_key)
    assert nowhere.status_code == 403
    assert "stores for no single hospital" in nowhere.json()["detail"]
    [transfer] = door.records(after, "110104")
    assert transfer["detail"]["status"] == 403
    assert not _stored(door.stack, data)


def test_another_hospitals_study_is_404_by_url_and_0xc409_by_content(door: Door) -> None:
    study = generate_uid()
    assert door.post(synthetic_ct(study, instance=1)).status_code == 200
    intruder = synthetic_ct(study, instance=2)
    by_url = door.post(intruder, key=door.other_key, study=study)
    assert by_url.status_code == 404
    assert by_url.json() == {"error": "not_found", "detail": f'study "{study}" does not exist'}
    quarantine = Quarantine(door.stack.settings.paths.quarantine_dir)
    before = {entry.entry_id for entry in quarantine.list()}
    by_content = door.post(intruder, key=door.other_key)
    assert by_content.status_code == 409, by_content.text
    [failed] = _values(by_content.json(), "00081198")
    assert _values(failed, "00081197") == [STUDY_MISMATCH]
    assert _values(failed, "00081155") == [_sop(intruder)]
    held = [e for e in quarantine.list() if e.entry_id not in before]
    assert len(held) == 1
    assert not _stored(door.stack, intruder)


def test_malformed_bodies_and_media_types(door: Door) -> None:
    data = synthetic_ct(generate_uid())
    broken = door.post(body=b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom")
    assert broken.status_code == 400
    assert broken.json()["error"] == "bad_request"
    assert "malformed multipart/related body" in broken.json()["detail"]
    wrong_type = door.post(data, content_type="application/dicom")
    assert wrong_type.status_code == 415
    assert wrong_type.json()["error"] == "unsupported_media_type"
    not_dicom = door.post(
        data, content_type=f"multipart/related; type=image/jpeg; boundary={BOUNDARY}"
    )
    assert not_dicom.status_code == 415
    assert not _stored(door.stack, data)


def test_too_many_parts_is_413_with_the_first_ones_stored(door: Door) -> None:
    study, series = generate_uid(), generate_uid()
    instances = [synthetic_ct(study, series, instance=n) for n in range(1, MAX_PARTS + 3)]
    after = door.last_seq()
    answer = door.post(*instances)
    assert answer.status_code == 413
    assert answer.json()["error"] == "too_large"
    assert f"the first {MAX_PARTS} were handled ({MAX_PARTS} stored)" in answer.json()["detail"]
    first = instances[:MAX_PARTS]
    assert wait_until(lambda: all(_stored(door.stack, d) for d in first), 60)
    assert not any(_stored(door.stack, d) for d in instances[MAX_PARTS:])
    [record] = door.records(after, "110104")
    assert (record["detail"]["status"], record["detail"]["stored"]) == (413, MAX_PARTS)


def test_a_body_over_the_limit_is_413_before_anything_is_read(door: Door) -> None:
    data = synthetic_ct(generate_uid())
    declared = door.post(body=_multipart(data) + b"\0" * (1024 * 1024))
    assert declared.status_code == 413
    assert "RADCLOUD_API_MAX_STOW_MIB" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield _multipart(data)[:-10]
        for _ in range(20):
            yield b"\0" * 65536

    headers = {"Content-Type": MULTIPART, "Authorization": f"Bearer {door.key}"}
    chunked = httpx.post(f"{door.url}/studies", content=chunks(), headers=headers, timeout=60)
    assert chunked.status_code == 413
    assert not _stored(door.stack, data)


def test_a_client_gone_mid_body_is_audited_and_nothing_half_written(door: Door) -> None:
    data = synthetic_ct(generate_uid())
    after = door.last_seq()
    body = _multipart(data)
    settings = door.stack.settings
    with socket.create_connection(("127.0.0.1", settings.gateway_stow_port), timeout=30) as sock:
        head = (
            f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
            f"Authorization: Bearer {door.key}\r\nContent-Length: {len(body) + 1000}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
    assert wait_until(lambda: bool(door.records(after, "110104")), timeout_s=30)
    [record] = door.records(after, "110104")
    assert (record["detail"]["status"], record["detail"]["stored"]) == (None, 0)
    assert not _stored(door.stack, data)


class _SlowDoor:
    """A stand-in door that holds each request until released."""

    max_body_bytes = 1024

    def __init__(self) -> None:
        self.entered = 0
        self.released = threading.Event()

    def handle(self, request: Any) -> Any:
        from dicom_gateway.stow_door import DoorAnswer

        self.entered += 1
        self.released.wait(timeout=30)
        return DoorAnswer(200, {"ok": True})


def test_beyond_the_connection_bound_the_door_answers_503_with_retry_after() -> None:
    door = _SlowDoor()
    server = StowDoorServer(("127.0.0.1", 0), door, timeout_s=10, max_connections=1)  # type: ignore[arg-type]
    server.start()
    try:
        request = b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        busy = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        busy.sendall(request)
        assert wait_until(lambda: door.entered == 1, timeout_s=10)
        answer = httpx.post(f"http://127.0.0.1:{server.port}/dicom-web/studies", timeout=10)
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "30"
        assert answer.json()["error"] == "unavailable"
        door.released.set()
        assert busy.recv(1024).startswith(b"HTTP/1.1 200")
        busy.close()
        assert door.entered == 1
    finally:
        server.stop()
