"""Critical-finding notifications: a durable outbox event, then a signed webhook POST.

The triage pipeline calls :func:`enqueue_critical_finding` inside the write transaction that
stores a result with ``critical=True``, so the notification exists exactly when the result does
(transactional outbox). A :class:`WebhookNotifier` (called from the triage worker's loop, or run
alone by :func:`run_notifier`) delivers due ``notification.critical`` events at least once:

- **Claim.** In one short write transaction an event is claimed by moving its ``available_at``
  to now + a lease longer than an HTTP attempt can take, and counting the attempt. A second
  notifier (thread or process) no longer sees it as due, so two never send one event at the same
  time; a notifier that dies mid-send leaves the event to be retried when the lease ends. The
  lease time doubles as a fencing token: an outcome is written only if ``available_at`` is still
  the one this notifier set.
- **Send.** ``POST`` of the JSON body with ``X-Radcloud-Timestamp`` (Unix seconds),
  ``X-Radcloud-Signature: sha256=<hex>`` (HMAC-SHA256 with the signing key over
  ``"<timestamp>.<raw body>"``), ``Idempotency-Key`` (the event id: the same on every retry) and
  ``X-Radcloud-Attempt``. Redirects are not followed.
- **Outcome.** 2xx: the event is processed and an audit record (110106 Export, success) is
  written. Anything else (refused connection, timeout, 3xx/4xx/5xx) is retried after an
  exponential backoff with jitter, ``base * 2**(attempt-1)`` capped at ``notify_backoff_max_s``,
  of which a random half is added or not. After ``notify_max_attempts`` the event is processed
  with ``last_error`` "gave up ...", an audit record with outcome 8 (serious failure) and a
  CRITICAL log line: nobody was told of a critical finding.

A receiver verifies a delivery with :func:`verify_signature`: recompute the HMAC over the
timestamp, a dot and the raw body bytes, compare in constant time, refuse timestamps more than
:data:`REPLAY_WINDOW_S` seconds from its clock (replays), and drop an ``Idempotency-Key`` it has
already accepted (deliveries are at least once: a 2xx lost on the way back is sent again).

The payload carries what a receiver needs to act and no patient identity (see
:func:`critical_finding_payload`). Errors: none of this module's own; database errors propagate
(``sqlalchemy.exc.SQLAlchemyError``), HTTP failures are outcomes, not exceptions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core import __version__
from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.config import Settings
from core.db import Database, write_transaction
from core.db.models import InferenceResult, OutboxEvent, Study, utcnow
from core.secrets import Secrets

__all__ = [
    "REPLAY_WINDOW_S",
    "TOPIC_CRITICAL",
    "WebhookNotifier",
    "critical_finding_payload",
    "enqueue_critical_finding",
    "run_notifier",
    "sign",
    "signing_key",
    "verify_signature",
]

logger = logging.getLogger(__name__)

TOPIC_CRITICAL = "notification.critical"
REPLAY_WINDOW_S = 300
"""How far (seconds) a receiver should accept a delivery's timestamp from its own clock."""
GAVE_UP = "gave up"
"""Prefix of ``last_error`` of an event the notifier stopped retrying."""

_LOCK_KEY = 0x52434E54  # "RCNT": PostgreSQL advisory lock for claiming notifications
_AUDIT_USER = "radcloud-notifier"
_MAX_ERROR_CHARS = 500
_MAX_PER_ROUND = 1000
_FINDING_TEXT_MAX = 64
_jitter = random.Random()  # noqa: S311 - spreads retries, not a secret


def signing_key(settings: Settings, secrets: Secrets) -> bytes:
    """The webhook signing key: ``RADCLOUD_NOTIFY_SIGNING_KEY`` if set, else the generated one."""
    return (settings.notify_signing_key or secrets.notify_signing_key).encode()


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Radcloud-Signature`` value: ``sha256=`` and HMAC-SHA256 of ``"<ts>.<body>"``."""
    digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    key: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: float = REPLAY_WINDOW_S,
) -> bool:
    """Check a delivery as a receiver should.

    Parameters
    ----------
    key
        The shared signing key.
    timestamp, signature
        The ``X-Radcloud-Timestamp`` and ``X-Radcloud-Signature`` header values.
    body
        The raw request body, byte for byte as received (not re-serialised JSON).
    now
        The receiver's time (Unix seconds); the current time when ``None``.
    tolerance_s
        The replay window: timestamps further than this from ``now`` are refused.

    Returns
    -------
    bool
        True when the signature matches and the timestamp is inside the window.
    """
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(key, timestamp, body), signature)


def _findings_summary(findings: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level scalar entries of a result's findings (numbers, flags, short text)."""
    summary: dict[str, Any] = {}
    for name, value in findings.items():
        if isinstance(value, bool | int | float) or (
            isinstance(value, str) and len(value) <= _FINDING_TEXT_MAX
        ):
            summary[str(name)] = value
    return summary


def critical_finding_payload(study: Study, result: InferenceResult) -> dict[str, Any]:
    """The JSON a receiver gets for a critical ``result`` on ``study``.

    What is in it: StudyInstanceUID (to open the study in radcloud's worklist and viewer, and
    to match it in the hospital's PACS), the hospital, the study's modalities, the model's name
    and version, the score, the operating threshold (``findings["threshold"]`` when the model
    reports it), a summary of the findings (their top-level numbers, flags and short texts;
    masks, per-lesion lists and references are left out), the result id and times. What is not:
    patient name, patient ID, birth date, accession number or any other DICOM attribute of the
    patient: a webhook leaves radcloud's audit boundary, and the study UID is enough to find
    the rest behind authentication.
    """
    findings = result.findings or {}
    threshold = findings.get("threshold")
    return {
        "type": "critical_finding",
        "study_instance_uid": study.study_instance_uid,
        "hospital": study.hospital.name if study.hospital is not None else None,
        "modalities": study.modalities,
        "model": {"name": result.model_name, "version": result.model_version},
        "score": result.score,
        "threshold": threshold if isinstance(threshold, int | float) else None,
        "findings": _findings_summary(findings),
        "result_id": result.id,
        "result_created_at": (result.created_at or utcnow()).isoformat(),
        "ai_generated": True,
        "verified": False,
    }


def enqueue_critical_finding(
    session: Session, *, study: Study, result: InferenceResult, settings: Settings
) -> OutboxEvent | None:
    """Queue a webhook notification for a critical result, in the caller's transaction.

    Call it in the write transaction that stores ``result`` (with ``critical=True``); the event
    commits or rolls back with the result. At most one notification is queued per result row:
    calling it again for the same result returns the event already queued. No audit record is
    written here (the caller holds the write lock); the notifier writes one on delivery.

    Parameters
    ----------
    session
        The caller's open session.
    study, result
        The study and its critical result (flushed here if it has no id yet).
    settings
        Settings; nothing is queued when ``notify_webhook_url`` is not set.

    Returns
    -------
    OutboxEvent or None
        The ``notification.critical`` event, or None when no webhook is configured.
    """
    if settings.notify_webhook_url is None:
        logger.info(
            "critical finding on study %s (%s %s): no webhook configured, no notification",
            study.study_instance_uid,
            result.model_name,
            result.model_version,
        )
        return None
    if result.id is None:
        session.flush()
    key = f"inference_result:{result.id}"
    existing = session.scalars(
        select(OutboxEvent).where(OutboxEvent.topic == TOPIC_CRITICAL, OutboxEvent.key == key)
    ).first()
    if existing is not None:
        return existing
    event = OutboxEvent(
        topic=TOPIC_CRITICAL,
        key=key,
        payload=critical_finding_payload(study, result),
        created_at=utcnow(),
        attempts=0,
    )
    session.add(event)
    session.flush()
    logger.info(
        "critical finding on study %s (%s %s): notification %d queued",
        study.study_instance_uid,
        result.model_name,
        result.model_version,
        event.id,
    )
    return event


@dataclass(frozen=True)
class _Claim:
    event_id: int
    attempt: int
    lease_until: dt.datetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    error: str | None = None
    status_code: int | None = None


def _redacted(url: str) -> str:
    """``url`` without user info, query or fragment (they may hold a receiver's token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookNotifier:
    """Delivers due ``notification.critical`` events to the configured webhook.

    Parameters
    ----------
    db
        The application database holding the outbox.
    settings
        ``notify_webhook_url``, ``notify_timeout_s``, ``notify_max_attempts``,
        ``notify_backoff_base_s`` and ``notify_backoff_max_s`` are used.
    signing_key
        The HMAC key receivers verify with (see :func:`signing_key`).
    audit
        Where deliveries and give-ups are recorded.
    """

    def __init__(
        self, db: Database, settings: Settings, signing_key: bytes, audit: AuditTrail
    ) -> None:
        self._db = db
        self._settings = settings
        self._key = signing_key
        self._audit = audit
        self._url = settings.notify_webhook_url
        # An attempt's connect, write and read phases each get the timeout: the lease covers
        # all three plus slack, so a claim never runs out while its request is still going.
        self._lease = dt.timedelta(seconds=4 * settings.notify_timeout_s + 5)
        self._client = httpx.Client(
            timeout=settings.notify_timeout_s,
            follow_redirects=False,
            headers={"User-Agent": f"radcloud/{__version__}"},
        )
        self._warned_no_url = False

    def __enter__(self) -> WebhookNotifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def deliver_due(self) -> int:
        """Send every due notification once; return how many the receiver accepted (2xx).

        Due: not processed, and ``available_at`` unset or past. Each event is tried at most
        once per call; failed ones are scheduled for a later call by their backoff.
        """
        if self._url is None:
            if not self._warned_no_url:
                logger.warning("notifications are queued but no webhook URL is set: not sending")
                self._warned_no_url = True
            return 0
        delivered = 0
        tried: list[int] = []
        while len(tried) < _MAX_PER_ROUND:
            claim = self._claim_next(tried)
            if claim is None:
                break
            tried.append(claim.event_id)
            outcome = self._send(self._url, claim)
            if outcome.ok:
                delivered += self._record_success(claim, outcome)
            else:
                self._record_failure(claim, outcome)
        return delivered

    def _claim_next(self, skip: list[int]) -> _Claim | None:
        now = utcnow()
        with write_transaction(self._db, _LOCK_KEY) as session:
            query = (
                select(OutboxEvent)
                .where(
                    OutboxEvent.topic == TOPIC_CRITICAL,
                    OutboxEvent.processed_at.is_(None),
                    or_(OutboxEvent.available_at.is_(None), OutboxEvent.available_at <= now),
                )
                .order_by(OutboxEvent.id)
                .limit(1)
            )
            if skip:
                query = query.where(OutboxEvent.id.not_in(skip))
            event = session.scalars(query).first()
            if event is None:
                return None
            event.attempts = (event.attempts or 0) + 1
            event.available_at = now + self._lease
            return _Claim(event.id, event.attempts, event.available_at, dict(event.payload))

    def _send(self, url: str, claim: _Claim) -> _Outcome:
        body = json.dumps(
            {"event_id": claim.event_id, **claim.payload},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Radcloud-Timestamp": timestamp,
            "X-Radcloud-Signature": sign(self._key, timestamp, body),
            "Idempotency-Key": str(claim.event_id),
            "X-Radcloud-Attempt": str(claim.attempt),
        }
        try:
            answer = self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return _Outcome(False, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS])
        if answer.is_success:
            return _Outcome(True, status_code=answer.status_code)
        text = answer.text.strip().replace("\n", " ")
        error = f"HTTP {answer.status_code}: {text}"[:_MAX_ERROR_CHARS]
        return _Outcome(False, error, answer.status_code)

    def _backoff(self, attempt: int) -> float:
        settings = self._settings
        ceiling = min(
            settings.notify_backoff_max_s,
            settings.notify_backoff_base_s * 2.0 ** min(attempt - 1, 60),
        )
        return ceiling / 2 + _jitter.uniform(0, ceiling / 2)

    def _finish(self, claim: _Claim, **values: Any) -> bool:
        """Write an attempt's outcome if the claim still holds (``available_at`` unchanged)."""
        still_ours = (
            update(OutboxEvent)
            .where(
                OutboxEvent.id == claim.event_id,
                OutboxEvent.processed_at.is_(None),
                OutboxEvent.available_at == claim.lease_until,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        with write_transaction(self._db, _LOCK_KEY) as session:
            result = session.execute(still_ours)
            changed = cast(CursorResult[Any], result).rowcount
        if not changed:
            logger.warning(
                "notification %d: claim expired before its attempt %d ended (another notifier "
                "took it over); outcome not recorded",
                claim.event_id,
                claim.attempt,
            )
        return bool(changed)

    def _record_success(self, claim: _Claim, outcome: _Outcome) -> int:
        if not self._finish(claim, processed_at=utcnow()):
            return 0
        logger.info(
            "notification %d delivered (study %s, attempt %d, HTTP %s)",
            claim.event_id,
            claim.payload.get("study_instance_uid"),
            claim.attempt,
            outcome.status_code,
        )
        self._audit_delivery(claim, AuditOutcome.SUCCESS, {"status_code": outcome.status_code})
        return 1

    def _record_failure(self, claim: _Claim, outcome: _Outcome) -> None:
        error = outcome.error or "unknown error"
        study_uid = claim.payload.get("study_instance_uid")
        if claim.attempt >= self._settings.notify_max_attempts:
            final = f"{GAVE_UP} after {claim.attempt} attempts; last error: {error}"
            if not self._finish(claim, processed_at=utcnow(), last_error=final[:2000]):
                return
            logger.critical(
                "ALARM: critical-finding notification %d for study %s was NOT delivered to %s "
                "after %d attempts (last error: %s); nobody was notified",
                claim.event_id,
                study_uid,
                _redacted(self._url or ""),
                claim.attempt,
                error,
            )
            self._audit_delivery(
                claim,
                AuditOutcome.SERIOUS_FAILURE,
                {"reason": GAVE_UP, "last_error": error},
            )
            return
        delay = self._backoff(claim.attempt)
        retry_at = utcnow() + dt.timedelta(seconds=delay)
        if self._finish(claim, available_at=retry_at, last_error=error):
            logger.warning(
                "notification %d for study %s: attempt %d of %d failed (%s); retry in %.1f s",
                claim.event_id,
                study_uid,
                claim.attempt,
                self._settings.notify_max_attempts,
                error,
                delay,
            )

    def _audit_delivery(
        self, claim: _Claim, outcome: AuditOutcome, extra: Mapping[str, Any]
    ) -> None:
        model = claim.payload.get("model") or {}
        self._audit.record(
            AuditEventCode.EXPORT,
            action=AuditAction.READ,
            outcome=outcome,
            user_name=_AUDIT_USER,
            resource_type="study",
            resource_id=claim.payload.get("study_instance_uid"),
            detail={
                "notification": "critical finding webhook",
                "event_id": claim.event_id,
                "attempts": claim.attempt,
                "destination": _redacted(self._url or ""),
                "model": model,
                **extra,
            },
        )


def run_notifier(notifier: WebhookNotifier, stop: threading.Event, interval_s: float = 1.0) -> None:
    """Call ``notifier.deliver_due()`` every ``interval_s`` seconds until ``stop`` is set.

    A database error in one round is logged and the next round tries again.
    """
    while not stop.is_set():
        try:
            notifier.deliver_due()
        except SQLAlchemyError:
            logger.exception("notification round failed; retrying in %.1f s", interval_s)
        stop.wait(interval_s)
