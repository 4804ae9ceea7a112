"""The patient identity cross-reference (IHE PIX Manager, FHIR PIXm): which identifiers of
which hospitals are one patient, under a radcloud patient key.

Links are made by explicit rules only, never by demographic matching:

- **asserted**: one hospital's study names the patient's PatientID with IssuerOfPatientID and
  other IDs in OtherPatientIDsSequence (the gateway records them as it claims the study,
  :func:`register_in` in its transaction): the hospital says they are one patient;
- **authority**: an issuer an operator registered as enterprise-wide or national
  (:meth:`PatientIdentity.add_authority`): its identifiers of one value are one patient at
  whichever hospital they appear, as PatientID or in OtherPatientIDsSequence;
- **manual**: an administrator's link of two identifiers, with a written reason.

:meth:`PatientIdentity.unlink` undoes an identifier's *manual* links only: an identifier
joined by an authority stays joined until the authority rule is removed
(:meth:`PatientIdentity.remove_authority`), and one joined by its own hospital's assertion
until an administrator retracts that assertion (:class:`~core.identity.AssertionRetractions`,
which later studies then honour); :class:`~core.exceptions.IdentityLinkError` says which rule
holds it, when no manual link does.

Tenancy (:mod:`core.tenancy`): an administrator sees the identifiers of the hospitals in
its scope only (others are answered as if they did not exist) and links two identifiers only
when both hospitals are in its scope; it may unlink its own hospitals' identifiers from any.
Authority rules are a platform operator's (the command line is one).

Every change is audited (110113 Security Alert, resource ``patient_identifier`` or
``patient_id_authority``) in the same transaction, a refusal too; new identifiers recorded
at ingest as 110110 Patient Record (C).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.db import Database, write_transaction
from core.db.models import (
    Hospital,
    PatientIdAuthority,
    PatientIdAuthorityKind,
    PatientIdentifierEntry,
    PatientLink,
    PatientLinkKind,
    Study,
)
from core.exceptions import (
    AlreadyExistsError,
    IdentityLinkError,
    NotFoundError,
    PermissionDeniedError,
)
from core.identity._graph import (
    IDENTITY_LOCK_KEY,
    Registered,
    entry,
    identifier_of,
    lock,
    register_in,
    relabel,
    require,
)
from core.identity.identifiers import AuthorityRule, PatientIdentifier, PatientLinkInfo
from core.security.principal import Actor
from core.tenancy import HospitalScope

__all__ = ["PatientIdentity"]


def described(audit: AuditTrail, identifier: PatientIdentifier) -> dict[str, str | None]:
    """An identifier for an audit record: its domain, and its patient ID hashed."""
    return {
        "hospital": identifier.hospital,
        "issuer_of_patient_id": identifier.issuer_of_patient_id,
        "patient_id_hash": audit.patient_id_hash(identifier.patient_id),
    }


def _platform_only(actor: Actor) -> None:
    if not actor.scope.platform_operator:
        raise PermissionDeniedError(
            f"{actor.role or actor.name} of {actor.scope.describe()}", ["platform operator"]
        )


class PatientIdentity:
    """Registers, resolves, links and unlinks patient identifiers; every change audited.

    Parameters
    ----------
    db
        The application database.
    audit
        The audit trail.
    """

    def __init__(self, db: Database, audit: AuditTrail) -> None:
        self._db = db
        self._audit = audit

    # -- registering and resolving -------------------------------------------------------

    def register(
        self,
        hospital: str,
        patient_id: str,
        issuer_of_patient_id: str | None = None,
        other_ids: Iterable[tuple[str, str | None]] = (),
        *,
        actor: Actor | None = None,
    ) -> str:
        """Record a hospital's identifier of a patient (and other IDs of the same patient, as
        in OtherPatientIDsSequence) and return its patient key.

        Raises
        ------
        ValueError
            ``patient_id`` is empty.
        """
        if not patient_id.strip():
            raise ValueError("a patient identifier needs a patient ID")
        with write_transaction(self._db, IDENTITY_LOCK_KEY) as session:
            done = register_in(session, hospital, patient_id, issuer_of_patient_id, other_ids)
        self.audit_registered(done, hospital, actor=actor)
        assert done.patient_key is not None  # noqa: S101 - a patient ID was given
        return done.patient_key

    def audit_registered(
        self, done: Registered, hospital: str, *, actor: Actor | None = None, **detail: object
    ) -> None:
        """Audit what :func:`register_in` recorded (110110 Patient Record, C), if anything: new
        identifiers, merged keys, and asserted links a retraction withheld."""
        if not done.created and not done.merged_keys and not done.withheld:
            return
        pairs = [[self._described(a), self._described(b)] for a, b in done.withheld]
        withheld = {"withheld_links": pairs} if pairs else {}
        self._audit.record(
            AuditEventCode.PATIENT_RECORD,
            actor=actor,
            user_name=None if actor else hospital,
            action=AuditAction.CREATE,
            resource_type="patient",
            resource_id=done.patient_key,
            detail={
                "change": "identifiers registered",
                "hospital": hospital,
                "identifiers": [self._described(i) for i in done.created],
                "merged_keys": sorted(done.merged_keys),
                **withheld,
                **detail,
            },
        )

    def key_for(
        self, hospital: str, patient_id: str, issuer_of_patient_id: str | None = None
    ) -> str | None:
        """The patient key of a hospital's identifier, ``None`` if it was never registered."""
        with self._db.session() as session:
            row = entry(session, PatientIdentifier(hospital, patient_id, issuer_of_patient_id))
            return row.patient_key if row else None

    def current_key(self, patient_key: str) -> str | None:
        """The key of the patient ``patient_key`` named when issued: itself, or the key of the
        group it was merged into since; ``None`` for a key radcloud never gave."""
        with self._db.session() as session:
            key: str | None = session.scalar(
                select(PatientIdentifierEntry.patient_key).where(
                    PatientIdentifierEntry.own_key == patient_key
                )
            )
            return key

    def identifiers(
        self, patient_key: str, scope: HospitalScope | None = None
    ) -> list[PatientIdentifier]:
        """The identifiers of patient ``patient_key`` (of the hospitals in ``scope`` when
        given), sorted; empty for an unknown key."""
        with self._db.session() as session:
            rows = session.scalars(
                select(PatientIdentifierEntry).where(
                    PatientIdentifierEntry.patient_key == patient_key
                )
            )
            found = [identifier_of(row) for row in rows]
        return sorted(i for i in found if scope is None or scope.covers(i.hospital))

    def patients(
        self,
        scope: HospitalScope,
        *,
        hospital: str | None = None,
        limit: int = 1000,
        actor: Actor | None = None,
    ) -> list[tuple[str, list[PatientIdentifier]]]:
        """Patients with an identifier in ``scope`` (held by ``hospital``, when given): each
        key with its identifiers in ``scope``, most recently registered first. With ``actor``,
        the read is audited (110110 Patient Record, R)."""
        newest = func.max(PatientIdentifierEntry.id)
        query = (
            select(PatientIdentifierEntry.patient_key)
            .join(Hospital)
            .group_by(PatientIdentifierEntry.patient_key)
            .order_by(newest.desc())
            .limit(limit)
        )
        if not scope.platform_operator:
            query = query.where(Hospital.name.in_(sorted(scope.hospitals)))
        if hospital is not None:
            query = query.where(Hospital.name == hospital)
        with self._db.session() as session:
            keys = list(session.scalars(query))
        found = [(key, self.identifiers(key, scope)) for key in keys]
        if actor is not None:
            self._audit.record(
                AuditEventCode.PATIENT_RECORD,
                actor=actor,
                action=AuditAction.READ,
                resource_type="patient",
                detail={"change": "patients listed", "hospital": hospital, "patients": len(keys)},
            )
        return found

    def domain_known(self, hospital: str | None, issuer_of_patient_id: str | None) -> bool:
        """Whether radcloud knows the identifier domain: a hospital's issuer (an identifier of
        it was registered), or with ``hospital=None`` a registered authority."""
        with self._db.session() as session:
            if hospital is None:
                query = select(PatientIdAuthority.id).where(
                    PatientIdAuthority.issuer_of_patient_id == (issuer_of_patient_id or "")
                )
            else:
                query = (
                    select(PatientIdentifierEntry.id)
                    .join(Hospital)
                    .where(
                        Hospital.name == hospital,
                        PatientIdentifierEntry.issuer_of_patient_id == (issuer_of_patient_id or ""),
                    )
                )
            return session.scalar(query.limit(1)) is not None

    def key_in_domain(
        self, hospital: str | None, issuer_of_patient_id: str | None, patient_id: str
    ) -> str | None:
        """The patient key of ``patient_id`` in a domain (:meth:`domain_known`); for an
        authority (``hospital=None``), of that ID at whichever hospital."""
        query = select(PatientIdentifierEntry.patient_key).where(
            PatientIdentifierEntry.patient_id == patient_id,
            PatientIdentifierEntry.issuer_of_patient_id == (issuer_of_patient_id or ""),
        )
        if hospital is not None:
            query = query.join(Hospital).where(Hospital.name == hospital)
        with self._db.session() as session:
            key: str | None = session.scalars(query).first()
            return key

    def patient_of_study(self, study_instance_uid: str) -> str | None:
        """The patient key of a study this deployment holds (its owner's identifier, as the
        gateway recorded it); ``None`` for an unknown study or one without a Patient ID. A
        treatment token's routes compare it with ``principal.patient_key`` (through
        :meth:`current_key`) before serving the study."""
        with self._db.session() as session:
            row = session.execute(
                select(Hospital.name, Study.patient_id, Study.issuer_of_patient_id)
                .join(Hospital, Study.hospital_id == Hospital.id)
                .where(Study.study_instance_uid == study_instance_uid)
            ).first()
        if row is None or not row.patient_id:
            return None
        return self.key_for(row.name, row.patient_id, row.issuer_of_patient_id)

    def hospitals_of(self, patient_key: str) -> set[str]:
        """The hospitals holding an identifier of patient ``patient_key``."""
        return {i.hospital for i in self.identifiers(patient_key)}

    def has_care_relationship(self, patient_key: str, scope: HospitalScope) -> bool:
        """Whether one of ``scope``'s own hospitals holds an identifier of the patient (a
        platform operator's scope, assigned no hospital, holds none)."""
        return bool(self.hospitals_of(patient_key) & scope.hospitals)

    # -- links ---------------------------------------------------------------------------

    def links(
        self,
        scope: HospitalScope,
        *,
        identifier: PatientIdentifier | None = None,
        patient_key: str | None = None,
    ) -> list[PatientLinkInfo]:
        """The explicit links (asserted and manual) that touch an identifier in ``scope``;
        only those of ``identifier`` or of patient ``patient_key`` when given."""
        with self._db.session() as session:
            query = select(PatientLink).order_by(PatientLink.id)
            if identifier is not None:
                row = require(session, identifier, scope)
                query = query.where(
                    or_(
                        PatientLink.identifier_a_id == row.id, PatientLink.identifier_b_id == row.id
                    )
                )
            if patient_key is not None:
                ids = select(PatientIdentifierEntry.id).where(
                    PatientIdentifierEntry.patient_key == patient_key
                )
                query = query.where(PatientLink.identifier_a_id.in_(ids.scalar_subquery()))
            found = []
            for link in session.scalars(query):
                a = identifier_of(session.get_one(PatientIdentifierEntry, link.identifier_a_id))
                b = identifier_of(session.get_one(PatientIdentifierEntry, link.identifier_b_id))
                if scope.covers(a.hospital) or scope.covers(b.hospital):
                    found.append(
                        PatientLinkInfo(
                            link.id, a, b, link.kind, link.reason, link.created_by, link.created_at
                        )
                    )
            return found

    def link(self, a: PatientIdentifier, b: PatientIdentifier, reason: str, *, actor: Actor) -> str:
        """Link two identifiers as one patient by hand (both must be registered, and both
        hospitals in ``actor``'s scope); return the patient's key (the older of the two).

        Raises
        ------
        NotFoundError
            An identifier not registered, or of a hospital outside ``actor``'s scope.
        ValueError
            No reason written, or ``a`` and ``b`` are the same identifier.
        AlreadyExistsError
            The two are linked by hand already.
        """
        with self._audit.audited(
            AuditEventCode.SECURITY_ALERT,
            actor=actor,
            action=AuditAction.UPDATE,
            resource_type="patient",
            resource_id=self.key_for(a.hospital, a.patient_id, a.issuer_of_patient_id),
            patient_id=a.patient_id,
            detail={
                "change": "identifiers linked",
                "identifiers": [self._described(a), self._described(b)],
                "reason": reason,
            },
        ) as change:
            if not reason.strip():
                raise ValueError("a manual link needs a written reason")
            if a == b:
                raise ValueError(f"cannot link identifier {a} with itself")
            session = change.session
            lock(session)
            row_a = require(session, a, actor.scope)
            row_b = require(session, b, actor.scope)
            first, second = sorted((row_a.id, row_b.id))
            change.detail["keys_before"] = sorted({row_a.patient_key, row_b.patient_key})
            session.add(
                PatientLink(
                    identifier_a_id=first,
                    identifier_b_id=second,
                    kind=PatientLinkKind.MANUAL,
                    reason=reason,
                    created_by=actor.name,
                )
            )
            try:
                session.flush()
            except IntegrityError as exc:
                raise AlreadyExistsError(
                    "manual link of identifiers in domains", f"{a.domain} and {b.domain}"
                ) from exc
            key = relabel(session, [row_a.id])[row_a.id]
            change.detail["patient_key"] = key
            return key

    def unlink(self, identifier: PatientIdentifier, reason: str, *, actor: Actor) -> str:
        """Undo every manual link of ``identifier``; return its patient key after (its own key
        again unless another rule still joins it to others).

        Raises
        ------
        NotFoundError
            The identifier is not registered, or of a hospital outside ``actor``'s scope.
        IdentityLinkError
            No manual link joins it (an authority rule or its hospital's own study does:
            remove the authority rule, or retract the assertion, instead).
        ValueError
            No reason written.
        """
        with self._audit.audited(
            AuditEventCode.SECURITY_ALERT,
            actor=actor,
            action=AuditAction.UPDATE,
            resource_type="patient",
            resource_id=self.key_for(
                identifier.hospital, identifier.patient_id, identifier.issuer_of_patient_id
            ),
            patient_id=identifier.patient_id,
            detail={
                "change": "identifier unlinked",
                "identifiers": [self._described(identifier)],
                "reason": reason,
            },
        ) as change:
            if not reason.strip():
                raise ValueError("an unlink needs a written reason")
            session = change.session
            lock(session)
            row = require(session, identifier, actor.scope)
            manual = list(
                session.scalars(
                    select(PatientLink).where(
                        PatientLink.kind == PatientLinkKind.MANUAL,
                        or_(
                            PatientLink.identifier_a_id == row.id,
                            PatientLink.identifier_b_id == row.id,
                        ),
                    )
                )
            )
            if not manual:
                raise IdentityLinkError(identifier.domain, self._why_joined(session, row))
            change.detail["key_before"] = row.patient_key
            ends = {row.id}
            removed = []
            for link in manual:
                ends.update((link.identifier_a_id, link.identifier_b_id))
                other_id = (
                    link.identifier_b_id
                    if link.identifier_a_id == row.id
                    else (link.identifier_a_id)
                )
                removed.append(
                    self._described(
                        identifier_of(session.get_one(PatientIdentifierEntry, other_id))
                    )
                )
                session.delete(link)
            change.detail["unlinked_from"] = removed
            key = relabel(session, sorted(ends))[row.id]
            change.detail["patient_key"] = key
            return key

    def _described(self, identifier: PatientIdentifier) -> dict[str, str | None]:
        return described(self._audit, identifier)

    def _why_joined(self, session: Session, row: PatientIdentifierEntry) -> str:
        """Which rule joins ``row`` to others, when no manual link does."""
        asserted = [
            b if a == row.id else a
            for a, b in session.execute(
                select(PatientLink.identifier_a_id, PatientLink.identifier_b_id).where(
                    or_(
                        PatientLink.identifier_a_id == row.id,
                        PatientLink.identifier_b_id == row.id,
                    )
                )
            )
        ]
        issuers = {row.issuer_of_patient_id} | {
            session.get_one(PatientIdentifierEntry, other).issuer_of_patient_id
            for other in asserted
        }
        authority = session.scalar(
            select(PatientIdAuthority)
            .where(PatientIdAuthority.issuer_of_patient_id.in_(sorted(issuers)))
            .order_by(PatientIdAuthority.issuer_of_patient_id)
        )
        why = ["no manual link joins it"]
        if asserted:
            why.append(
                "its hospital's own studies name it with other identifiers (radcloud patients "
                "retract undoes one such assertion)"
            )
        if authority is not None:
            why.append(
                f'the {authority.kind} authority rule of issuer "{authority.issuer_of_patient_id}" '
                "links it (radcloud patients authority remove undoes that rule for every patient)"
            )
        return "; ".join(why)

    # -- authority rules -----------------------------------------------------------------

    def authorities(self) -> list[AuthorityRule]:
        """The registered assigning authorities, by issuer."""
        with self._db.session() as session:
            rows = session.scalars(
                select(PatientIdAuthority).order_by(PatientIdAuthority.issuer_of_patient_id)
            )
            return [
                AuthorityRule(r.issuer_of_patient_id, r.kind, r.created_by, r.created_at)
                for r in rows
            ]

    def add_authority(
        self, issuer_of_patient_id: str, kind: PatientIdAuthorityKind | str, *, actor: Actor
    ) -> int:
        """Register an issuer as enterprise-wide or national: its identifiers of one value
        become one patient across hospitals. Returns how many identifiers were relabelled.

        Raises
        ------
        PermissionDeniedError
            ``actor`` is not a platform operator.
        AlreadyExistsError
            The issuer is registered already.
        ValueError
            An empty issuer or an unknown kind.
        """
        with self._audit.security_change(
            actor,
            AuditAction.CREATE,
            "patient_id_authority",
            issuer_of_patient_id,
            change="authority rule added",
            authority_kind=str(kind),
        ) as change:
            _platform_only(actor)
            if not issuer_of_patient_id.strip():
                raise ValueError("an assigning authority needs an issuer")
            rule_kind = PatientIdAuthorityKind(kind)
            session = change.session
            lock(session)
            session.add(
                PatientIdAuthority(
                    issuer_of_patient_id=issuer_of_patient_id,
                    kind=rule_kind,
                    created_by=actor.name,
                )
            )
            try:
                session.flush()
            except IntegrityError as exc:
                raise AlreadyExistsError("authority", issuer_of_patient_id) from exc
            keys = relabel(session, self._of_issuer(session, issuer_of_patient_id))
            change.detail["identifiers"] = len(keys)
            return len(keys)

    def remove_authority(self, issuer_of_patient_id: str, *, actor: Actor) -> int:
        """Remove an authority rule: its identifiers are joined no more by it (each patient
        split back as the other links leave it). Returns how many identifiers were relabelled.

        Raises
        ------
        PermissionDeniedError
            ``actor`` is not a platform operator.
        NotFoundError
            No such rule.
        """
        with self._audit.security_change(
            actor,
            AuditAction.DELETE,
            "patient_id_authority",
            issuer_of_patient_id,
            change="authority rule removed",
        ) as change:
            _platform_only(actor)
            session = change.session
            lock(session)
            removed = session.execute(
                delete(PatientIdAuthority).where(
                    PatientIdAuthority.issuer_of_patient_id == issuer_of_patient_id
                )
            )
            if not getattr(removed, "rowcount", 0):
                raise NotFoundError("authority", issuer_of_patient_id)
            seeds = self._of_issuer(session, issuer_of_patient_id)
            # every group that held one of them, so each part gets its key again
            keys = relabel(session, seeds + self._neighbours_of(session, seeds))
            change.detail["identifiers"] = len(keys)
            return len(keys)

    @staticmethod
    def _of_issuer(session: Session, issuer: str) -> list[int]:
        return list(
            session.scalars(
                select(PatientIdentifierEntry.id).where(
                    PatientIdentifierEntry.issuer_of_patient_id == issuer
                )
            )
        )

    @staticmethod
    def _neighbours_of(session: Session, ids: Sequence[int]) -> list[int]:
        found: set[int] = set()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            for a, b in session.execute(
                select(PatientLink.identifier_a_id, PatientLink.identifier_b_id).where(
                    or_(
                        PatientLink.identifier_a_id.in_(chunk),
                        PatientLink.identifier_b_id.in_(chunk),
                    )
                )
            ):
                found.update((a, b))
        return sorted(found)
