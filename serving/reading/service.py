"""The reading app's domain service: open a study, read an AI mask, sign the report, amend it.

Every study opened, mask read, report signed and report amended (or refused) is audited here
(110110 Patient Record: read, read, create, create), whichever door the call came through. Each
first checks that the study is of the caller's hospitals
(:func:`serving._scope.require_study_in_scope`), before the image archive is asked anything: a
study of another hospital is not found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from core.archive import ImageArchive
from core.audit import AuditAction, AuditOutcome, AuditTrail
from core.db import Database
from core.identity import PatientIdentity
from core.security import Actor
from serving._audit import record_study, study_patient_ids
from serving._scope import require_study_in_scope
from serving.exceptions import (
    NotClaimantError,
    PlatformUnavailableError,
    SignError,
    WorklistConflictError,
)
from serving.reading._archive import ReadingArchive, archive_errors
from serving.reading.amending import AmendOutcome, amend_report
from serving.reading.labels import AddedFinding, Decision
from serving.reading.manifest import Manifest, build_manifest
from serving.reading.masks import FindingMask, finding_mask
from serving.reading.signing import SignOutcome, sign_report

__all__ = ["ReadingService"]

_REFUSALS = (SignError, WorklistConflictError, NotClaimantError, PlatformUnavailableError)


class ReadingService:
    """The reading app's view of studies in the image archive and the database.

    The image archive not answering, or failing, is a
    :class:`~serving.exceptions.PlatformUnavailableError` from every method.

    Parameters
    ----------
    db, audit
        The application database and audit trail.
    archive
        The image archive.
    site_name
        The organisation that verifies signed reports.
    """

    def __init__(
        self, db: Database, audit: AuditTrail, archive: ImageArchive, site_name: str
    ) -> None:
        self._db = db
        self._audit = audit
        self._archive = ReadingArchive(archive)
        self._site = site_name

    def manifest(self, study_instance_uid: str, *, caller: Actor) -> Manifest:
        """The study's series, AI findings, reading state and report
        (:func:`~serving.reading.manifest.build_manifest`), with the study's patient key
        (:meth:`core.identity.PatientIdentity.patient_of_study`; ``None`` when the study has no
        Patient ID), with which the viewer asks for the patient's priors at other hospitals."""
        require_study_in_scope(self._db, self._audit, study_instance_uid, caller=caller)
        with archive_errors():
            manifest = build_manifest(self._db, self._archive, study_instance_uid)
        patient_key = PatientIdentity(self._db, self._audit).patient_of_study(study_instance_uid)
        manifest = dataclasses.replace(manifest, patient_key=patient_key)
        self._record(
            caller,
            study_instance_uid,
            AuditAction.READ,
            "study opened for reading",
            patient_id=manifest.patient_id,
            series=len(manifest.series),
            findings=len(manifest.findings),
        )
        return manifest

    def mask(self, study_instance_uid: str, result_id: int, *, caller: Actor) -> FindingMask:
        """The SEG of ``result_id`` as bit-packed frames
        (:func:`~serving.reading.masks.finding_mask`)."""
        require_study_in_scope(self._db, self._audit, study_instance_uid, caller=caller)
        with archive_errors():
            mask = finding_mask(self._db, self._archive, study_instance_uid, result_id)
        self._record(
            caller,
            study_instance_uid,
            AuditAction.READ,
            "AI segmentation",
            patient_id=study_patient_ids(self._db, [study_instance_uid])[study_instance_uid],
            result_id=result_id,
            frames=len(mask.frames),
        )
        return mask

    def sign(
        self,
        study_instance_uid: str,
        *,
        caller: Actor,
        version: int,
        text: str,
        decisions: Sequence[Decision],
        added: Sequence[AddedFinding] = (),
    ) -> SignOutcome:
        """Sign, as ``caller``, the report of a study the caller holds
        (:func:`~serving.reading.signing.sign_report`)."""
        with self._report_act(caller, study_instance_uid, "report signing"):
            outcome = sign_report(
                self._db,
                self._archive,
                study_instance_uid,
                site_name=self._site,
                author=caller.name,
                version=version,
                text=text,
                decisions=decisions,
                added=added,
            )
        self._record(
            caller,
            study_instance_uid,
            AuditAction.CREATE,
            "report signed",
            patient_id=outcome.state.patient_id,
            sr_sop_instance_uid=outcome.sr_sop_instance_uid,
            labels=outcome.labels,
        )
        return outcome

    def amend(self, study_instance_uid: str, *, caller: Actor, text: str) -> AmendOutcome:
        """Amend, as ``caller``, the signed report of a reported study with a new SR that
        references it (:func:`~serving.reading.amending.amend_report`)."""
        with self._report_act(caller, study_instance_uid, "report amendment"):
            outcome = amend_report(
                self._db,
                self._archive,
                study_instance_uid,
                site_name=self._site,
                author=caller.name,
                text=text,
            )
        self._record(
            caller,
            study_instance_uid,
            AuditAction.CREATE,
            "report amended",
            patient_id=outcome.patient_id,
            sr_sop_instance_uid=outcome.sr_sop_instance_uid,
            amends_sr_sop_instance_uid=outcome.amends_sr_sop_instance_uid,
        )
        return outcome

    @contextmanager
    def _report_act(self, caller: Actor, uid: str, act: str) -> Iterator[None]:
        """Run a report act on a study of the caller's hospitals: the archive's errors
        translated, a refusal audited as ``"<act> refused"`` before it propagates."""
        require_study_in_scope(self._db, self._audit, uid, caller=caller)
        try:
            with archive_errors():
                yield
        except _REFUSALS as exc:
            self._record(
                caller,
                uid,
                AuditAction.CREATE,
                f"{act} refused",
                outcome=AuditOutcome.MINOR_FAILURE,
                reason=str(exc),
            )
            raise

    def _record(
        self,
        caller: Actor,
        uid: str,
        action: AuditAction,
        what: str,
        *,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        patient_id: str | None = None,
        **detail: Any,
    ) -> None:
        record_study(
            self._audit,
            caller,
            uid,
            action,
            patient_id=patient_id,
            detail={"what": what, **detail},
            outcome=outcome,
        )
