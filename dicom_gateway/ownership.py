"""Which hospital owns a study, decided once per instance before it is spooled or acknowledged.

Every study has exactly one owner from its first instance on: the DIMSE sender's hospital, or
the STOW-RS API key's. The first instance of a Study Instance UID *claims* it: the ``studies``
row is inserted with the owner and the patient identity that instance carries (Patient ID,
Issuer of Patient ID, Patient's Name, Patient's Birth Date). The claim is one transaction
holding the write lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock) that looks
again and inserts, with the table's unique UID as a backstop: of two hospitals racing on one
UID, one wins and the other finds the winner's row.

A later instance *joins* the study only when it comes from the owner and carries the same
patient identity as the study recorded (Patient ID always; the issuer, name and birth date
where the study recorded one). Otherwise it never joins (PS3.4 and PS3.3 make a
Study Instance UID globally unique; a reused or forged one, or a misfiled patient, must not
mingle two hospitals' or two patients' images): :class:`StudyCollisionError` is raised, the
intake quarantines the instance with the reason, the protocol edges answer a failure
(C-STORE 0xC409, STOW-RS Failure Reason 0xC409) and a Security Alert (110113) is audited.

A study without an owner (stored before ownership was recorded) takes no instance either,
until an operator gives it one (``radcloud studies assign-owner``).

Claiming a study also records its patient's identifiers in the cross-reference of
:mod:`core.identity` (PatientID within IssuerOfPatientID, and each item of
OtherPatientIDsSequence with its issuer, as the sending hospital's), in the claim's
transaction: a study is never held without its patient's identifiers. New identifiers are
audited as 110110 Patient Record (C) once the claim is committed.

An owner never changes here nor anywhere in the gateway (the completeness tracker only fills
in a row claimed here); decisions already taken are cached, so a study's later instances cost
no database round trip.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.db import Database, write_transaction
from core.db.models import Hospital, Study, StudyState
from core.identity import PatientIdentity as CrossReference
from core.identity import Registered, register_in
from core.tenancy import hospital_row
from dicom_gateway.exceptions import StudyCollisionError
from dicom_gateway.validation import InstanceInfo

__all__ = ["CLAIM_LOCK_KEY", "PatientIdentity", "StudyOwnership", "register_identifiers"]

logger = logging.getLogger(__name__)

_CACHE_SIZE = 10_000
CLAIM_LOCK_KEY = 0x52434C4D  # "RCLM": PostgreSQL advisory lock serialising claims


def register_identifiers(session: Session, hospital: str, info: InstanceInfo) -> Registered:
    """Record the patient identifiers an instance of ``hospital`` carries in ``session`` (a
    claim's transaction, or a back-fill's, :mod:`dicom_gateway.backfill`): PatientID within
    IssuerOfPatientID, and each item of OtherPatientIDsSequence as the hospital's assertion
    that it is the same patient (:func:`core.identity.register_in`)."""
    return register_in(
        session, hospital, info.patient_id, info.issuer_of_patient_id, info.other_patient_ids
    )


@dataclass(frozen=True)
class PatientIdentity:
    """The patient a study belongs to, as its first instance named them (PS3.3 C.7.1.1)."""

    patient_id: str | None
    issuer_of_patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None

    @classmethod
    def of_instance(cls, info: InstanceInfo) -> PatientIdentity:
        """The identity an instance carries."""
        return cls(
            info.patient_id,
            info.issuer_of_patient_id,
            info.patient_name,
            info.patient_birth_date,
        )

    @classmethod
    def of_study(cls, study: Study) -> PatientIdentity:
        """The identity a study recorded."""
        return cls(
            study.patient_id,
            study.issuer_of_patient_id,
            study.patient_name,
            study.patient_birth_date,
        )

    def differences(self, other: PatientIdentity) -> list[str]:
        """The attributes in which ``other`` (an instance's) disagrees with this identity (the
        study's): Patient ID always, the others where the study recorded a value (a study
        recorded before migration 0007 has no issuer or birth date). Names only: the reason
        is logged and kept with the quarantined instance, values are patient data."""
        names = {
            "patient_id": "(0010,0020) PatientID",
            "issuer_of_patient_id": "(0010,0021) IssuerOfPatientID",
            "patient_name": "(0010,0010) PatientName",
            "patient_birth_date": "(0010,0030) PatientBirthDate",
        }
        return [
            label
            for field_name, label in names.items()
            if (field_name == "patient_id" or getattr(self, field_name) is not None)
            and (getattr(self, field_name) or "") != (getattr(other, field_name) or "")
        ]


class StudyOwnership:
    """Claims studies for their first sender's hospital and refuses instances that collide.

    Parameters
    ----------
    db
        The application database (``studies``, ``hospitals``).
    audit
        Where collisions are recorded (110113 Security Alert).
    """

    def __init__(self, db: Database, audit: AuditTrail) -> None:
        self._db = db
        self._audit = audit
        self._xref = CrossReference(db, audit)
        self._lock = threading.Lock()
        self._joined: OrderedDict[tuple[str, str, PatientIdentity], None] = OrderedDict()
        self._linked: OrderedDict[str, None] = OrderedDict()

    def admit(
        self,
        info: InstanceInfo,
        hospital: str | None,
        *,
        sender: str,
        source: str,
        archive_id: str | None = None,
    ) -> None:
        """Let the instance ``info`` of ``hospital`` join its study (claiming it if new).

        Parameters
        ----------
        info
            The validated instance.
        hospital
            The sender's hospital (DIMSE), or the API key's (STOW-RS).
        sender, source
            For the audit record: the AE title or user, and ``dimse`` or ``stow``.
        archive_id
            The archive's key of the study, where the caller knows it before the archive stores
            it (the Orthanc edge): a new study is claimed with it, in the same transaction
            (:meth:`link_archive` then has nothing to do for it).

        Raises
        ------
        StudyCollisionError
            The study belongs to another hospital or to none, or its patient identity differs.
        """
        identity = PatientIdentity.of_instance(info)
        uid = info.study_instance_uid
        if hospital is None:
            self._refuse(
                info,
                None,
                "the sender has no hospital: the study would have no owner",
                sender=sender,
                source=source,
                owner=None,
            )
        key = (uid, hospital, identity)
        with self._lock:
            if key in self._joined:
                self._joined.move_to_end(key)
                return
        owner, recorded = self._claim(info, hospital, identity, archive_id)
        self._require(owner, info, hospital, sender=sender, source=source)
        differences = recorded.differences(identity)
        if differences:
            reason = f"patient identity differs ({', '.join(differences)}) from study {uid}'s"
            self._refuse(info, hospital, reason, sender=sender, source=source, owner=owner)
        with self._lock:
            self._joined[key] = None
            if len(self._joined) > _CACHE_SIZE:
                self._joined.popitem(last=False)

    def require_owner(
        self, info: InstanceInfo, hospital: str | None, *, sender: str, source: str
    ) -> None:
        """Let an instance whose patient identity cannot be read join its study only if the
        study is held here and owned by ``hospital`` (nothing to claim a new study with, nor to
        compare the patient against: an operator's release of an unreadable instance).

        Raises
        ------
        StudyCollisionError
            The study is not held here, or belongs to another hospital or to none.
        """
        uid = info.study_instance_uid
        found = self._owner(uid)
        if found is None:
            reason = f"study {uid} is not held here, and this instance cannot claim it"
            self._refuse(info, hospital, reason, sender=sender, source=source, owner=None)
        self._require(found[0], info, hospital, sender=sender, source=source)

    def _require(
        self,
        owner: str | None,
        info: InstanceInfo,
        hospital: str | None,
        *,
        sender: str,
        source: str,
    ) -> None:
        """Refuse ``info`` unless its study's ``owner`` is ``hospital``."""
        if owner is not None and owner == hospital:
            return
        uid = info.study_instance_uid
        # the kind first: a DIMSE error comment keeps 64 characters
        reason = (
            f"Study Instance UID is another hospital's study ({uid})"
            if owner is not None
            else f"no owning hospital: study {uid} (assign one: radcloud studies assign-owner)"
        )
        self._refuse(info, hospital, reason, sender=sender, source=source, owner=owner)

    def link_archive(self, study_instance_uid: str, archive_id: str) -> None:
        """Record the archive's key of a study claimed here, when it has none yet (the Orthanc
        edge knows it before Orthanc stores the study: C-FIND and C-MOVE scope by it). Done
        once per study and process; the key of a study that has one is never changed."""
        with self._lock:
            if study_instance_uid in self._linked:
                return
        with self._db.session() as session:
            session.execute(
                update(Study)
                .where(Study.study_instance_uid == study_instance_uid, Study.orthanc_id.is_(None))
                .values(orthanc_id=archive_id)
            )
        self._remember_linked(study_instance_uid)

    def _remember_linked(self, study_instance_uid: str) -> None:
        with self._lock:
            self._linked[study_instance_uid] = None
            if len(self._linked) > _CACHE_SIZE:
                self._linked.popitem(last=False)

    def _claim(
        self, info: InstanceInfo, hospital: str, identity: PatientIdentity, archive_id: str | None
    ) -> tuple[str | None, PatientIdentity]:
        """The study's owner and recorded identity; a new study is claimed for ``hospital``
        with ``identity`` (one insert: the unique UID decides a race), and its patient's
        identifiers registered in the same transaction."""
        uid = info.study_instance_uid
        found = self._owner(uid)
        if found is not None:
            return found
        registered = Registered(None)
        try:
            with write_transaction(self._db, CLAIM_LOCK_KEY) as session:
                found = self._owner(uid, session)  # under the write lock: decided once
                if found is not None:
                    return found
                session.add(
                    Study(
                        study_instance_uid=uid,
                        hospital_id=hospital_row(session, hospital).id,
                        patient_id=identity.patient_id,
                        issuer_of_patient_id=identity.issuer_of_patient_id,
                        patient_name=identity.patient_name,
                        patient_birth_date=identity.patient_birth_date,
                        state=StudyState.RECEIVING,
                        instance_count=0,
                        orthanc_id=archive_id,
                    )
                )
                registered = register_identifiers(session, hospital, info)
        except IntegrityError:  # the unique UID: a row written without the lock won
            found = self._owner(uid)
            if found is None:
                raise
            return found
        logger.info("study %s claimed by %s", uid, hospital)
        if archive_id is not None:
            self._remember_linked(uid)
        self._xref.audit_registered(registered, hospital, study_instance_uid=uid)
        return hospital, identity

    def _owner(
        self, uid: str, session: Session | None = None
    ) -> tuple[str | None, PatientIdentity] | None:
        """The study's owner and recorded identity, ``None`` when there is no such study."""
        if session is None:
            with self._db.session() as own:
                return self._owner(uid, own)
        row = session.execute(  # the columns, not the row as an object: read per new study
            select(
                Hospital.name,
                Study.patient_id,
                Study.issuer_of_patient_id,
                Study.patient_name,
                Study.patient_birth_date,
            )
            .select_from(Study)
            .outerjoin(Hospital, Study.hospital_id == Hospital.id)
            .where(Study.study_instance_uid == uid)
        ).first()
        if row is None:
            return None
        owner, *identity = row
        return owner, PatientIdentity(*identity)

    def _refuse(
        self,
        info: InstanceInfo,
        hospital: str | None,
        reason: str,
        *,
        sender: str,
        source: str,
        owner: str | None,
    ) -> NoReturn:
        logger.warning("instance %s from %s refused: %s", info.sop_instance_uid, sender, reason)
        self._audit.record(
            AuditEventCode.SECURITY_ALERT,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.MINOR_FAILURE,
            user_name=sender,
            resource_type="study",
            resource_id=info.study_instance_uid,
            patient_id=info.patient_id,
            detail={
                "reason": reason,
                "hospital": hospital,
                "owner": owner,
                "source": source,
                "sop_instance_uid": info.sop_instance_uid,
            },
        )
        raise StudyCollisionError(reason)
