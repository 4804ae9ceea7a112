"""Critical-finding webhooks against a real local HTTP receiver that checks every signature.

Retry timing is never measured: tests read the scheduled retry time from the outbox row, and
make an event due again by moving its ``available_at`` into the past ("fast-forward").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from core.audit import AuditTrail
from core.config import Settings, load_settings
from core.db import Database, upgrade, write_transaction
from core.db.models import (
    Hospital,
    InferenceResult,
    InferenceStatus,
    OutboxEvent,
    Study,
    StudyState,
    utcnow,
)
from core.secrets import load_secrets
from core.security import Actor
from serving.notify import (
    TOPIC_CRITICAL,
    WebhookNotifier,
    enqueue_critical_finding,
    run_notifier,
    sign,
    signing_key,
    verify_signature,
)
from tests.helpers import free_port, wait_until

KEY = b"k" * 48
PATIENT_NAME, PATIENT_ID, ACCESSION = "DOE^JANE", "PID-0042-SECRET", "ACC778899"


@dataclass
class Delivery:
    """One request the receiver got."""

    idempotency_key: str
    attempt: int
    body: dict[str, Any]
    raw: bytes
    status: int


@dataclass
class Receiver:
    """A webhook endpoint: verifies signatures itself (not with radcloud's code), can fail."""

    key: bytes
    port: int = field(default_factory=free_port)
    fail_first: int = 0
    always_fail: bool = False
    delay_s: float = 0.0
    requests: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/radcloud?token=receiver-secret"

    @property
    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.requests if d.status == 200]

    def _answer(self, headers: Any, raw: bytes) -> int:
        timestamp = headers.get("X-Radcloud-Timestamp", "")
        expected = hmac.new(self.key, f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        if not fresh or headers.get("X-Radcloud-Signature") != f"sha256={expected}":
            with self._lock:
                self.bad_signatures += 1
            return 401
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            failing = self.always_fail or len(self.requests) < self.fail_first
            status = 500 if failing else 200
            self.requests.append(
                Delivery(
                    headers["Idempotency-Key"],
                    int(headers["X-Radcloud-Attempt"]),
                    json.loads(raw),
                    raw,
                    status,
                )
            )
        return status

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver._answer(self.headers, raw)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok" if status == 200 else b"no")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the notifier timed out and hung up: that is the test

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def audit(db: Database) -> AuditTrail:
    return AuditTrail(db, "audit-key-" + "a" * 40, "chain-key-" + "c" * 40)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver(KEY).start()
    yield running
    running.stop()


def _settings(tmp_path: Path, url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "notify_backoff_base_s": 60.0,
        "notify_backoff_max_s": 3600.0,
        "notify_timeout_s": 2.0,
        "notify_max_attempts": 5,
    }
    return load_settings(home=tmp_path, notify_webhook_url=url, **(values | overrides))


def _critical_result(db: Database, settings: Settings) -> tuple[str, int | None]:
    """Store a study with a critical result and enqueue its notification, as triage does."""
    uid = f"2.25.{uuid.uuid4().int}"
    with write_transaction(db, 1) as session:
        hospital = session.scalars(select(Hospital).where(Hospital.name == "General")).first()
        hospital = hospital or Hospital(name="General")
        study = Study(
            study_instance_uid=uid,
            hospital=hospital,
            patient_id=PATIENT_ID,
            patient_name=PATIENT_NAME,
            accession_number=ACCESSION,
            modalities="CT",
            state=StudyState.READY,
        )
        session.add(study)
        session.flush()
        result = InferenceResult(
            study_id=study.id,
            model_name="head-ct-haemorrhage",
            model_version="3",
            status=InferenceStatus.SUCCEEDED,
            score=0.93,
            critical=True,
            findings={"threshold": 0.61, "lesion_volume_ml": 12.5, "mask": [[1, 2], [3, 4]]},
        )
        session.add(result)
        event = enqueue_critical_finding(session, study=study, result=result, settings=settings)
        return uid, event.id if event is not None else None


def _event(db: Database, event_id: int) -> OutboxEvent:
    with db.session() as session:
        event = session.get(OutboxEvent, event_id)
        assert event_id is not None
        return event


def _fast_forward(db: Database) -> None:
    """Make every waiting notification due now (instead of waiting out its backoff)."""
    past = utcnow() - dt.timedelta(seconds=1)
    with write_transaction(db, 1) as session:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.topic == TOPIC_CRITICAL, OutboxEvent.processed_at.is_(None))
            .values(available_at=past)
        )


def _audit_records(audit: AuditTrail, uid: str) -> list[dict[str, Any]]:
    records = audit.search(actor=Actor.cli(), resource_id=uid)
    return [r for r in records if r["event_code"] == "110106"]


def test_critical_finding_is_posted_signed_and_recorded(
    tmp_path: Path, db: Database, audit: AuditTrail, receiver: Receiver
) -> None:
    settings = _settings(tmp_path, receiver.url)
    uid, event_id = _critical_result(db, settings)
    assert event_id is not None

    with WebhookNotifier(db, settings, KEY, audit) as notifier:
        assert notifier.deliver_due() == 1
        assert notifier.deliver_due() == 0  # delivered once, not again

    assert receiver.bad_signatures == 0
    [delivery] = receiver.requests
    assert delivery.idempotency_key == str(event_id)
    assert delivery.body["event_id"] == event_id
    assert delivery.body["study_instance_uid"] == uid
    assert delivery.body["hospital"] == "General"
    assert delivery.body["model"] == {"name": "head-ct-haemorrhage", "version": "3"}
    assert delivery.body["score"] == 0.93
    assert delivery.body["threshold"] == 0.61
    assert delivery.body["findings"] == {"threshold": 0.61, "lesion_volume_ml": 12.5}
    for identifier in (PATIENT_NAME, PATIENT_ID, ACCESSION):
        assert identifier.encode() not in delivery.raw
    stored = _event(db, event_id)
    assert stored.processed_at is not None
    assert stored.attempts == 1
    [record] = _audit_records(audit, uid)
    assert record["outcome"] == 0
    assert record["detail"]["event_id"] == event_id
    assert "receiver-secret" not in json.dumps(record)  # the URL's query is not audited


def test_no_webhook_configured_queues_nothing(tmp_path: Path, db: Database) -> None:
    _uid, event_id = _critical_result(db, _settings(tmp_path, None))
    assert event_id is None
    with db.session() as session:
        assert session.scalars(select(OutboxEvent)).all() == []


def test_one_notification_per_result(tmp_path: Path, db: Database) -> None:
    settings = _settings(tmp_path, "http://127.0.0.1:9/hook")
    _uid, first_id = _critical_result(db, settings)
    assert first_id is not None
    with write_transaction(db, 1) as session:
        result = session.scalars(select(InferenceResult)).one()
        study = session.get(Study, result.study_id)
        assert study is not None
        again = enqueue_critical_finding(session, study=study, result=result, settings=settings)
        assert again is not None and again.id == first_id
    with db.session() as session:
        assert len(session.scalars(select(OutboxEvent)).all()) == 1


def test_failures_are_retried_with_growing_capped_backoff(
    tmp_path: Path, db: Database, audit: AuditTrail, receiver: Receiver
) -> None:
    receiver.fail_first = 3
    settings = _settings(
        tmp_path, receiver.url, notify_backoff_base_s=60.0, notify_backoff_max_s=100.0
    )
    uid, event_id = _critical_result(db, settings)
    assert event_id is not None
    notifier = WebhookNotifier(db, settings, KEY, audit)

    # attempt n waits between half and all of min(100, 60 * 2**(n-1)) seconds
    for attempt, ceiling in ((1, 60.0), (2, 100.0), (3, 100.0)):
        before = utcnow()
        assert notifier.deliver_due() == 0
        after = utcnow()
        stored = _event(db, event_id)
        assert stored.processed_at is None
        assert stored.attempts == attempt
        assert stored.last_error is not None and stored.last_error.startswith("HTTP 500")
        assert stored.available_at is not None
        assert before + dt.timedelta(seconds=ceiling / 2) <= stored.available_at
        assert stored.available_at <= after + dt.timedelta(seconds=ceiling)
        assert notifier.deliver_due() == 0  # not due yet: nothing is sent
        assert len(receiver.requests) == attempt
        _fast_forward(db)

    assert notifier.deliver_due() == 1
    notifier.close()
    assert [d.attempt for d in receiver.requests] == [1, 2, 3, 4]
    assert {d.idempotency_key for d in receiver.requests} == {str(event_id)}
    assert len(receiver.accepted) == 1
    assert _event(db, event_id).processed_at is not None
    assert [r["outcome"] for r in _audit_records(audit, uid)] == [0]


def test_gives_up_after_max_attempts_with_audit_and_alarm(
    tmp_path: Path,
    db: Database,
    audit: AuditTrail,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.always_fail = True
    settings = _settings(tmp_path, receiver.url, notify_max_attempts=3)
    uid, event_id = _critical_result(db, settings)
    assert event_id is not None

    with WebhookNotifier(db, settings, KEY, audit) as notifier:
        for _ in range(5):
            notifier.deliver_due()
            _fast_forward(db)

    assert len(receiver.requests) == 3
    stored = _event(db, event_id)
    assert stored.processed_at is not None
    assert stored.attempts == 3
    assert stored.last_error is not None and stored.last_error.startswith("gave up")
    [record] = _audit_records(audit, uid)
    assert record["outcome"] == 8
    assert record["detail"]["reason"] == "gave up"
    alarms = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(alarms) == 1
    assert "ALARM" in alarms[0].getMessage() and uid in alarms[0].getMessage()


def test_receiver_down_then_up(tmp_path: Path, db: Database, audit: AuditTrail) -> None:
    receiver = Receiver(KEY)  # not started: connections are refused
    settings = _settings(tmp_path, receiver.url)
    _uid, event_id = _critical_result(db, settings)
    assert event_id is not None
    with WebhookNotifier(db, settings, KEY, audit) as notifier:
        assert notifier.deliver_due() == 0
        stored = _event(db, event_id)
        assert stored.attempts == 1 and stored.processed_at is None
        assert stored.last_error is not None and "ConnectError" in stored.last_error

        receiver.start()
        try:
            _fast_forward(db)
            assert notifier.deliver_due() == 1
        finally:
            receiver.stop()
    assert len(receiver.accepted) == 1
    assert receiver.accepted[0].attempt == 2


def test_a_receiver_that_does_not_answer_in_time_is_a_failure(
    tmp_path: Path, db: Database, audit: AuditTrail, receiver: Receiver
) -> None:
    receiver.delay_s = 3.0
    settings = _settings(tmp_path, receiver.url, notify_timeout_s=0.3)
    _uid, event_id = _critical_result(db, settings)
    assert event_id is not None
    with WebhookNotifier(db, settings, KEY, audit) as notifier:
        assert notifier.deliver_due() == 0
    stored = _event(db, event_id)
    assert stored.processed_at is None and stored.attempts == 1
    assert stored.last_error is not None and "Timeout" in stored.last_error


def test_two_notifiers_never_send_one_event_twice(
    tmp_path: Path, db: Database, receiver: Receiver
) -> None:
    receiver.delay_s = 0.05
    settings = _settings(tmp_path, receiver.url)
    ids = []
    for _ in range(8):
        _uid, event_id = _critical_result(db, settings)
        assert event_id is not None
        ids.append(str(event_id))

    url = db.url
    notifiers = []
    for _ in range(2):  # each with its own engine, as two processes would have
        own = Database(url)
        notifiers.append(WebhookNotifier(own, settings, KEY, AuditTrail(own, "a" * 40, "c" * 40)))
    start = threading.Barrier(2)
    delivered: list[int] = []

    def work(notifier: WebhookNotifier) -> None:
        start.wait()
        delivered.append(notifier.deliver_due())

    threads = [threading.Thread(target=work, args=(n,)) for n in notifiers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for notifier in notifiers:
        notifier.close()

    assert sum(delivered) == 8
    keys = [d.idempotency_key for d in receiver.requests]
    assert sorted(keys) == sorted(ids)  # every event once, none twice


def test_run_notifier_delivers_until_stopped(
    tmp_path: Path, db: Database, audit: AuditTrail, receiver: Receiver
) -> None:
    settings = _settings(tmp_path, receiver.url)
    stop = threading.Event()
    with WebhookNotifier(db, settings, KEY, audit) as notifier:
        loop = threading.Thread(target=run_notifier, args=(notifier, stop, 0.05))
        loop.start()
        try:
            _critical_result(db, settings)
            assert wait_until(lambda: len(receiver.accepted) == 1, timeout_s=30)
        finally:
            stop.set()
            loop.join(timeout=30)
        assert not loop.is_alive()


def test_verify_signature_as_a_receiver_would() -> None:
    body = b'{"event_id":1}'
    now = 1_800_000_000
    timestamp = str(now)
    signature = sign(KEY, timestamp, body)
    assert verify_signature(KEY, timestamp, body, signature, now=now + 10)
    assert not verify_signature(KEY, timestamp, body + b" ", signature, now=now)
    assert not verify_signature(b"x" * 48, timestamp, body, signature, now=now)
    assert not verify_signature(KEY, timestamp, body, signature, now=now + 301)  # replay
    assert not verify_signature(KEY, "soon", body, signature, now=now)


def test_signing_key_is_generated_unless_configured(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    secrets = load_secrets(settings)
    assert len(secrets.notify_signing_key) >= 32
    assert signing_key(settings, secrets) == secrets.notify_signing_key.encode()
    assert load_secrets(settings).notify_signing_key == secrets.notify_signing_key  # stored
    mine = "r" * 40
    configured = load_settings(home=tmp_path, notify_signing_key=mine)
    assert signing_key(configured, secrets) == mine.encode()
