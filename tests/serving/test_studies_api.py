"""Study results and reprocess requests on the real API started by ``radcloud up``.

The reprocess test sends a real study through STOW-RS, waits for the gateway's ``study.ready``
event, and checks that the reprocess event carries the same payload plus ``force``.
"""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Study, StudyState
from tests.conftest import Stack
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

BOUNDARY = "radcloud-studies-test"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def _multipart(*parts: bytes) -> bytes:
    delimiter = f"--{BOUNDARY}".encode()
    body = b"".join(
        delimiter + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        for part in parts
    )
    return body + delimiter + b"--\r\n"


def _study_with_results(stack: Stack) -> str:
    uid = generate_uid()
    now = dt.datetime.now(dt.UTC)
    db = stack.database()
    try:
        with db.session() as session:
            study = Study(
                study_instance_uid=uid,
                patient_id="P-RESULTS",
                state=StudyState.READY,
                first_received_at=now,
                last_received_at=now,
                ready_at=now,
            )
            session.add(study)
            session.flush()
            session.add_all(
                [
                    InferenceResult(
                        study_id=study.id,
                        model_name="head-ct-triage",
                        model_version="3",
                        status=InferenceStatus.SUCCEEDED,
                        score=0.87,
                        critical=True,
                        findings={"haemorrhage_volume_ml": 4.2},
                        timings={"inference_ms": 120.0},
                        created_at=now,
                    ),
                    InferenceResult(
                        study_id=study.id,
                        model_name="chest-xr-triage",
                        model_version="1",
                        status=InferenceStatus.FAILED,
                        error='modality "CT" is not supported by this model',
                        created_at=now + dt.timedelta(seconds=1),
                    ),
                ]
            )
    finally:
        db.dispose()
    return uid


def test_results_roles_and_unknown_study(stack: Stack) -> None:
    uid = _study_with_results(stack)
    with stack.client() as client:
        assert client.get(f"/api/studies/{uid}/results").status_code == 401
    for role in ("pacs", "peer_hospital"):
        with stack.client(role) as client:
            assert client.get(f"/api/studies/{uid}/results").status_code == 403
    with stack.client("radiologist") as client:
        assert client.get("/api/studies/1.2.3.4.404/results").status_code == 404
        assert client.get("/api/studies/not-a-uid/results").status_code == 400


def test_results_list_every_model_version(stack: Stack) -> None:
    uid = _study_with_results(stack)
    for role in ("radiologist", "ml_engineer", "admin"):
        with stack.client(role) as client:
            answer = client.get(f"/api/studies/{uid}/results")
        assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["study_instance_uid"] == uid
    first, second = body["results"]
    assert (first["model_name"], first["model_version"], first["status"]) == (
        "head-ct-triage",
        "3",
        "succeeded",
    )
    assert first["critical"] is True and first["score"] == pytest.approx(0.87)
    assert first["findings"] == {"haemorrhage_volume_ml": 4.2}
    assert first["timings"] == {"inference_ms": 120.0}
    assert (second["status"], second["score"]) == ("failed", None)
    assert "not supported" in second["error"]
    with stack.client("admin") as admin:
        records = admin.get("/api/audit", params={"resource_id": uid}).json()
    reads = [r for r in records if r["event_code"] == "110110" and r["action"] == "R"]
    assert {r["user_name"] for r in reads} == {"test-radiologist", "test-ml_engineer", "test-admin"}
    assert all(r["patient_id_hash"] for r in reads)


def test_reprocess_writes_a_forced_event_with_the_ready_payload(stack: Stack) -> None:
    uid = generate_uid()
    series = generate_uid()
    body = _multipart(*(synthetic_ct(uid, series, instance=n) for n in (1, 2)))
    with stack.client("pacs") as client:
        stored = client.post(
            "/dicom-web/studies", content=body, headers={"Content-Type": MULTIPART}
        )
    assert stored.status_code == 200, stored.text

    db = stack.database()
    try:

        def ready_event() -> OutboxEvent | None:
            with db.session() as session:
                return session.scalar(
                    select(OutboxEvent).where(
                        OutboxEvent.topic == "study.ready", OutboxEvent.key == uid
                    )
                )

        assert wait_until(lambda: ready_event() is not None, timeout_s=60, interval_s=0.5)
        ready = ready_event()
        assert ready is not None

        with stack.client("radiologist") as client:
            assert client.post(f"/api/studies/{uid}/reprocess").status_code == 403
        with stack.client("ml_engineer") as client:
            answer = client.post(f"/api/studies/{uid}/reprocess")
            assert client.post("/api/studies/1.2.3.4.404/reprocess").status_code == 404
        assert answer.status_code == 202, answer.text
        assert answer.json()["topic"] == "study.reprocess"

        with db.session() as session:
            event = session.get(OutboxEvent, answer.json()["event_id"])
            assert event is not None
            assert (event.topic, event.key, event.processed_at) == ("study.reprocess", uid, None)
            payload = dict(event.payload)
    finally:
        db.dispose()
    assert payload.pop("force") is True
    assert payload.pop("requested_by") == "test-ml_engineer"
    assert payload == ready.payload
    assert payload["series"][0]["instance_count"] == 2


def test_reprocess_of_a_study_still_receiving_is_a_conflict(stack: Stack) -> None:
    uid = generate_uid()
    db = stack.database()
    try:
        with db.session() as session:
            session.add(Study(study_instance_uid=uid, state=StudyState.RECEIVING))
    finally:
        db.dispose()
    with stack.client("admin") as client:
        answer = client.post(f"/api/studies/{uid}/reprocess")
    assert answer.status_code == 409
    assert "not complete" in answer.json()["detail"]
