"""Quarantine: instances the gateway could not store, kept with the reason, never dropped.

Each entry is a directory ``RADCLOUD_HOME/quarantine/<id>/`` with ``instance.dcm`` (the bytes
as received) and ``reason.json`` (why, who sent it, when, through which path). Operators list,
show, release (send to Orthanc anyway, through the spool) or delete entries with
``radcloud quarantine``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom

from dicom_gateway.exceptions import InstanceRejectedError, QuarantineEntryError
from dicom_gateway.spool import Spool, SpoolEntry
from dicom_gateway.validation import InstanceInfo, inspect_instance, zero_preamble

__all__ = ["Quarantine", "QuarantineEntry"]

logger = logging.getLogger(__name__)

_DATA = "instance.dcm"
_REASON = "reason.json"


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


def _lenient_uids(data: bytes) -> tuple[str | None, str | None]:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        sop = ds.get("SOPInstanceUID")
        study = ds.get("StudyInstanceUID")
        return (str(sop) if sop else None, str(study) if study else None)
    except Exception:  # noqa: BLE001 - best-effort labels for data already known to be bad
        return None, None


class Quarantine:
    """The quarantine directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def add(
        self,
        data: bytes,
        *,
        reason: str,
        error: str,
        source: str,
        sender_ae_title: str | None,
        hospital: str | None,
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
        """
        entry_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        sop_uid, study_uid = _lenient_uids(data)
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
        """One entry's bytes as received."""
        return (self._dir(entry_id) / _DATA).read_bytes()

    def delete(self, entry_id: str) -> None:
        """Remove an entry for good."""
        shutil.rmtree(self._dir(entry_id))

    def release(self, spool: Spool, entry_id: str) -> SpoolEntry:
        """Send an entry to Orthanc anyway: put it in the spool, then drop it from quarantine.

        Data that fails validation is still released (an operator decided so) if it has the
        UIDs needed to track it; Orthanc may refuse it, and then it comes back here.

        Raises
        ------
        QuarantineEntryError
            No such entry, or it is not a DICOM file with Study and SOP Instance UIDs.
        """
        entry = self.show(entry_id)
        data = self.data(entry_id)
        try:
            info, stored = inspect_instance(data)
        except InstanceRejectedError as exc:
            if not (entry.sop_instance_uid and entry.study_instance_uid):
                raise QuarantineEntryError(
                    entry_id, f"cannot release: {exc.reason}, and its UIDs are unknown"
                ) from exc
            stored = zero_preamble(data)
            info = InstanceInfo(
                sop_class_uid="",
                sop_instance_uid=entry.sop_instance_uid,
                study_instance_uid=entry.study_instance_uid,
                series_instance_uid="",
                transfer_syntax_uid="",
                warnings=(f"released from quarantine despite: {exc.reason}",),
            )
        spooled = spool.put(
            stored, info, sender_ae_title=entry.sender_ae_title, hospital=entry.hospital
        )
        self.delete(entry_id)
        return spooled
