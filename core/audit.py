"""The append-only audit trail of patient-data access and security events.

Records are modelled on DICOM PS3.15 A.5 (IHE ATNA): an event ID from PS3.16 CID 400
(e.g. ``110103`` DICOM Instances Accessed), an action code (C/R/U/D/E), an outcome (0 success,
4 minor failure, 8 serious failure, 12 major failure), the active participant (user, role,
network address) and the participant object (a study UID; a patient ID only as a keyed hash,
HMAC-SHA256 with the instance's audit key, so records can be matched without revealing it).

Each record stores a MAC, HMAC-SHA256 keyed with the instance's ``audit_chain_key`` (in
``secrets.json``, never in the database), of its canonical JSON, which includes the previous
record's MAC; ``audit_head`` keeps the newest sequence number and MAC. :meth:`AuditTrail.verify`
recomputes the chain, so an edited, deleted or inserted record shows, even when whoever edited
it recomputed every hash: without the key no MAC can be made. A chain written before it was
keyed (plain SHA-256) is sealed by a checkpoint record on first use, so its old records still
verify by the old rule (:mod:`core._audit_chain`). Appends are serialised by an exclusive write
lock (:func:`core.db.write_transaction`) so the chain stays linear across processes. The chain
cannot stop someone who holds the key *and* the database; export it regularly (``radcloud
audit export``, also as FHIR AuditEvent for a hospital's SIEM, :mod:`core.audit_fhir`).

Values a caller controls (a claimed user name, a route's path, an error message quoting them)
are bounded before they are written: each column to its declared length, each string in
``detail`` to :data:`MAX_DETAIL_CHARS`, cut with a note of how much was dropped, so one request
cannot write megabytes into the trail or fail its own record on a strict database.

The service that performs an audited action writes its record, whichever door the action came
through: it is handed a :class:`core.security.Actor` (who did it: a signed-in user, a service
account, the OS user running a command; through which door) and wraps the change in
:meth:`AuditTrail.audited`, so that the record is committed in the same transaction as the
change, and a refused or failed action is recorded with a failure outcome. Reading the trail
(:meth:`AuditTrail.search`, :meth:`~AuditTrail.verify`, :meth:`~AuditTrail.export`) is itself
recorded (110101 Audit Log Used).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from core._audit_chain import (
    CHECKPOINT_RESOURCE,
    GENESIS_HASH,
    HASHED,
    ChainBreak,
    VerifyReport,
    check_chain,
    is_keyed,
    record_mac,
)
from core.db import Database, take_write_lock, write_transaction
from core.db.models import AuditEvent, AuditHead, Hospital, utcnow
from core.exceptions import NotFoundError, RadcloudError

if TYPE_CHECKING:
    from core.secrets import Secrets
    from core.security.principal import Actor

__all__ = [
    "AuditAction",
    "AuditEventCode",
    "AuditOutcome",
    "AuditTrail",
    "AuditedChange",
    "ChainBreak",
    "VerifyReport",
]

logger = logging.getLogger(__name__)

MAX_DETAIL_CHARS = 1024
_COLUMN_LENGTHS: dict[str, int] = {
    name: int(getattr(AuditEvent.__table__.columns[name].type, "length", MAX_DETAIL_CHARS))
    for name in ("user_name", "role", "source_address", "resource_type", "resource_id")
}
_LOCK_KEY = 0x52414443  # "RADC": PostgreSQL advisory lock for the chain


class AuditEventCode(StrEnum):
    """Audit event IDs (DICOM PS3.16 CID 400, coding scheme DCM)."""

    APPLICATION_ACTIVITY = "110100"
    AUDIT_LOG_USED = "110101"
    BEGIN_TRANSFERRING = "110102"
    INSTANCES_ACCESSED = "110103"
    INSTANCES_TRANSFERRED = "110104"
    EXPORT = "110106"
    IMPORT = "110107"
    NETWORK_ENTRY = "110108"
    PATIENT_RECORD = "110110"
    QUERY = "110112"
    SECURITY_ALERT = "110113"
    USER_AUTHENTICATION = "110114"

    @property
    def meaning(self) -> str:
        """The code meaning, e.g. "DICOM Instances Accessed"."""
        return _MEANINGS[self]


_MEANINGS = {
    AuditEventCode.APPLICATION_ACTIVITY: "Application Activity",
    AuditEventCode.AUDIT_LOG_USED: "Audit Log Used",
    AuditEventCode.BEGIN_TRANSFERRING: "Begin Transferring DICOM Instances",
    AuditEventCode.INSTANCES_ACCESSED: "DICOM Instances Accessed",
    AuditEventCode.INSTANCES_TRANSFERRED: "DICOM Instances Transferred",
    AuditEventCode.EXPORT: "Export",
    AuditEventCode.IMPORT: "Import",
    AuditEventCode.NETWORK_ENTRY: "Network Entry",
    AuditEventCode.PATIENT_RECORD: "Patient Record",
    AuditEventCode.QUERY: "Query",
    AuditEventCode.SECURITY_ALERT: "Security Alert",
    AuditEventCode.USER_AUTHENTICATION: "User Authentication",
}


class AuditAction(StrEnum):
    """Event action codes (PS3.15 A.5.1)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class AuditOutcome(IntEnum):
    """Event outcome indicators (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass
class AuditedChange:
    """An audited action in progress (see :meth:`AuditTrail.audited`).

    ``session`` is the transaction the record is written in: make the change in it.
    ``detail`` may be completed with facts known only once the change is made.
    """

    session: Session
    detail: dict[str, Any]


def _as_dict(event: AuditEvent) -> dict[str, Any]:
    data = {name: getattr(event, name) for name in (*HASHED, "hash")}
    data["time"] = event.time.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return data


def _bounded(value: str | None, limit: int) -> str | None:
    """``value`` cut to ``limit`` characters, its end saying how many were dropped."""
    if value is None or len(value) <= limit:
        return value
    kept = limit - len(f"…[{len(value)} more]")
    return f"{value[:kept]}…[{len(value) - kept} more]"


def _bounded_detail(value: Any) -> Any:
    if isinstance(value, str):
        return _bounded(value, MAX_DETAIL_CHARS)
    if isinstance(value, dict):
        return {key: _bounded_detail(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_bounded_detail(item) for item in value]
    return value


class AuditTrail:
    """Append to, verify and export the audit trail.

    Parameters
    ----------
    db
        The application database.
    hmac_key
        The instance's audit key, used to pseudonymise patient IDs.
    chain_key
        The key of the chain's MACs; the database must not hold it.
    """

    def __init__(self, db: Database, hmac_key: str, chain_key: str) -> None:
        if not chain_key:
            raise ValueError("the audit chain key is empty: expected the secrets file's key")
        self._db = db
        self._key = hmac_key.encode()
        self._chain_key = chain_key.encode()
        self._sealed = False

    @classmethod
    def from_secrets(cls, db: Database, secrets: Secrets) -> AuditTrail:
        """The trail of ``db`` keyed with the instance's secrets; an unkeyed chain written by an
        older radcloud is sealed now (:meth:`seal`)."""
        trail = cls(db, secrets.audit_hmac_key, secrets.audit_chain_key)
        trail.seal()
        return trail

    def seal(self) -> int | None:
        """Seal a chain whose newest record carries no MAC (written before the chain was keyed)
        with a keyed checkpoint record; return its sequence number, or ``None`` when the chain
        is empty or already keyed. Idempotent and safe across processes (under the chain's
        write lock)."""
        if self._sealed:
            return None
        with write_transaction(self._db, _LOCK_KEY) as session:
            return self._seal_in(session)

    def _was_keyed(self, session: Session) -> bool:
        """Whether the chain was keyed already: its first record, or a checkpoint, has a MAC."""
        first = session.get(AuditEvent, 1)
        candidates = [first] if first is not None else []
        candidates += session.scalars(
            select(AuditEvent).where(AuditEvent.resource_type == CHECKPOINT_RESOURCE)
        )
        return any(is_keyed(self._chain_key, _as_dict(event)) for event in candidates)

    def _seal_in(self, session: Session) -> int | None:
        """:meth:`seal` in ``session``, a transaction holding the chain's write lock."""
        head = session.get(AuditHead, 1)
        newest = session.get(AuditEvent, head.seq) if head is not None else None
        if head is None or newest is None or is_keyed(self._chain_key, _as_dict(newest)):
            # empty, keyed, or broken (a missing newest record is reported by verify, not sealed)
            self._sealed = head is None or newest is not None
            return None
        if self._was_keyed(session):
            # unkeyed records after keyed ones were written without the key: verify names
            # them; sealing them would hide them
            logger.error("the newest audit record carries no MAC: run `radcloud audit verify`")
            self._sealed = True
            return None
        logger.warning("sealing %d unkeyed audit records with a keyed checkpoint", head.seq)
        self._sealed = True
        return self._append(
            session,
            AuditEventCode.APPLICATION_ACTIVITY,
            {
                "user_name": "radcloud",
                "resource_type": CHECKPOINT_RESOURCE,
                "resource_id": "checkpoint",
                "detail": {
                    "what": "audit chain keyed: records up to here verify by SHA-256, "
                    "from here on by HMAC-SHA256",
                    "sealed_records": head.seq,
                    "sealed_head": head.hash,
                },
            },
        )

    def patient_id_hash(self, patient_id: str) -> str:
        """HMAC-SHA256 of a patient ID: equal IDs match, the ID itself is not stored."""
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()

    def record(
        self,
        event_code: AuditEventCode | str,
        *,
        actor: Actor | None = None,
        action: AuditAction | str = AuditAction.EXECUTE,
        outcome: AuditOutcome | int = AuditOutcome.SUCCESS,
        user_name: str | None = None,
        role: str | None = None,
        source_address: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        patient_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one record and return its sequence number.

        Parameters
        ----------
        event_code
            A CID 400 event ID.
        actor
            The active participant: fills ``user_name``, ``role`` and ``source_address`` where
            they are not given, and ``detail["via"]``.
        action, outcome
            PS3.15 A.5.1 action code and outcome indicator.
        user_name, role, source_address
            The active participant, where there is no ``actor``.
        resource_type, resource_id
            What was touched, e.g. ``("study", study_instance_uid)``.
        patient_id
            Stored only as :meth:`patient_id_hash`.
        detail
            Further JSON-serialisable facts (never credentials or patient names).
        """
        with write_transaction(self._db, _LOCK_KEY) as session:
            return self._append(
                session,
                event_code,
                {
                    "actor": actor,
                    "action": action,
                    "outcome": outcome,
                    "user_name": user_name,
                    "role": role,
                    "source_address": source_address,
                    "resource_type": resource_type,
                    "resource_id": resource_id,
                    "patient_id": patient_id,
                    "detail": detail,
                },
            )

    def _append(
        self, session: Session, event_code: AuditEventCode | str, fields: Mapping[str, Any]
    ) -> int:
        """Append one record of ``fields`` (:meth:`record`'s arguments) in ``session``, a
        transaction holding the chain's write lock."""
        code = AuditEventCode(event_code)
        actor: Actor | None = fields.get("actor")
        user_name, role = fields.get("user_name"), fields.get("role")
        source_address = fields.get("source_address")
        facts = dict(fields.get("detail") or {})
        if actor is not None:
            user_name = user_name or actor.name
            role = role or actor.role
            source_address = source_address or actor.address
            facts.setdefault("via", actor.door.value)
        clean_detail = _bounded_detail(json.loads(json.dumps(facts, default=str)))
        patient_id = fields.get("patient_id")
        if not self._sealed and fields.get("resource_type") != CHECKPOINT_RESOURCE:
            self._seal_in(session)
        head = session.get(AuditHead, 1)
        prev_seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        event = AuditEvent(
            seq=prev_seq + 1,
            time=utcnow(),
            event_code=code.value,
            event_name=code.meaning,
            action=AuditAction(fields.get("action", AuditAction.EXECUTE)).value,
            outcome=int(AuditOutcome(fields.get("outcome", AuditOutcome.SUCCESS))),
            user_name=user_name,
            role=role,
            source_address=source_address,
            resource_type=fields.get("resource_type"),
            resource_id=fields.get("resource_id"),
            patient_id_hash=self.patient_id_hash(patient_id) if patient_id else None,
            detail=clean_detail,
            prev_hash=prev_hash,
            hash="",
        )
        for name, length in _COLUMN_LENGTHS.items():
            setattr(event, name, _bounded(getattr(event, name), length))
        event.hash = record_mac(self._chain_key, _as_dict(event))
        session.add(event)
        if head is None:
            session.add(AuditHead(id=1, seq=event.seq, hash=event.hash))
        else:
            head.seq, head.hash = event.seq, event.hash
        return event.seq

    @contextmanager
    def audited(
        self,
        event_code: AuditEventCode,
        *,
        actor: Actor,
        action: AuditAction,
        resource_type: str | None = None,
        resource_id: str | None = None,
        patient_id: str | None = None,
        detail: Mapping[str, Any] | None = None,
        refusals: tuple[type[Exception], ...] = (RadcloudError, ValueError),
    ) -> Iterator[AuditedChange]:
        """Make a change and its audit record in one transaction.

        The block makes the change in the yielded :attr:`AuditedChange.session` (or on disk);
        when it ends without error the success record is appended in that transaction and both
        are committed together. When it raises, the transaction is rolled back, a record with
        a failure outcome and the error's message as ``detail["reason"]`` is written on its
        own, and the error propagates.

        Parameters
        ----------
        event_code, actor, action, resource_type, resource_id, patient_id, detail
            As for :meth:`record`.
        refusals
            Errors that mean the action was refused (outcome 4, minor failure); any other error
            is outcome 8 (serious failure).
        """
        fields: dict[str, Any] = {
            "actor": actor,
            "action": action,
            "resource_type": resource_type,
            "resource_id": resource_id,
            "patient_id": patient_id,
        }
        facts = dict(detail or {})
        try:
            # the chain's lock when the change is made, not before: records written inside
            # the block on another connection (a release's study claim) go through first
            with self._db.write_session() as session:
                yield AuditedChange(session, facts)
                take_write_lock(self._db, session, _LOCK_KEY)
                self._append(session, event_code, fields | {"detail": facts})
        except Exception as exc:
            outcome = (
                AuditOutcome.MINOR_FAILURE
                if isinstance(exc, refusals)
                else AuditOutcome.SERIOUS_FAILURE
            )
            failed = facts | {"reason": str(exc) or type(exc).__name__}
            try:
                self.record(event_code, outcome=outcome, detail=failed, **fields)
            except Exception:  # the action's own error matters more: raise that one
                logger.exception("cannot write the audit record of a failed %s", event_code)
            raise

    def security_change(
        self, actor: Actor, action: AuditAction, kind: str, name: str, **detail: Any
    ) -> AbstractContextManager[AuditedChange]:
        """:meth:`audited` for a change of who may do what (110113 Security Alert).

        ``kind`` and ``name`` name the object (``"user"``, ``"alice"``); ``detail`` should say
        what changed, e.g. ``change="user created"``.
        """
        return self.audited(
            AuditEventCode.SECURITY_ALERT,
            actor=actor,
            action=action,
            resource_type=kind,
            resource_id=name,
            detail=detail,
        )

    def _iter_events(
        self, since: dt.datetime | None = None, batch: int = 1000
    ) -> Iterator[AuditEvent]:
        last = 0
        while True:
            with self._db.session() as session:
                query = select(AuditEvent).where(AuditEvent.seq > last)
                if since is not None:
                    query = query.where(AuditEvent.time >= since)
                rows = list(session.scalars(query.order_by(AuditEvent.seq).limit(batch)))
            if not rows:
                return
            yield from rows
            last = rows[-1].seq

    def verify(self, *, actor: Actor) -> VerifyReport:
        """Recompute the whole chain and report every break found (audited as 110101, E; with
        outcome 4 and the first bad record when it is broken)."""
        report = self.check()
        detail: dict[str, Any] = {"verified": report.ok, "records": report.records}
        if report.first_bad is not None:
            detail["first_bad_record"] = report.first_bad.seq
        self.record(
            AuditEventCode.AUDIT_LOG_USED,
            actor=actor,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.SUCCESS if report.ok else AuditOutcome.MINOR_FAILURE,
            detail=detail,
        )
        return report

    def check(self) -> VerifyReport:
        """:meth:`verify` without its audit record and without sealing the chain: whether these
        keys verify it, before anything is written with them (a restore checks the restored
        secrets so)."""
        with self._db.session() as session:
            head = session.get(AuditHead, 1)
            head_at = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        records = (_as_dict(event) for event in self._iter_events())
        report = check_chain(self._chain_key, records, head_at)
        if not report.ok:
            logger.error("audit chain verification failed: %s", "; ".join(report.problems))
        return report

    def search(
        self,
        *,
        actor: Actor,
        resource_id: str | None = None,
        user_name: str | None = None,
        event_code: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest records matching every given filter, newest first (audited: 110101, R)."""
        query = select(AuditEvent)
        if resource_id is not None:
            query = query.where(AuditEvent.resource_id == resource_id)
        if user_name is not None:
            query = query.where(AuditEvent.user_name == user_name)
        if event_code is not None:
            query = query.where(AuditEvent.event_code == event_code)
        with self._db.session() as session:
            rows = session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit))
            records = [_as_dict(row) for row in rows]
        self.record(
            AuditEventCode.AUDIT_LOG_USED,
            actor=actor,
            action=AuditAction.READ,
            detail={"filters": {"resource_id": resource_id, "user_name": user_name}},
        )
        return records

    def export(self, out: TextIO, since: dt.datetime | None = None, *, actor: Actor) -> int:
        """Write records (all, or from ``since``) as JSON lines; return how many.

        Audited as 110101 Audit Log Used (R) once written; a write that fails (a full disk) is
        audited with outcome 8, serious failure.
        """
        when = since.isoformat() if since else None
        detail: dict[str, Any] = {"operation": "export", "since": when, "records": 0}
        with self._log_used(actor, detail):
            for event in self._iter_events(since):
                out.write(json.dumps(_as_dict(event), sort_keys=True, ensure_ascii=False) + "\n")
                detail["records"] += 1
        count: int = detail["records"]
        return count

    def export_fhir(
        self,
        out: TextIO,
        hospital: str,
        since: dt.datetime | None = None,
        *,
        actor: Actor,
        site: str = "radcloud",
    ) -> int:
        """Write ``hospital``'s records (all, or from ``since``) as a FHIR R4 Bundle of
        AuditEvent (:mod:`core.audit_fhir`); return how many. Audited as 110101 Audit Log Used
        (R), with the hospital.

        Raises
        ------
        NotFoundError
            No hospital is named ``hospital``.
        """
        from core import audit_fhir
        from core.tenancy import HospitalScope, visible_study_uids

        with self._db.session() as session:
            if session.scalar(select(Hospital.id).where(Hospital.name == hospital)) is None:
                raise NotFoundError("hospital", hospital)
        records = [_as_dict(event) for event in self._iter_events(since)]
        named = {uid for record in records for uid, _ in audit_fhir.named_studies(record)}
        with self._db.session() as session:
            owned = visible_study_uids(session, HospitalScope.of([hospital]), named)
        events = []
        for record in records:
            studies = audit_fhir.hospital_entities(record, hospital, owned)
            if studies is not None:
                events.append((record["hash"], audit_fhir.audit_event(record, studies, site)))
        detail: dict[str, Any] = {
            "operation": "export",
            "format": "fhir",
            "hospital": hospital,
            "since": since.isoformat() if since else None,
            "records": len(events),
        }
        with self._log_used(actor, detail):
            out.write(audit_fhir.audit_bundle(events, hospital).model_dump_json(indent=1))
            out.write("\n")
        return len(events)

    @contextmanager
    def _log_used(self, actor: Actor, detail: dict[str, Any]) -> Iterator[None]:
        """Audit one use of the trail (110101 Audit Log Used, R) once the block has run:
        success, or outcome 8 (serious failure) with the reason of a write that failed (a full
        disk)."""
        outcome = AuditOutcome.SERIOUS_FAILURE
        try:
            yield
            outcome = AuditOutcome.SUCCESS
        except OSError as exc:
            detail["reason"] = str(exc)
            raise
        finally:
            self.record(
                AuditEventCode.AUDIT_LOG_USED,
                actor=actor,
                action=AuditAction.READ,
                outcome=outcome,
                detail=detail,
            )
