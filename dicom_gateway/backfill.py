"""Back-filling the patient identity cross-reference for studies stored before it existed.

Migration 0008 created the cross-reference (:mod:`core.identity`) empty: the gateway registers
the identifiers of each study it claims from then on (:mod:`dicom_gateway.ownership`), and a
study stored before has none, so federated search and treatment tokens do not find it.
:class:`IdentityBackfill` reads one instance of each such study from the image archive (the
archive seam, :class:`core.archive.ImageArchive`), parses it as the gateway parses what it
receives (:func:`~dicom_gateway.validation.inspect_instance`) and registers its identifiers as
a claim does (:func:`~dicom_gateway.ownership.register_identifiers`: PatientID within
IssuerOfPatientID, each item of OtherPatientIDsSequence as the owner's assertion, retracted
assertions withheld).

Which studies: those with an owner and a Patient ID whose owner holds no identifier of that
Patient ID with the issuer the study recorded (with any issuer, where the study recorded none:
rows from before migration 0007 did not record it). So a second run finds nothing to do. A
study is skipped, and reported, when the archive has no readable instance of it, or when its
instance names another patient than the study recorded (the ownership check's
:meth:`~dicom_gateway.ownership.PatientIdentity.differences`).

The run is audited once (110110 Patient Record; action C, or R for a dry run, which registers
nothing) with its counts and the skipped studies; patient IDs appear nowhere in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import exists, func, or_, select

from core.archive import ArchiveError as ArchiveSeamError
from core.archive import ImageArchive
from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.db import Database, write_transaction
from core.db.models import Hospital, PatientIdentifierEntry, Study
from core.identity import PatientIdentifier, Registered
from core.security import Actor
from dicom_gateway.exceptions import InstanceRejectedError
from dicom_gateway.ownership import CLAIM_LOCK_KEY, PatientIdentity, register_identifiers
from dicom_gateway.validation import InstanceInfo, inspect_instance

__all__ = ["BackfillReport", "IdentityBackfill", "SkippedStudy", "StudyToFill"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyToFill:
    """A study whose patient has no identifier in the cross-reference: its owner and the
    identity it recorded."""

    study_instance_uid: str
    hospital: str
    identity: PatientIdentity


@dataclass(frozen=True)
class SkippedStudy:
    """A study the back-fill could not register, and why (no patient data in ``reason``)."""

    study_instance_uid: str
    reason: str


@dataclass
class BackfillReport:
    """What a back-fill run did (or, in a dry run, would do)."""

    dry_run: bool
    pending: int = 0  # studies without identifiers when the run began
    registered: int = 0  # studies whose identifiers were registered
    new_identifiers: set[PatientIdentifier] = field(default_factory=set)
    withheld_links: int = 0  # asserted links a retraction withheld
    skipped: list[SkippedStudy] = field(default_factory=list)
    without_owner: int = 0  # left out: no owning hospital to register them under
    without_patient_id: int = 0  # left out: nothing to register

    def counts(self) -> dict[str, int | bool]:
        """The counts, for the audit record and the command line."""
        return {
            "dry_run": self.dry_run,
            "pending": self.pending,
            "registered": self.registered,
            "identifiers": len(self.new_identifiers),
            "withheld_links": self.withheld_links,
            "skipped": len(self.skipped),
            "without_owner": self.without_owner,
            "without_patient_id": self.without_patient_id,
        }


class _DryRun(Exception):  # noqa: N818 - control flow, not an error: rolls the registration back
    def __init__(self, done: Registered) -> None:
        self.done = done


class IdentityBackfill:
    """Registers the identifiers of studies stored before the cross-reference existed.

    Parameters
    ----------
    db
        The application database.
    audit
        The audit trail.
    archive
        The image archive holding the studies.
    """

    def __init__(self, db: Database, audit: AuditTrail, archive: ImageArchive) -> None:
        self._db = db
        self._audit = audit
        self._archive = archive

    def pending(self) -> list[StudyToFill]:
        """Studies with an owner and a Patient ID and no identifier of it registered, oldest
        first (see the module docstring)."""
        registered = exists().where(
            PatientIdentifierEntry.hospital_id == Study.hospital_id,
            PatientIdentifierEntry.patient_id == Study.patient_id,
            or_(
                Study.issuer_of_patient_id.is_(None),
                PatientIdentifierEntry.issuer_of_patient_id == Study.issuer_of_patient_id,
            ),
        )
        query = (
            select(Study, Hospital.name)
            .join(Hospital, Study.hospital_id == Hospital.id)
            .where(Study.patient_id.is_not(None), Study.patient_id != "", ~registered)
            .order_by(Study.id)
        )
        with self._db.session() as session:
            return [
                StudyToFill(study.study_instance_uid, hospital, PatientIdentity.of_study(study))
                for study, hospital in session.execute(query)
            ]

    def run(
        self,
        studies: Sequence[StudyToFill],
        *,
        actor: Actor,
        dry_run: bool = False,
        on_study: Callable[[StudyToFill], None] | None = None,
    ) -> BackfillReport:
        """Register the identifiers of ``studies`` (from :meth:`pending`); audited once.

        Parameters
        ----------
        studies
            The studies to fill.
        actor
            Who runs it (the audit record's active participant).
        dry_run
            Read and count, register nothing.
        on_study
            Called after each study (progress).

        Returns
        -------
        BackfillReport
            The counts, and each study skipped with the reason. A study that cannot be read is
            skipped, never fatal.
        """
        report = BackfillReport(dry_run, pending=len(studies))
        report.without_owner, report.without_patient_id = self._left_out()
        outcome = AuditOutcome.SERIOUS_FAILURE
        try:
            for study in studies:
                self._fill(study, report)
                if on_study is not None:
                    on_study(study)
            outcome = AuditOutcome.SUCCESS
        finally:
            self._audit.record(
                AuditEventCode.PATIENT_RECORD,
                actor=actor,
                action=AuditAction.READ if dry_run else AuditAction.CREATE,
                outcome=outcome,
                resource_type="patient",
                detail={
                    "change": "identifiers back-filled",
                    **report.counts(),
                    "skipped_studies": [
                        {"study_instance_uid": s.study_instance_uid, "reason": s.reason}
                        for s in report.skipped
                    ],
                },
            )
        return report

    def _fill(self, study: StudyToFill, report: BackfillReport) -> None:
        uid = study.study_instance_uid
        info = self._read(uid, report)
        if info is None:
            return
        differences = study.identity.differences(PatientIdentity.of_instance(info))
        if differences:
            report.skipped.append(
                SkippedStudy(uid, f"its instance names another patient ({', '.join(differences)})")
            )
            return
        try:
            with write_transaction(self._db, CLAIM_LOCK_KEY) as session:
                done = register_identifiers(session, study.hospital, info)
                if report.dry_run:
                    raise _DryRun(done)
        except _DryRun as rolled_back:
            done = rolled_back.done
        report.registered += 1
        report.new_identifiers.update(done.created)  # a dry run sees one twice: counted once
        report.withheld_links += len(done.withheld)
        logger.info("study %s: %d new identifiers", uid, len(done.created))

    def _read(self, uid: str, report: BackfillReport) -> InstanceInfo | None:
        """One instance of the study as the gateway reads what it receives; ``None`` (and the
        study reported as skipped) when there is none or it cannot be read."""
        try:
            found = self._archive.search_for_instances({"StudyInstanceUID": uid}, limit=1)
            if not found:
                report.skipped.append(SkippedStudy(uid, "the archive holds no instance of it"))
                return None
            info, _ = inspect_instance(self._archive.retrieve_instance(found[0].archive_id))
        except ArchiveSeamError as exc:
            report.skipped.append(SkippedStudy(uid, f"the archive did not give an instance: {exc}"))
            return None
        except InstanceRejectedError as exc:
            report.skipped.append(SkippedStudy(uid, f"its instance cannot be read: {exc.reason}"))
            return None
        if info.study_instance_uid != uid:
            report.skipped.append(SkippedStudy(uid, "the archive answered another study"))
            return None
        return info

    def _left_out(self) -> tuple[int, int]:
        """Studies without an owner, and owned studies without a Patient ID."""
        with self._db.session() as session:
            no_owner = session.scalar(
                select(func.count()).select_from(Study).where(Study.hospital_id.is_(None))
            )
            no_patient = session.scalar(
                select(func.count())
                .select_from(Study)
                .where(
                    Study.hospital_id.is_not(None),
                    or_(Study.patient_id.is_(None), Study.patient_id == ""),
                )
            )
        return int(no_owner or 0), int(no_patient or 0)
