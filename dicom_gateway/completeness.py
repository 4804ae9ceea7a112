"""Study completeness: when is a study ready, and the one durable event that says so.

The tracker keeps one ``studies`` row per StudyInstanceUID in the application database (so its
state survives restarts, unlike Orthanc's in-memory stable-study timer). A study becomes ready
when no new instance arrived for ``stable_seconds`` *and* none of its instances is still in the
spool, i.e. all it has are in Orthanc. Then, in one transaction, the row turns ``ready`` and an
outbox event is written: ``study.ready`` the first time, ``study.updated`` when new instances
arrived after an earlier event. The state change is a compare-and-set on the row's
``last_received_at``, so an instance recorded meanwhile keeps the study open.

The event's topics and payload are the core's outbox contract (:mod:`core.events`: one builder
for the gateway and serving's reprocess); its series list is read from the image archive.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select, update

from core.archive import ArchiveError, ArchiveId, ImageArchive
from core.db import Database
from core.db.models import Hospital, OutboxEvent, Study, StudyState, utcnow
from core.events import STUDY_READY, STUDY_UPDATED, study_payload, study_series
from core.tenancy import hospital_row
from dicom_gateway import metrics
from dicom_gateway.forwarder import Confirmation

__all__ = ["STUDY_READY", "STUDY_UPDATED", "StudyTracker"]

logger = logging.getLogger(__name__)

_CHECK_INTERVAL_S = 1.0


def _merge_modalities(current: str | None, modality: str | None) -> str | None:
    values = set(filter(None, (current or "").split("\\")))
    if modality:
        values.add(modality)
    return "\\".join(sorted(values)) or None


class StudyTracker:
    """Records what reached Orthanc and announces complete studies.

    Parameters
    ----------
    db
        The application database (``studies``, ``hospitals``, ``outbox_events``).
    archive
        The image archive: source of the series list and counts in each event.
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
    ) -> None:
        self._db = db
        self._archive = archive
        self._stable = dt.timedelta(seconds=stable_seconds)
        self._pending = pending_studies
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- recording ---------------------------------------------------------------------------

    def record(self, confirmations: Sequence[Confirmation]) -> None:
        """Record instances Orthanc confirmed: one transaction, one row update per study."""
        by_study: dict[str, list[Confirmation]] = {}
        for confirmation in confirmations:
            by_study.setdefault(confirmation.entry.info.study_instance_uid, []).append(confirmation)
        with self._db.session() as session:
            rows = {
                study.study_instance_uid: study
                for study in session.scalars(
                    select(Study).where(Study.study_instance_uid.in_(list(by_study)))
                )
            }
            for uid, group in by_study.items():
                self._record_study(session, rows.get(uid), group)

    def _record_study(self, session: Any, study: Study | None, group: list[Confirmation]) -> None:
        """Fill in the study's row. Its owner was decided before the instances were spooled
        (:mod:`dicom_gateway.ownership` claimed the row): it is never changed here, nor is the
        archive's study the row points at. A row is created here only for instances that
        bypassed the intake (released from quarantine by an operator, spooled before owners
        were recorded): with the owner their spool entry names."""
        first = group[0].entry
        if study is None:
            hospital = next((c.entry.hospital for c in group if c.entry.hospital), None)
            study = Study(
                study_instance_uid=first.info.study_instance_uid,
                hospital_id=hospital_row(session, hospital).id if hospital else None,
                first_received_at=min(c.entry.received_at for c in group),
                last_received_at=first.received_at,
                instance_count=0,
                state=StudyState.RECEIVING,
            )
            session.add(study)
        info = first.info
        archive_ids = {c.orthanc_study_id for c in group}
        if study.orthanc_id is None:
            study.orthanc_id = group[0].orthanc_study_id
        if archive_ids - {study.orthanc_id}:
            # The archive filed some instances under another study (another patient with the
            # same Study Instance UID, released from quarantine by an operator): the row keeps
            # pointing at the study it tracks.
            logger.warning(
                "study %s: %d instance(s) filed by the archive under another study than %s",
                study.study_instance_uid,
                sum(c.orthanc_study_id != study.orthanc_id for c in group),
                study.orthanc_id,
            )
        study.patient_id = study.patient_id or info.patient_id
        study.patient_name = study.patient_name or info.patient_name
        study.accession_number = study.accession_number or info.accession_number
        study.study_date = study.study_date or info.study_date
        study.study_description = study.study_description or info.study_description
        modalities = study.modalities
        for confirmation in group:
            modalities = _merge_modalities(modalities, confirmation.entry.info.modality)
        study.modalities = modalities
        new = [c for c in group if not c.already_stored]
        if not new and study.state is StudyState.READY:
            return  # duplicates of what was announced: nothing new
        study.instance_count += len(new)
        latest = max(c.entry.received_at for c in group)
        study.last_received_at = max(study.last_received_at, latest)
        study.state = StudyState.RECEIVING

    # -- announcing --------------------------------------------------------------------------

    def check(self, now: dt.datetime | None = None) -> list[str]:
        """Announce every study that is now complete; returns their UIDs."""
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
        if not candidates:
            return []
        pending = self._pending()
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
        """Check for complete studies every second in a background thread."""
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
