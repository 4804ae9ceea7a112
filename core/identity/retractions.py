"""Retracting a hospital's wrong assertion that two of its identifiers are one patient.

A study naming PatientID (0010,0020) with an item of OtherPatientIDsSequence (0010,1002) is its
hospital's statement that both identify one patient: the gateway links them (``asserted``,
:func:`~core.identity.register_in`). When that statement is wrong (a misfiled ID, a record the
hospital has since split), an administrator of that hospital retracts it with a written reason:

- the asserted link is removed and the patient's group relabelled: each part gets its own key
  back unless another rule (an authority, a manual link, another assertion) still joins them;
- a durable retraction (``patient_link_retractions``) keeps it so: a later study naming the two
  together is registered without the link; the retraction counts such studies (``withheld``)
  and their 110110 record names the withheld pair (``withheld_links``);
- lifting the retraction restores the link as its hospital asserted it.

Only an administrator whose scope holds the identifiers' hospital may retract, list or lift
(others are answered as if the identifiers did not exist, :mod:`core.tenancy`). Every change
is audited (110113 Security Alert, resource ``patient``, patient IDs hashed) in the change's
transaction, a refusal too.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.audit import AuditAction, AuditedChange, AuditEventCode, AuditTrail
from core.db import Database
from core.db.models import (
    PatientIdentifierEntry,
    PatientLink,
    PatientLinkKind,
    PatientLinkRetraction,
)
from core.exceptions import AlreadyExistsError, IdentityLinkError, NotFoundError
from core.identity._graph import asserted_reason, identifier_of, lock, relabel, require
from core.identity.identifiers import PatientIdentifier, RetractionInfo
from core.identity.service import PatientIdentity, described
from core.security.principal import Actor
from core.tenancy import HospitalScope

__all__ = ["AssertionRetractions"]


def _pair_of(
    session: Session, a: PatientIdentifier, b: PatientIdentifier, scope: HospitalScope
) -> tuple[PatientIdentifierEntry, PatientIdentifierEntry]:
    if a == b:
        raise ValueError(f"identifier {a.domain} and itself are one assertion of nothing")
    return require(session, a, scope), require(session, b, scope)


def _info(session: Session, row: PatientLinkRetraction) -> RetractionInfo:
    return RetractionInfo(
        row.id,
        identifier_of(session.get_one(PatientIdentifierEntry, row.identifier_a_id)),
        identifier_of(session.get_one(PatientIdentifierEntry, row.identifier_b_id)),
        row.reason,
        row.created_by,
        row.created_at,
        row.asserted_by,
        row.asserted_at,
        row.withheld,
    )


class AssertionRetractions:
    """Retracts asserted links of patient identifiers, lists and lifts retractions; audited.

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
        self._identity = PatientIdentity(db, audit)

    def retractions(
        self, scope: HospitalScope, *, identifier: PatientIdentifier | None = None
    ) -> list[RetractionInfo]:
        """The retractions in force of identifiers of ``scope``'s hospitals (only those of
        ``identifier`` when given), oldest first.

        Raises
        ------
        NotFoundError
            ``identifier`` is not registered, or of a hospital outside ``scope``.
        """
        with self._db.session() as session:
            query = select(PatientLinkRetraction).order_by(PatientLinkRetraction.id)
            if identifier is not None:
                row = require(session, identifier, scope)
                query = query.where(
                    or_(
                        PatientLinkRetraction.identifier_a_id == row.id,
                        PatientLinkRetraction.identifier_b_id == row.id,
                    )
                )
            found = [_info(session, r) for r in session.scalars(query)]
        return [r for r in found if scope.covers(r.a.hospital) or scope.covers(r.b.hospital)]

    def retract(
        self, identifier: PatientIdentifier, other: PatientIdentifier, reason: str, *, actor: Actor
    ) -> tuple[str, str]:
        """Retract the assertion, made by their hospital's studies, that ``identifier`` and
        ``other`` are one patient; later studies asserting it again do not re-link them.

        Returns
        -------
        tuple[str, str]
            The patient keys of ``identifier`` and ``other`` after: two keys, unless another
            rule still joins them.

        Raises
        ------
        ValueError
            No reason written, or ``identifier`` and ``other`` are the same.
        NotFoundError
            An identifier not registered, or of a hospital outside ``actor``'s scope.
        AlreadyExistsError
            The assertion is retracted already.
        IdentityLinkError
            No study asserted the two together (a manual link is undone with ``unlink``).
        """
        with self._change(identifier, other, "assertion retracted", reason, actor) as change:
            if not reason.strip():
                raise ValueError("a retraction needs a written reason")
            session = change.session
            lock(session)
            row_a, row_b = _pair_of(session, identifier, other, actor.scope)
            first, second = sorted((row_a.id, row_b.id))
            if self._retraction(session, first, second) is not None:
                raise AlreadyExistsError(
                    "retraction of the assertion of identifiers in domains",
                    f"{identifier.domain} and {other.domain}",
                )
            link = session.scalar(
                select(PatientLink).where(
                    PatientLink.identifier_a_id == first,
                    PatientLink.identifier_b_id == second,
                    PatientLink.kind == PatientLinkKind.ASSERTED,
                )
            )
            if link is None:
                raise IdentityLinkError(
                    identifier.domain,
                    f"no study of its hospital names it with the identifier in {other.domain} "
                    "(a manual link is undone with radcloud patients unlink)",
                )
            change.detail["keys_before"] = sorted({row_a.patient_key, row_b.patient_key})
            change.detail["asserted_by"] = link.created_by
            session.add(
                PatientLinkRetraction(
                    identifier_a_id=first,
                    identifier_b_id=second,
                    reason=reason,
                    created_by=actor.name,
                    asserted_by=link.created_by,
                    asserted_at=link.created_at,
                    withheld=0,
                )
            )
            session.delete(link)
            keys = relabel(session, [row_a.id, row_b.id])
            change.detail["patient_keys"] = [keys[row_a.id], keys[row_b.id]]
            return keys[row_a.id], keys[row_b.id]

    def lift(
        self, identifier: PatientIdentifier, other: PatientIdentifier, reason: str, *, actor: Actor
    ) -> str:
        """Lift the retraction of the assertion of ``identifier`` with ``other``: the link is
        restored as its hospital asserted it; return ``identifier``'s patient key after.

        Raises
        ------
        ValueError
            No reason written, or ``identifier`` and ``other`` are the same.
        NotFoundError
            An identifier not registered, or of a hospital outside ``actor``'s scope, or no
            retraction of the two.
        """
        with self._change(identifier, other, "retraction lifted", reason, actor) as change:
            if not reason.strip():
                raise ValueError("lifting a retraction needs a written reason")
            session = change.session
            lock(session)
            row_a, row_b = _pair_of(session, identifier, other, actor.scope)
            first, second = sorted((row_a.id, row_b.id))
            retraction = self._retraction(session, first, second)
            if retraction is None:
                raise NotFoundError(
                    "retraction of the assertion of identifiers in domains",
                    f"{identifier.domain} and {other.domain}",
                )
            change.detail["retracted_by"] = retraction.created_by
            change.detail["withheld"] = retraction.withheld
            session.add(
                PatientLink(
                    identifier_a_id=first,
                    identifier_b_id=second,
                    kind=PatientLinkKind.ASSERTED,
                    reason=asserted_reason(row_a.hospital.name),
                    created_by=retraction.asserted_by,
                    created_at=retraction.asserted_at,
                )
            )
            session.delete(retraction)
            key = relabel(session, [row_a.id])[row_a.id]
            change.detail["patient_key"] = key
            return key

    @staticmethod
    def _retraction(session: Session, first: int, second: int) -> PatientLinkRetraction | None:
        found: PatientLinkRetraction | None = session.scalar(
            select(PatientLinkRetraction).where(
                PatientLinkRetraction.identifier_a_id == first,
                PatientLinkRetraction.identifier_b_id == second,
            )
        )
        return found

    def _change(
        self,
        identifier: PatientIdentifier,
        other: PatientIdentifier,
        change: str,
        reason: str,
        actor: Actor,
    ) -> AbstractContextManager[AuditedChange]:
        return self._audit.audited(
            AuditEventCode.SECURITY_ALERT,
            actor=actor,
            action=AuditAction.UPDATE,
            resource_type="patient",
            resource_id=self._identity.key_for(
                identifier.hospital, identifier.patient_id, identifier.issuer_of_patient_id
            ),
            patient_id=identifier.patient_id,
            detail={
                "change": change,
                "identifiers": [described(self._audit, identifier), described(self._audit, other)],
                "reason": reason,
            },
        )
