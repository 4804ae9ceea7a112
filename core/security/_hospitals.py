"""Hospital assignments of users and API keys as rows, and the scope they give
(:class:`core.tenancy.HospitalScope`)."""

from __future__ import annotations

from collections.abc import Iterable

from core.db.models import ApiKey, Role, User
from core.exceptions import PermissionDeniedError
from core.security.principal import Actor
from core.tenancy import HospitalScope, hospital_row

__all__ = ["api_key_scope", "check_assignment", "check_grant", "hospital_row", "user_scope"]


def check_assignment(hospitals: Iterable[str], platform_operator: bool) -> list[str]:
    """The hospitals named, sorted and de-duplicated.

    Raises
    ------
    ValueError
        Both hospitals and platform operator given: a platform operator is no hospital's.
    """
    names = sorted(set(hospitals))
    if names and platform_operator:
        raise ValueError(
            f"a platform operator is assigned no hospital (got {', '.join(names)}): "
            "give hospitals or platform operator, not both"
        )
    return names


def check_grant(actor: Actor, hospitals: Iterable[str], platform_operator: bool) -> None:
    """Refuse an assignment ``actor`` could not hold itself: only a platform operator makes
    platform operators or assigns a hospital outside its own.

    Raises
    ------
    PermissionDeniedError
        ``actor`` may not grant this.
    """
    if actor.scope.platform_operator:
        return
    beyond = sorted(set(hospitals) - actor.scope.hospitals)
    if platform_operator or beyond:
        granted = "platform operator" if platform_operator else ", ".join(beyond)
        raise PermissionDeniedError(
            f"{actor.role or actor.name} of {actor.scope.describe()}",
            [f"platform operator (to grant {granted})"],
        )


def user_scope(user: User) -> HospitalScope:
    """What ``user`` may see: its hospitals, or all as a platform operator.

    An ``ml_engineer`` gets de-identified data only (the training export) unless granted
    identified access for a hospital (``radcloud users assign NAME HOSPITAL --identified``):
    its scope, which every identified data path checks (DICOMweb, results, viewer, masks,
    reprocess, inference), holds only the hospitals so granted. A ``researcher`` sees no
    hospital's identified data at all: research paths read its assignments themselves.
    """
    if user.platform_operator:
        return HospitalScope.platform()
    if user.role is Role.RESEARCHER:  # de-identified data only, by research paths (issue 15)
        return HospitalScope()
    if user.role is Role.ML_ENGINEER:
        return HospitalScope.of(a.hospital.name for a in user.assignments if a.identified)
    return HospitalScope.of(a.hospital.name for a in user.assignments)


def api_key_scope(key: ApiKey) -> HospitalScope:
    """What the service account of ``key`` may see: its hospital, or all as a platform
    operator's. An ``ml_engineer`` key sees no identified data (grants are a user's)."""
    if key.platform_operator:
        return HospitalScope.platform()
    if key.role in {Role.ML_ENGINEER, Role.RESEARCHER}:
        return HospitalScope()
    return HospitalScope.of([key.hospital.name] if key.hospital else [])
