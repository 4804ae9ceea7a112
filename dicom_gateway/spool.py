"""The gateway's durable spool: an instance is acknowledged only once it is on disk.

:meth:`Spool.put` writes one file per instance into ``RADCLOUD_HOME/spool``: a temporary file is
written and ``fsync``-ed, renamed to its final name, and the directory is ``fsync``-ed, so after
``put`` returns the instance survives a crash of the process or of the machine. The gateway
process is the spool's one writer for every ingest door (DIMSE, and STOW-RS handed over by the
API process, :mod:`dicom_gateway.stow`), so its limit and accounting hold as one; only
``radcloud quarantine release`` puts from another process. The gateway's forwarder drains the
spool into Orthanc and removes a file only after Orthanc confirmed it.

File format (``<ns-timestamp>-<random>.spool``; the name never contains anything from the wire,
and sorts in arrival order)::

    b"RCSPOOL1" | 4-byte big-endian header length | header (JSON) | DICOM Part 10 bytes

The header holds the sender, the hospital, the time received and the :class:`InstanceInfo`.
Files still named ``*.tmp`` are incomplete writes from a crash: never acknowledged, removed by
:meth:`Spool.recover`.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.files import private_directory
from dicom_gateway.exceptions import SpoolError, SpoolFullError
from dicom_gateway.validation import InstanceInfo

__all__ = ["Spool", "SpoolEntry", "SpoolUsage"]

logger = logging.getLogger(__name__)

_MAGIC = b"RCSPOOL1"
_SUFFIX = ".spool"
_TMP_SUFFIX = ".tmp"
_USAGE_TTL_S = 0.5
_MIB = 1024 * 1024


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled instance: where it is, who sent it, and what it is."""

    path: Path
    info: InstanceInfo
    sender_ae_title: str | None
    hospital: str | None
    received_at: dt.datetime
    size_bytes: int

    def read_dicom(self) -> bytes:
        """The instance's DICOM Part 10 bytes."""
        data = self.path.read_bytes()
        (length,) = struct.unpack(">I", data[len(_MAGIC) : len(_MAGIC) + 4])
        return data[len(_MAGIC) + 4 + length :]


@dataclass(frozen=True)
class SpoolUsage:
    """How much is waiting in the spool."""

    files: int
    bytes: int
    limit_bytes: int


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A directory of durably written, not yet forwarded instances.

    Parameters
    ----------
    directory
        The spool directory (created if missing).
    limit_bytes
        Refuse new instances once the spool holds this much.
    min_free_bytes
        Refuse new instances when the disk would have less than this left.
    """

    def __init__(self, directory: Path, limit_bytes: int, min_free_bytes: int = 0) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        self.min_free_bytes = min_free_bytes
        private_directory(directory)
        self._lock = threading.Lock()
        self._usage_bytes = 0
        self._usage_at = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> Spool:
        """The spool configured by radcloud's settings."""
        return cls(
            settings.paths.spool_dir,
            settings.gateway_spool_limit_mib * _MIB,
            settings.gateway_min_free_disk_mib * _MIB,
        )

    # -- writing -------------------------------------------------------------------------

    def _used_bytes(self) -> int:
        now = time.monotonic()
        if now - self._usage_at > _USAGE_TTL_S:
            self._usage_bytes = self.usage().bytes
            self._usage_at = now
        return self._usage_bytes

    def _check_room(self, size: int) -> None:
        used = self._used_bytes()
        if used + size > self.limit_bytes:
            raise SpoolFullError(
                used,
                self.limit_bytes,
                "spool size limit reached (RADCLOUD_GATEWAY_SPOOL_LIMIT_MIB)",
            )
        free = shutil.disk_usage(self.directory).free
        if free - size < self.min_free_bytes:
            raise SpoolFullError(
                used,
                self.limit_bytes,
                f"only {free} bytes free on the spool's disk "
                "(RADCLOUD_GATEWAY_MIN_FREE_DISK_MIB keeps a reserve)",
            )

    def put(
        self,
        dicom: bytes,
        info: InstanceInfo,
        *,
        sender_ae_title: str | None,
        hospital: str | None,
    ) -> SpoolEntry:
        """Durably store one instance; when this returns it may be acknowledged.

        Raises
        ------
        SpoolFullError
            The spool is at its limit or the disk is (nearly) full; nothing was stored.
        SpoolError
            Writing failed for another reason (I/O error); nothing was stored.
        """
        received_at = dt.datetime.now(dt.UTC)
        header = json.dumps(
            {
                "sender_ae_title": sender_ae_title,
                "hospital": hospital,
                "received_at": received_at.isoformat(),
                "info": info.to_json(),
            }
        ).encode()
        blob = b"".join((_MAGIC, struct.pack(">I", len(header)), header, dicom))
        with self._lock:
            self._check_room(len(blob))
            self._usage_bytes += len(blob)
        name = f"{time.time_ns():020d}-{secrets.token_hex(6)}"
        tmp = self.directory / f"{name}{_TMP_SUFFIX}"
        final = self.directory / f"{name}{_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(blob)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.rename(final)
            _fsync_directory(self.directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._usage_bytes -= len(blob)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(self._usage_bytes, self.limit_bytes, "disk full") from exc
            raise SpoolError(self.directory, f"cannot write: {exc}") from exc
        return SpoolEntry(final, info, sender_ae_title, hospital, received_at, size_bytes=len(blob))

    # -- reading -------------------------------------------------------------------------

    def paths(self) -> list[Path]:
        """Complete spool files, oldest first."""
        return sorted(p for p in self.directory.iterdir() if p.name.endswith(_SUFFIX))

    def read(self, path: Path) -> SpoolEntry:
        """The header of one spool file.

        Raises
        ------
        SpoolError
            The file is not a spool file (it is moved aside by the caller).
        """
        with path.open("rb") as handle:
            magic = handle.read(len(_MAGIC))
            raw_length = handle.read(4)
            if magic != _MAGIC or len(raw_length) != 4:
                raise SpoolError(path, "not a radcloud spool file")
            (length,) = struct.unpack(">I", raw_length)
            try:
                header = json.loads(handle.read(length))
            except ValueError as exc:
                raise SpoolError(path, f"corrupt header: {exc}") from exc
        return SpoolEntry(
            path=path,
            info=InstanceInfo.from_json(header["info"]),
            sender_ae_title=header.get("sender_ae_title"),
            hospital=header.get("hospital"),
            received_at=dt.datetime.fromisoformat(header["received_at"]),
            size_bytes=path.stat().st_size,
        )

    def entries(self) -> Iterator[SpoolEntry]:
        """Every readable entry, oldest first (files that vanish meanwhile are skipped)."""
        for path in self.paths():
            try:
                yield self.read(path)
            except FileNotFoundError:
                continue

    def remove(self, entry: SpoolEntry) -> None:
        """Delete an entry once Orthanc has it."""
        entry.path.unlink(missing_ok=True)
        with self._lock:
            self._usage_bytes = max(0, self._usage_bytes - entry.size_bytes)

    def usage(self) -> SpoolUsage:
        """Files and bytes waiting (complete files only)."""
        files = total = 0
        with os.scandir(self.directory) as scan:
            for item in scan:
                if item.name.endswith(_SUFFIX):
                    try:
                        total += item.stat().st_size
                    except FileNotFoundError:
                        continue
                    files += 1
        return SpoolUsage(files, total, self.limit_bytes)

    def recover(self, older_than_s: float = 600.0) -> int:
        """Remove incomplete writes left by a crash (never acknowledged); return how many.

        Only files older than ``older_than_s`` go: another process may be writing a newer one.
        """
        removed = 0
        cutoff = time.time() - older_than_s
        for path in self.directory.glob(f"*{_TMP_SUFFIX}"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            logger.warning("removed %d incomplete spool writes left by a crash", removed)
        return removed
