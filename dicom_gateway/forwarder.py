"""Drain the spool into Orthanc: concurrent, keep-alive, retried with backoff, never lossy.

A scanner thread lists the spool (cheap: headers are read once per file and cached) and queues
new files; ``workers`` threads store them in the image archive (:class:`core.archive.ImageArchive`,
one keep-alive connection pool). Whatever is queued when a worker is free (up to 32 instances,
64 MB) goes in one :meth:`~core.archive.ImageArchive.store_instances` call, which answers one
outcome per instance (Orthanc: one ZIP, re-sent one instance per request when refused, so that a
refusal lands on exactly the instance it concerns). The spool file is deleted once the archive
has answered its receipt: the instance is then committed in the archive, and so is its entry in
the archive's change feed, which the study tracker (:mod:`dicom_gateway.completeness`) follows;
the forwarder tells the tracker nothing itself. A crash anywhere before the deletion leaves the
file in place and it is sent again (the archive answers "already stored": duplicates are
harmless).

Archive unavailable (:class:`~core.archive.ArchiveUnavailableError`: connection error, timeout,
HTTP 5xx): every worker pauses with exponential backoff (0.5 s doubling to 30 s) and the files
stay queued; the spool keeps accepting up to its limit and drains by itself once the archive is
back. The archive refusing an instance (:class:`~core.archive.ArchiveRejectedError`, e.g. not
DICOM): the instance moves to quarantine with the archive's reason.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.archive import (
    ArchiveError,
    ArchiveRejectedError,
    ArchiveUnavailableError,
    ImageArchive,
    StoredInstance,
)
from dicom_gateway import metrics
from dicom_gateway.exceptions import GatewayError
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.spool import Spool, SpoolEntry

__all__ = ["Forwarder"]

logger = logging.getLogger(__name__)

_SCAN_INTERVAL_S = 0.1
_BATCH_MAX = 32
_BATCH_MAX_BYTES = 64 * 1024 * 1024
_BACKOFF_START_S = 0.5
_BACKOFF_MAX_S = 30.0


def _refusal(error: ArchiveError) -> str:
    """The archive's reason for refusing an instance, as the quarantine records it."""
    if isinstance(error, ArchiveRejectedError):
        status = f"HTTP {error.status_code}: " if error.status_code is not None else ""
        return f"{status}{error.reason}"
    return error.message


class Forwarder:
    """Moves spooled instances into Orthanc.

    Parameters
    ----------
    spool, quarantine
        Where instances wait, and where Orthanc's refusals go.
    archive
        The image archive (thread-safe; one connection pool for all workers).
    workers
        Concurrent uploads.
    """

    def __init__(
        self,
        spool: Spool,
        quarantine: Quarantine,
        archive: ImageArchive,
        workers: int = 4,
    ) -> None:
        self._spool = spool
        self._quarantine = quarantine
        self._archive = archive
        self._workers = workers
        self._queue: queue.Queue[SpoolEntry] = queue.Queue()
        self._known: dict[Path, SpoolEntry] = {}
        self._known_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pause_until = 0.0
        self._backoff_s = _BACKOFF_START_S
        self._backoff_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.orthanc_available = True

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scanner and the workers."""
        self._spool.recover()
        targets: list[tuple[str, Callable[[], None]]] = [("scan", self._scan_loop)]
        targets += [(f"forward-{n}", self._work_loop) for n in range(self._workers)]
        for name, target in targets:
            thread = threading.Thread(target=target, name=f"gateway-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop all threads; what is not forwarded stays in the spool for next time."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def notify(self) -> None:
        """Something was spooled: scan now rather than at the next tick."""
        self._wake.set()

    # -- state for the study tracker ---------------------------------------------------------

    def pending_studies(self) -> set[str]:
        """Study UIDs with instances still in the spool (after a fresh scan)."""
        self._scan()
        with self._known_lock:
            return {entry.info.study_instance_uid for entry in self._known.values()}

    # -- scanning ----------------------------------------------------------------------------

    def _scan(self) -> None:
        paths = self._spool.paths()
        present = set(paths)
        new: list[SpoolEntry] = []
        with self._known_lock:
            for path in list(self._known):
                if path not in present:
                    del self._known[path]
            for path in paths:
                if path in self._known:
                    continue
                try:
                    entry = self._spool.read(path)
                except FileNotFoundError:
                    continue
                except GatewayError as exc:
                    self._quarantine_corrupt(path, str(exc))
                    continue
                self._known[path] = entry
                new.append(entry)
            # the listing just made, and the sizes read once per file: no stat of every file
            metrics.SPOOL_FILES.set(len(self._known))
            metrics.SPOOL_BYTES.set(sum(entry.size_bytes for entry in self._known.values()))
        for entry in new:
            self._queue.put(entry)

    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._scan()
            except OSError:
                logger.exception("cannot scan the spool %s", self._spool.directory)
            self._wake.wait(_SCAN_INTERVAL_S)
            self._wake.clear()

    def _quarantine_corrupt(self, path: Path, reason: str) -> None:
        self._quarantine.add(
            path.read_bytes(),
            reason=reason,
            error="CorruptSpoolFile",
            source="spool",
            sender_ae_title=None,
            hospital=None,
        )
        path.unlink(missing_ok=True)

    # -- forwarding --------------------------------------------------------------------------

    def _wait_if_paused(self) -> None:
        while not self._stop.is_set():
            remaining = self._pause_until - time.monotonic()
            if remaining <= 0:
                return
            self._stop.wait(min(remaining, 1.0))

    def _orthanc_failed(self, reason: str) -> None:
        with self._backoff_lock:
            if time.monotonic() < self._pause_until:
                return
            if self.orthanc_available:
                logger.warning("Orthanc unavailable (%s); spooling until it returns", reason)
            self.orthanc_available = False
            self._pause_until = time.monotonic() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)

    def _orthanc_ok(self) -> None:
        if not self.orthanc_available:
            with self._backoff_lock:
                if not self.orthanc_available:
                    logger.info("Orthanc is back; draining the spool")
                self.orthanc_available = True
                self._backoff_s = _BACKOFF_START_S

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            self._wait_if_paused()
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            size = batch[0].size_bytes
            while len(batch) < _BATCH_MAX and size < _BATCH_MAX_BYTES:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                size += batch[-1].size_bytes
            for entry in self._forward_batch(batch):
                self._queue.put(entry)

    def _forward_batch(self, batch: list[SpoolEntry]) -> list[SpoolEntry]:
        """Store ``batch`` in the archive; returns the entries to retry later."""
        members: list[tuple[SpoolEntry, bytes]] = []
        for entry in batch:
            try:
                members.append((entry, entry.read_dicom()))
            except FileNotFoundError:
                continue  # already forwarded and removed (a duplicate queue entry)
        if not members:
            return []
        outcomes = self._archive.store_instances([dicom for _, dicom in members])
        retry: list[SpoolEntry] = []
        for (entry, dicom), outcome in zip(members, outcomes, strict=True):
            if isinstance(outcome, StoredInstance):
                self._orthanc_ok()
                self._confirmed(entry, outcome)
            elif isinstance(outcome, ArchiveUnavailableError):
                unreachable = outcome.status_code is None
                metrics.FORWARD_RESULTS.labels(
                    "unreachable" if unreachable else "orthanc_error"
                ).inc()
                self._orthanc_failed(
                    outcome.reason if unreachable else f"HTTP {outcome.status_code}"
                )
                retry.append(entry)
            else:
                metrics.FORWARD_RESULTS.labels("refused").inc()
                self._refused(entry, dicom, _refusal(outcome))
        return retry

    def _confirmed(self, entry: SpoolEntry, receipt: StoredInstance) -> None:
        already = receipt.already_stored
        metrics.FORWARD_RESULTS.labels("already_stored" if already else "stored").inc()
        latency = (dt.datetime.now(dt.UTC) - entry.received_at).total_seconds()
        metrics.FORWARD_LATENCY.observe(max(0.0, latency))
        self._spool.remove(entry)

    def _refused(self, entry: SpoolEntry, dicom: bytes, reason: str) -> None:
        logger.error("Orthanc refused %s: %s", entry.info.sop_instance_uid, reason)
        self._quarantine.add(
            dicom,
            reason=f"Orthanc refused the instance: {reason}",
            error="OrthancRefused",
            source="forward",
            sender_ae_title=entry.sender_ae_title,
            hospital=entry.hospital,
        )
        self._spool.remove(entry)
