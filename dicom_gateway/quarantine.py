"""Quarantine: instances the gateway could not store, kept with the reason, never dropped.

Each entry is a directory ``RADCLOUD_HOME/quarantine/<id>/`` with ``instance.dcm`` (the bytes
as received) and ``reason.json`` (why, who sent it, when, through which path). Operators list,
show, export, release (send to Orthanc anyway, through the spool) or delete entries with
``radcloud quarantine``.

What operators do with an entry's instance is audited here, whichever door it came through,
the record committed together with the action (a refused one, such as an unknown entry, with
outcome 4): :meth:`Quarantine.export` as 110106 Export (R), :meth:`Quarantine.release` as
110104 DICOM Instances Transferred (C: the archive gains it), :meth:`Quarantine.delete` as
110103 DICOM Instances Accessed (D). The object is the study (or the entry, when its study is
unknown); the patient ID only as the audit trail's keyed hash.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom

from core.audit import AuditAction, AuditedChange, AuditEventCode, AuditTrail
from core.files import private_directory
from core.inflation import check_part10_inflation
from core.security import Actor
from core.uids import is_safe_uid
from dicom_gateway.exceptions import (
    GatewayError,
    InstanceRejectedError,
    QuarantineEntryError,
    QuarantineFullError,
    StudyCollisionError,
)
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.spool import Spool, SpoolEntry
from dicom_gateway.validation import InstanceInfo, inspect_instance, zero_preamble

__all__ = ["Quarantine", "QuarantineEntry"]

logger = logging.getLogger(__name__)

_DATA = "instance.dcm"
_REASON = "reason.json"
_LABEL_INFLATED_BYTES = 64 * 1024 * 1024  # a deflated data set read for its labels


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined instance (metadata; the bytes stay on disk)."""

    entry_id: str
    reason: str
    error: str
    source: str
    sender_ae_title: str | None
    hospital: str | None
    quarantined_at: str
    size_bytes: int
    sop_instance_uid: str | None
    study_instance_uid: str | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


_IDENTITY = {  # InstanceInfo's patient fields and their keywords, read leniently on release
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
}


def _lenient(data: bytes, *keywords: str) -> tuple[str | None, ...]:
    """The values of ``keywords`` in ``data``, each ``None`` where it cannot be read."""
    try:
        check_part10_inflation(data, _LABEL_INFLATED_BYTES)  # never inflate a bomb
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        values = [ds.get(keyword) for keyword in keywords]
        return tuple(str(value) if value else None for value in values)
    except Exception:  # noqa: BLE001 - best-effort labels for data already known to be bad
        return (None,) * len(keywords)


class Quarantine:
    """The quarantine directory.

    Parameters
    ----------
    directory
        Where the entries are kept.
    audit
        The audit trail operators' actions (:meth:`export`, :meth:`release`, :meth:`delete`)
        are recorded in; a quarantine without one (the intake's, which only adds) refuses them.
    limit_bytes, max_files
        The quota (``RADCLOUD_GATEWAY_QUARANTINE_LIMIT_MIB`` and ``_MAX_FILES``) that
        :meth:`add` keeps when asked to (refusals at intake); ``None``: none.
    """

    def __init__(
        self,
        directory: Path,
        audit: AuditTrail | None = None,
        *,
        limit_bytes: int | None = None,
        max_files: int | None = None,
    ) -> None:
        self.directory = directory
        self._audit = audit
        self.limit_bytes, self.max_files = limit_bytes, max_files
        self._usage: tuple[int, int] | None = None  # (files, bytes), counted once, then kept
        self._usage_lock = threading.Lock()
        private_directory(directory)

    def _measure(self) -> tuple[int, int]:
        dirs = self._entry_dirs()
        return len(dirs), sum((path / _DATA).stat().st_size for path in dirs)

    def _reserve(self, size: int) -> None:
        """Count ``size`` more bytes in one more entry, or raise :class:`QuarantineFullError`
        when that passes the quota. Counted once, then kept up to date by this process; when the
        quota looks reached, counted again (operators may have deleted entries since)."""
        with self._usage_lock:
            for recount in (False, True):
                if self._usage is None or recount:
                    self._usage = self._measure()
                files, used = self._usage
                full = (self.max_files is not None and files + 1 > self.max_files) or (
                    self.limit_bytes is not None and used + size > self.limit_bytes
                )
                if not full:
                    self._usage = (files + 1, used + size)
                    return
            quota = [
                f"{limit} {unit} ({setting})"
                for limit, unit, setting in (
                    (self.max_files, "entries", "RADCLOUD_GATEWAY_QUARANTINE_MAX_FILES"),
                    (self.limit_bytes, "bytes", "RADCLOUD_GATEWAY_QUARANTINE_LIMIT_MIB"),
                )
                if limit is not None
            ]
            raise QuarantineFullError(
                f"{files} entries of {used} bytes; the quota is {' and '.join(quota)}"
            )

    def _release_reservation(self, size: int) -> None:
        with self._usage_lock:
            if self._usage is not None:
                self._usage = (self._usage[0] - 1, self._usage[1] - size)

    def add(
        self,
        data: bytes,
        *,
        reason: str,
        error: str,
        source: str,
        sender_ae_title: str | None,
        hospital: str | None,
        within_quota: bool = False,
    ) -> QuarantineEntry:
        """Keep ``data`` with ``reason``; returns the new entry.

        Parameters
        ----------
        data
            The bytes as received (a Part 10 file, or whatever arrived).
        reason
            Why it was refused, e.g. ``required (0020,000D) StudyInstanceUID is missing``.
        error
            The error class, e.g. ``NonConformantInstanceError``.
        source
            ``dimse``, ``stow`` or ``forward`` (Orthanc refused it after acceptance).
        sender_ae_title, hospital
            Who sent it.
        within_quota
            Keep the quota: refusals at intake, which the sender is told of, ask for it; an
            instance already acknowledged (the forwarder's) is kept whatever the quota.

        Raises
        ------
        QuarantineFullError
            ``within_quota`` and keeping ``data`` would pass the quota; nothing is written.
        """
        if within_quota:
            self._reserve(len(data))
        else:
            with self._usage_lock:
                if self._usage is not None:
                    self._usage = (self._usage[0] + 1, self._usage[1] + len(data))
        try:
            return self._write(
                data,
                reason=reason,
                error=error,
                source=source,
                sender_ae_title=sender_ae_title,
                hospital=hospital,
            )
        except BaseException:
            self._release_reservation(len(data))
            raise

    def _write(
        self,
        data: bytes,
        *,
        reason: str,
        error: str,
        source: str,
        sender_ae_title: str | None,
        hospital: str | None,
    ) -> QuarantineEntry:
        entry_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        sop_uid, study_uid = _lenient(data, "SOPInstanceUID", "StudyInstanceUID")
        entry = QuarantineEntry(
            entry_id=entry_id,
            reason=reason,
            error=error,
            source=source,
            sender_ae_title=sender_ae_title,
            hospital=hospital,
            quarantined_at=dt.datetime.now(dt.UTC).isoformat(),
            size_bytes=len(data),
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
        )
        tmp = self.directory / f".{entry_id}.tmp"
        tmp.mkdir(mode=0o700)
        (tmp / _DATA).write_bytes(data)
        (tmp / _REASON).write_text(json.dumps(entry.to_json(), indent=2))
        for path in (tmp / _DATA, tmp / _REASON):
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        tmp.rename(self.directory / entry_id)
        logger.warning(
            "quarantined %s from %s (%s): %s", entry_id, sender_ae_title or source, error, reason
        )
        return entry

    def _dir(self, entry_id: str) -> Path:
        path = self.directory / entry_id
        if "/" in entry_id or entry_id.startswith(".") or not (path / _REASON).is_file():
            raise QuarantineEntryError(entry_id, "no such entry")
        return path

    def _entry_dirs(self) -> list[Path]:
        return sorted(
            path
            for path in self.directory.iterdir()
            if not path.name.startswith(".") and (path / _REASON).is_file()
        )

    def list(self) -> list[QuarantineEntry]:
        """Every entry, oldest first."""
        return [
            QuarantineEntry(**json.loads((path / _REASON).read_text()))
            for path in self._entry_dirs()
        ]

    def count(self) -> int:
        """How many entries there are (without reading them)."""
        return len(self._entry_dirs())

    def show(self, entry_id: str) -> QuarantineEntry:
        """One entry's metadata."""
        return QuarantineEntry(**json.loads((self._dir(entry_id) / _REASON).read_text()))

    def data(self, entry_id: str) -> bytes:
        """One entry's bytes as received (in-process; operators use the audited :meth:`export`)."""
        return (self._dir(entry_id) / _DATA).read_bytes()

    @contextmanager
    def _operator_action(
        self,
        entry_id: str,
        event_code: AuditEventCode,
        action: AuditAction,
        actor: Actor,
        **detail: Any,
    ) -> Iterator[AuditedChange]:
        """Audit what ``actor`` does to entry ``entry_id`` in the block (see the module)."""
        if self._audit is None:
            raise RuntimeError(
                f"the quarantine in {self.directory} has no audit trail: operators' actions "
                "are audited, construct it with audit="
            )
        try:
            study_uid, sop_uid, patient_id = _lenient(
                self.data(entry_id), "StudyInstanceUID", "SOPInstanceUID", "PatientID"
            )
        except QuarantineEntryError:  # unknown: the block raises it again, audited as refused
            study_uid = sop_uid = patient_id = None
        safe_study = study_uid is not None and is_safe_uid(study_uid)
        with self._audit.audited(
            event_code,
            actor=actor,
            action=action,
            resource_type="study" if safe_study else "quarantine_entry",
            resource_id=study_uid if safe_study else entry_id,
            patient_id=patient_id,
            detail={"quarantine_entry": entry_id, "sop_instance_uid": sop_uid} | detail,
            refusals=(GatewayError,),
        ) as change:
            yield change

    def export(self, entry_id: str, out: Path, *, actor: Actor) -> QuarantineEntry:
        """Write one entry's bytes as received to ``out`` (audited: 110106 Export, R).

        Raises
        ------
        QuarantineEntryError
            No such entry.
        """
        with self._operator_action(
            entry_id, AuditEventCode.EXPORT, AuditAction.READ, actor, to=str(out)
        ):
            entry = self.show(entry_id)
            out.write_bytes(self.data(entry_id))
        return entry

    def delete(self, entry_id: str, *, actor: Actor) -> None:
        """Remove an entry for good (audited: 110103 DICOM Instances Accessed, D)."""
        with self._operator_action(
            entry_id, AuditEventCode.INSTANCES_ACCESSED, AuditAction.DELETE, actor
        ):
            shutil.rmtree(self._dir(entry_id))

    def release(
        self, spool: Spool, entry_id: str, *, actor: Actor, ownership: StudyOwnership
    ) -> SpoolEntry:
        """Send an entry to Orthanc anyway: put it in the spool, then drop it from quarantine
        (audited: 110104 DICOM Instances Transferred, C).

        Data that fails validation is still released (an operator decided so) if it has the
        UIDs needed to track it, and they are safe to use as keys (:func:`core.uids.is_safe_uid`:
        an instance quarantined for a UID such as ``../../x`` is never released); Orthanc may
        refuse it, and then it comes back here.

        The tenancy rules hold for a release as for a sender (``ownership``): the instance joins
        its study only as the hospital that sent it, with the patient the study recorded; the
        first instance of a study claims it for that hospital, so that the study gets its row
        and, once complete, its event. An instance whose header cannot be read joins only a
        study that hospital already holds.

        Raises
        ------
        QuarantineEntryError
            No such entry; it is not a DICOM file with safe Study and SOP Instance UIDs; or it
            may not join its study (another hospital's or patient's, the sender had no
            hospital, an unreadable instance of a study not held here): it stays here.
        """
        with self._operator_action(
            entry_id,
            AuditEventCode.INSTANCES_TRANSFERRED,
            AuditAction.CREATE,
            actor,
            change="released from quarantine",
        ) as change:
            spooled = self._release(spool, entry_id, ownership, actor)
            change.detail["spooled_as"] = spooled.path.name
        return spooled

    def _release(
        self, spool: Spool, entry_id: str, ownership: StudyOwnership, actor: Actor
    ) -> SpoolEntry:
        entry = self.show(entry_id)
        data = self.data(entry_id)
        try:
            info, stored = inspect_instance(data)
        except InstanceRejectedError as exc:
            if not (entry.sop_instance_uid and entry.study_instance_uid):
                raise QuarantineEntryError(
                    entry_id, f"cannot release: {exc.reason}, and its UIDs are unknown"
                ) from exc
            if not (is_safe_uid(entry.sop_instance_uid) and is_safe_uid(entry.study_instance_uid)):
                raise QuarantineEntryError(
                    entry_id, f"cannot release: {exc.reason}; its UIDs cannot be used as keys"
                ) from exc
            read = _lenient(data, *_IDENTITY.values())  # the patient, where the header allows
            identity: dict[str, Any] = dict(zip(_IDENTITY, read, strict=True))
            stored = zero_preamble(data)
            info = InstanceInfo(
                sop_class_uid="",
                sop_instance_uid=entry.sop_instance_uid,
                study_instance_uid=entry.study_instance_uid,
                series_instance_uid="",
                transfer_syntax_uid="",
                warnings=(f"released from quarantine despite: {exc.reason}",),
                **identity,
            )
        try:
            if info.patient_id:
                ownership.admit(info, entry.hospital, sender=actor.name, source="release")
            else:  # no identity to claim a study with, or to compare with the study's
                ownership.require_owner(info, entry.hospital, sender=actor.name, source="release")
        except StudyCollisionError as exc:
            raise QuarantineEntryError(entry_id, f"cannot release: {exc.reason}") from exc
        spooled = spool.put(
            stored, info, sender_ae_title=entry.sender_ae_title, hospital=entry.hospital
        )
        shutil.rmtree(self._dir(entry_id))
        return spooled
