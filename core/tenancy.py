"""Hospitals as tenants: which hospitals a principal may see, and the one check of a study's
owner that every HTTP read and write path makes before it touches the image archive.

A principal (user, API key, OIDC token) is assigned one or more hospitals, or is explicitly a
platform operator; there is no implicit "all". A study belongs to exactly one hospital (its
``studies.hospital_id``: the DIMSE sender's hospital, or the STOW-RS API key's). A study
outside the caller's scope is answered exactly like one that does not exist
(:class:`~core.exceptions.NotFoundError`, HTTP 404), so its existence does not leak.

Studies without an owner (stored before ownership was recorded) are visible to platform
operators only, take no new instance at the gateway, and get an owner once, by an operator's
audited act (:func:`assign_study_owner`, ``radcloud studies assign-owner UID HOSPITAL``). An
owner, once set, is never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, false, select, true
from sqlalchemy.orm import Session

from core.audit import AuditAction, AuditTrail
from core.db import Database
from core.db.models import Hospital, Study
from core.exceptions import NotFoundError, PermissionDeniedError, RadcloudError

if TYPE_CHECKING:
    from core.security.principal import Actor

__all__ = [
    "HospitalScope",
    "OwnerAlreadySetError",
    "assign_study_owner",
    "find_hospital",
    "hospital_row",
    "require_study",
    "study_in_scope",
    "study_of_another_hospital",
    "visible_study_uids",
]

_HOSPITALS = "radcloud_hospitals"  # session.info: (transaction, rows found by name)


@dataclass(frozen=True)
class HospitalScope:
    """The hospitals a principal may see.

    Parameters
    ----------
    hospitals
        Names of the hospitals assigned (``hospitals.name``).
    platform_operator
        Explicitly sees every hospital's studies (runs the platform, not a hospital).

    The default, ``HospitalScope()``, sees nothing.
    """

    hospitals: frozenset[str] = frozenset()
    platform_operator: bool = False

    @classmethod
    def of(cls, hospitals: Iterable[str]) -> HospitalScope:
        """The scope of the hospitals named."""
        return cls(frozenset(hospitals))

    @classmethod
    def platform(cls) -> HospitalScope:
        """A platform operator's scope: every hospital, by explicit assignment."""
        return cls(frozenset(), platform_operator=True)

    def covers(self, hospital: str | None) -> bool:
        """Whether a study owned by ``hospital`` (``None``: no owner) is in this scope."""
        if self.platform_operator:
            return True
        return hospital is not None and hospital in self.hospitals

    @property
    def sole_hospital(self) -> str | None:
        """The one hospital of a principal assigned exactly one (not a platform operator), for
        what it stores: a STOW-RS study's owner; ``None`` otherwise."""
        if self.platform_operator or len(self.hospitals) != 1:
            return None
        return next(iter(self.hospitals))

    def describe(self) -> str:
        """For logs and audit records."""
        if self.platform_operator:
            return "platform operator"
        return ", ".join(sorted(self.hospitals)) or "no hospital"

    def study_filter(self) -> ColumnElement[bool]:
        """A SQL condition on :class:`~core.db.models.Study` rows: the study is in this scope."""
        if self.platform_operator:
            return true()
        if not self.hospitals:
            return false()
        owned = select(Hospital.id).where(Hospital.name.in_(sorted(self.hospitals)))
        return Study.hospital_id.in_(owned.scalar_subquery())


def hospital_row(session: Session, name: str) -> Hospital:
    """The hospital called ``name``, created if new: the one lookup of hospital rows for every
    writer (users, API keys, senders, destinations, study owners).

    Raises
    ------
    ValueError
        ``name`` is empty or longer than 128 characters.
    """
    if not name.strip():
        raise ValueError("a hospital name must not be empty")
    if len(name) > 128:
        raise ValueError(f'hospital name "{name[:32]}..." is longer than 128 characters')
    hospital = find_hospital(session, name)
    if hospital is None:
        hospital = Hospital(name=name)
        session.add(hospital)
        session.flush()
    return hospital


def find_hospital(session: Session, name: str) -> Hospital | None:
    """The hospital called ``name``, or ``None`` (nothing is created). A row found is
    remembered for the rest of ``session`` (a study's claim asks twice: for the study and for
    its patient's identifiers), within the transaction."""
    transaction = session.get_transaction()
    memo = session.info.get(_HOSPITALS)
    if memo is None or memo[0] is not transaction:  # remembered within one transaction only
        memo = session.info[_HOSPITALS] = (transaction, {})
    found: dict[str, Hospital] = memo[1]
    hospital = found.get(name)
    if hospital is None:
        hospital = session.scalar(select(Hospital).where(Hospital.name == name))
        if hospital is not None:
            found[name] = hospital
    return hospital


def study_in_scope(session: Session, study_instance_uid: str, scope: HospitalScope) -> bool:
    """Whether the study exists and is in ``scope``."""
    row = session.scalar(
        select(Study.id).where(Study.study_instance_uid == study_instance_uid, scope.study_filter())
    )
    return row is not None


def study_of_another_hospital(db: Database, study_instance_uid: str, scope: HospitalScope) -> bool:
    """Whether the study exists and is outside ``scope`` (an unknown study is not: it may be
    new, as for STOW-RS to a named study, on either door)."""
    with db.session() as session:
        if study_in_scope(session, study_instance_uid, scope):
            return False
        return study_in_scope(session, study_instance_uid, HospitalScope.platform())


def require_study(session: Session, study_instance_uid: str, scope: HospitalScope) -> Study:
    """The study ``study_instance_uid`` if it is in ``scope``.

    Raises
    ------
    NotFoundError
        No such study, or one of a hospital outside ``scope``: the two are told apart by
        nobody outside it.
    """
    study: Study | None = session.scalar(
        select(Study).where(Study.study_instance_uid == study_instance_uid, scope.study_filter())
    )
    if study is None:
        raise NotFoundError("study", study_instance_uid)
    return study


def visible_study_uids(
    session: Session, scope: HospitalScope, study_instance_uids: Iterable[str]
) -> set[str]:
    """The subset of ``study_instance_uids`` that are studies in ``scope``."""
    wanted = sorted(set(study_instance_uids))
    visible: set[str] = set()
    for start in range(0, len(wanted), 500):  # bounded IN lists
        chunk = wanted[start : start + 500]
        visible.update(
            session.scalars(
                select(Study.study_instance_uid).where(
                    Study.study_instance_uid.in_(chunk), scope.study_filter()
                )
            )
        )
    return visible


class OwnerAlreadySetError(RadcloudError):
    """A study has an owning hospital already: it is never changed."""

    def __init__(self, study_instance_uid: str, owner: str) -> None:
        self.study_instance_uid, self.owner = study_instance_uid, owner
        super().__init__(
            f'study "{study_instance_uid}" is owned by hospital "{owner}" already: an owner is '
            "never changed"
        )


def assign_study_owner(
    audit: AuditTrail, study_instance_uid: str, hospital: str, *, actor: Actor
) -> None:
    """Give a study without an owner (stored before ownership was recorded) its hospital.

    Audited as 110113 Security Alert (U) on the study, in the same transaction; a refusal too.

    Parameters
    ----------
    audit
        The audit trail (its database holds the study).
    study_instance_uid
        The study.
    hospital
        Its owner from now on (created if new).
    actor
        Who assigns: a platform operator (the command line is one).

    Raises
    ------
    NotFoundError
        No such study.
    OwnerAlreadySetError
        The study has an owner (the same or another): owners never change.
    PermissionDeniedError
        ``actor`` is not a platform operator.
    """
    with audit.security_change(
        actor,
        AuditAction.UPDATE,
        "study",
        study_instance_uid,
        change="owner assigned",
        hospital=hospital,
    ) as change:
        if not actor.scope.platform_operator:
            raise PermissionDeniedError(
                f"{actor.role or actor.name} of {actor.scope.describe()}", ["platform operator"]
            )
        session = change.session
        study: Study | None = session.scalar(
            select(Study).where(Study.study_instance_uid == study_instance_uid)
        )
        if study is None:
            raise NotFoundError("study", study_instance_uid)
        if study.hospital_id is not None:
            owner = session.get(Hospital, study.hospital_id)
            raise OwnerAlreadySetError(study_instance_uid, owner.name if owner else "?")
        study.hospital_id = hospital_row(session, hospital).id
