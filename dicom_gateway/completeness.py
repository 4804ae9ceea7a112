"""Study completeness: when is a study ready, and the one durable event that says so.

The tracker follows the image archive's persistent change feed (Orthanc's ``/changes``, through
:meth:`~core.archive.ImageArchive.changes`), so instances stored by any path count: the
gateway's forwarder (DIMSE and STOW-RS through the spool), Orthanc's own DICOM server, anything
else that stores into the archive. Its position in the feed is kept in the application database
(``change_cursors``), written in the same transaction as the ``studies`` rows the changes it
covers updated: a crash (SIGKILL of the gateway, Orthanc restarted) replays the feed from the
last committed position, and nothing is counted twice. Orthanc's own stable-study timer and
on-change callback are in memory and not replayed after a restart, so the tracker decides
stability itself.

A study becomes ready when no new instance arrived for ``stable_seconds`` *and* none of its
instances is still in the spool, and the feed was read to its end just before deciding (the
spool is looked at first: an instance that leaves it for the archive is then in the feed).
Then, in one transaction, the row turns ``ready`` and an outbox event is written:
``study.ready`` the first time, ``study.updated`` when new instances arrived after an earlier
event. The state change is a compare-and-set on the row's ``last_received_at``, so an instance
recorded meanwhile keeps the study open.

What counts as an arrival:

- a new instance of a study with a ``studies`` row (claimed by :mod:`dicom_gateway.ownership`
  when its first instance came in): the row is filled in (archive key, accession number, date,
  description, modalities), counted and kept open;
- a study without a row was stored by another path (an operator's upload to Orthanc, a tool):
  no hospital owns it, so no row is made for it and no event is written (a consumer would not
  know whose it is); it is logged once and counted
  (``radcloud_gateway_instances_untracked_total{reason="unclaimed"}``). Should a hospital send
  the same study later, the claim makes its row and the next instance announces it whole;
- instances of series radcloud writes itself (AI results, reports:
  :func:`core.events.is_derived_series`) are no arrival (``reason="derived"``);
- an instance the archive filed under another study than the row tracks (another patient with
  the same Study Instance UID) does not change the row (logged).

With several archive nodes (``RADCLOUD_ORTHANC_NODES``) the feed has several writers, and a
change numbered lower can commit after a higher one was read (PostgreSQL hands out the numbers
when the transactions write, not when they commit). With ``settle_s`` the tracker reads only to
the first hole in the numbering and waits up to ``settle_s`` for it to fill; a hole still open
then is taken for numbers of transactions that rolled back (a serialization failure Orthanc
replayed) and passed over.

The event's topics and payload are the core's outbox contract (:mod:`core.events`: one builder
for the gateway and serving's reprocess); its series list is read from the image archive.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.archive import ArchiveError, ArchiveId, Change, ImageArchive
from core.db import Database
from core.db.models import ChangeCursor, Hospital, OutboxEvent, Study, StudyState, utcnow
from core.events import STUDY_READY, STUDY_UPDATED, study_payload, study_series
from dicom_gateway import metrics
from dicom_gateway._changes import Arrivals, InstanceResolver, Resolved
from dicom_gateway.exceptions import GatewayError

__all__ = ["CURSOR_NAME", "NEW_INSTANCE", "STUDY_READY", "STUDY_UPDATED", "StudyTracker"]

logger = logging.getLogger(__name__)

_CHECK_INTERVAL_S = 1.0
_PAGE = 1000  # changes asked for per request (Orthanc answers at most its own maximum)
_UNCLAIMED_LOGGED = 1000
CURSOR_NAME = "study_completeness"
NEW_INSTANCE = "NewInstance"
"""The change type of a stored instance in the archive's feed (Orthanc's word)."""


def _merge_modalities(current: str | None, modalities: set[str]) -> str | None:
    values = set(filter(None, (current or "").split("\\"))) | modalities
    return "\\".join(sorted(values)) or None


class StudyTracker:
    """Follows the archive's change feed and announces complete studies.

    Parameters
    ----------
    db
        The application database (``studies``, ``hospitals``, ``outbox_events``,
        ``change_cursors``).
    archive
        The image archive: its change feed, and the series list and counts of each event.
    stable_seconds
        Quiet time after the last instance before a study is ready.
    pending_studies
        Returns the study UIDs that still have instances in the spool.
    """

    def __init__(
        self,
        db: Database,
        archive: ImageArchive,
        stable_seconds: float,
        pending_studies: Callable[[], set[str]],
        *,
        settle_s: float = 0.0,
    ) -> None:
        self._db = db
        self._settle_s = settle_s
        self._holes: dict[int, float] = {}  # first missing number -> when it was first seen
        self._archive = archive
        self._stable = dt.timedelta(seconds=stable_seconds)
        self._pending = pending_studies
        self._resolver = InstanceResolver(archive)
        self._unclaimed: OrderedDict[str, None] = OrderedDict()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- following the change feed -----------------------------------------------------------

    def expect(self, instances: Iterable[tuple[ArchiveId, ArchiveId]]) -> None:
        """Note ``(instance, series)`` archive keys this process just stored, so that the feed's
        mention of them costs no read (:meth:`InstanceResolver.expect`; thread-safe)."""
        self._resolver.expect(instances)

    def follow(self) -> int:
        """Read the change feed to its end, recording new instances; returns how many changes
        were read.

        Raises
        ------
        ArchiveError
            The archive cannot answer now; what was recorded stays, the rest is read later.
        """
        position = self._position()
        read = 0
        while True:
            feed = self._archive.changes(since=position, limit=_PAGE)
            if not feed.changes:
                if feed.last < position:  # the archive's feed restarted (a new database)
                    logger.warning(
                        "the archive's change feed ends at %d, before this tracker's position "
                        "%d: a new archive database? following it from its end",
                        feed.last,
                        position,
                    )
                    self._commit(Resolved(), position, feed.last)
                return read
            changes, held = self._settled(position, feed.changes)
            if changes:
                new = [c.archive_id for c in changes if c.change_type == NEW_INSTANCE]
                resolved = self._resolver.resolve(new)
                seqs = [c.seq for c in changes]
                last = max(seqs) if held else max(feed.last, *seqs)
                self._commit(resolved, position, last)
                read += len(changes)
                position = last
            if held or feed.done:
                return read

    def _settled(self, position: int, changes: Sequence[Change]) -> tuple[list[Change], bool]:
        """The changes to take now, and whether a hole in the numbering holds back the rest
        (module docstring: several writers; without ``settle_s``, all of them)."""
        if self._settle_s <= 0:
            return list(changes), False
        now = time.monotonic()
        taken: list[Change] = []
        expected = position + 1
        for change in sorted(changes, key=lambda c: c.seq):
            if change.seq > expected:
                seen = self._holes.setdefault(expected, now)
                if now - seen < self._settle_s:
                    return taken, True
                logger.debug("changes %d-%d never came: rolled back", expected, change.seq - 1)
            taken.append(change)
            expected = change.seq + 1
        self._holes = {seq: at for seq, at in self._holes.items() if seq >= expected}
        return taken, False

    def _position(self) -> int:
        """The committed position; the first time, the feed's newest (the past is not
        replayed: see migration 0013)."""
        with self._db.session() as session:
            cursor = session.get(ChangeCursor, CURSOR_NAME)
            if cursor is not None:
                return cursor.position
        latest = self._archive.latest_change()
        with self._db.write_session() as session:
            if session.get(ChangeCursor, CURSOR_NAME) is None:
                session.add(ChangeCursor(name=CURSOR_NAME, position=latest))
                logger.info("following the archive's change feed from position %d", latest)
                return latest
        return self._position()

    def _commit(self, resolved: Resolved, position: int, last: int) -> None:
        """Record ``resolved`` and move the cursor from ``position`` to ``last``, in one
        transaction (compare-and-set: a second follower's move fails this one)."""
        now = utcnow()
        with self._db.session() as session:
            moved = session.execute(
                update(ChangeCursor)
                .where(ChangeCursor.name == CURSOR_NAME, ChangeCursor.position == position)
                .values(position=last, updated_at=now)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                raise GatewayError(
                    f"the change cursor moved from {position} meanwhile: is a second gateway "
                    "following the same archive?"
                )
            if resolved.arrivals:
                self._record(session, resolved.arrivals, now)
        metrics.CHANGE_FEED_POSITION.set(last)
        if resolved.derived:
            metrics.INSTANCES_UNTRACKED.labels("derived").inc(resolved.derived)

    def _record(self, session: Session, arrivals: dict[str, Arrivals], now: dt.datetime) -> None:
        rows = {
            study.study_instance_uid: study
            for study in session.scalars(
                select(Study).where(Study.study_instance_uid.in_(list(arrivals)))
            )
        }
        for uid, group in arrivals.items():
            study = rows.get(uid)
            if study is None:
                self._untracked(uid, group)
            else:
                self._record_study(study, group, now)

    def _untracked(self, uid: str, group: Arrivals) -> None:
        metrics.INSTANCES_UNTRACKED.labels("unclaimed").inc(group.instances)
        if uid in self._unclaimed:
            return
        self._unclaimed[uid] = None
        if len(self._unclaimed) > _UNCLAIMED_LOGGED:
            self._unclaimed.popitem(last=False)
        logger.info(
            "study %s (archive %s) was stored by another path than radcloud's ingest: no "
            "hospital owns it, no study event",
            uid,
            group.study.archive_id,
        )

    @staticmethod
    def _record_study(study: Study, group: Arrivals, now: dt.datetime) -> None:
        """Fill in the study's row. Its owner was decided before the instances were stored
        (:mod:`dicom_gateway.ownership` claimed the row): it is never changed here."""
        archive_id = group.study.archive_id
        if study.orthanc_id is None:
            study.orthanc_id = archive_id
        elif study.orthanc_id != archive_id:
            # another patient with the same Study Instance UID (released from quarantine by an
            # operator, or stored by another path): the row keeps the study it tracks
            logger.warning(
                "study %s: %d instance(s) filed by the archive under another study than %s",
                study.study_instance_uid,
                group.instances,
                study.orthanc_id,
            )
            return
        tags = group.study.attributes
        study.patient_id = study.patient_id or tags.get("PatientID")
        study.patient_name = study.patient_name or tags.get("PatientName")
        study.accession_number = study.accession_number or tags.get("AccessionNumber") or None
        study.study_date = study.study_date or tags.get("StudyDate") or None
        study.study_description = study.study_description or tags.get("StudyDescription") or None
        study.modalities = _merge_modalities(study.modalities, group.modalities)
        study.instance_count += group.instances
        study.last_received_at = max(study.last_received_at, now)
        study.state = StudyState.RECEIVING

    # -- announcing --------------------------------------------------------------------------

    def check(self, now: dt.datetime | None = None) -> list[str]:
        """Read the change feed, then announce every study that is now complete; returns their
        UIDs (none while the feed cannot be read to its end: a study is never declared
        complete on a stale view)."""
        pending = self._pending()  # first: what leaves the spool now is in the feed below
        try:
            self.follow()
        except ArchiveError as exc:
            logger.warning("cannot read the archive's change feed (%s); retrying", exc)
            return []
        cutoff = (now or utcnow()) - self._stable
        with self._db.session() as session:
            candidates = [
                (study.id, study.study_instance_uid, study.orthanc_id, study.last_received_at)
                for study in session.scalars(
                    select(Study).where(
                        Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff
                    )
                )
            ]
        announced = []
        for study_id, uid, orthanc_id, last_received_at in candidates:
            if uid in pending or orthanc_id is None:
                continue
            try:
                series = study_series(self._archive, ArchiveId(orthanc_id))
            except ArchiveError as exc:
                logger.warning(
                    "cannot read study %s from the archive (%s); retrying later", uid, exc
                )
                continue
            if self._announce(study_id, last_received_at, orthanc_id, series):
                announced.append(uid)
        return announced

    def _announce(
        self,
        study_id: int,
        last_received_at: dt.datetime,
        orthanc_id: str,
        series: list[dict[str, Any]],
    ) -> bool:
        ready_at = utcnow()
        with self._db.session() as session:
            changed = session.execute(
                update(Study)
                .where(
                    Study.id == study_id,
                    Study.state == StudyState.RECEIVING,
                    Study.last_received_at == last_received_at,
                )
                .values(state=StudyState.READY)
            )
            if changed.rowcount != 1:  # type: ignore[attr-defined]
                return False  # a new instance arrived meanwhile: not complete yet
            study = session.get(Study, study_id)
            assert study is not None  # noqa: S101 - just updated
            topic = (STUDY_UPDATED if study.ready_at is not None else STUDY_READY).value
            study.ready_at = ready_at
            hospital = session.get(Hospital, study.hospital_id) if study.hospital_id else None
            payload = study_payload(
                study_instance_uid=study.study_instance_uid,
                hospital=hospital.name if hospital else None,
                study_archive_id=ArchiveId(orthanc_id),
                series=series,
                first_received_at=study.first_received_at,
                last_received_at=study.last_received_at,
                ready_at=ready_at,
            )
            session.add(OutboxEvent(topic=topic, key=study.study_instance_uid, payload=payload))
        metrics.STUDIES_READY.labels(topic).inc()
        logger.info("%s %s (%d series)", topic, payload["study_instance_uid"], len(series))
        return True

    # -- background loop ---------------------------------------------------------------------

    def start(self) -> None:
        """Follow the feed and check for complete studies every second in a background thread
        (the first position is taken now if the archive answers, so that nothing stored after
        the gateway started is missed)."""
        try:
            self._position()
        except ArchiveError as exc:
            logger.warning("the archive's change feed is not readable yet (%s)", exc)
        self._thread = threading.Thread(target=self._loop, name="gateway-tracker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(_CHECK_INTERVAL_S):
            try:
                self.check()
            except Exception:
                logger.exception("study completeness check failed; retrying")
