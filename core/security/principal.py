"""Who is calling: the identity behind a request, whatever the credential (:class:`Principal`),
and who did an audited action through which door (:class:`Actor`)."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from enum import StrEnum

from core.db.models import Role
from core.tenancy import HospitalScope

__all__ = ["Actor", "AuthMethod", "Door", "Principal", "Purpose"]


class AuthMethod(StrEnum):
    """How a principal proved who it is."""

    TOKEN = "token"  # noqa: S105 - a JWT signed by radcloud
    OIDC = "oidc"  # a JWT from the hospital's identity provider, checked against its JWKS
    API_KEY = "api_key"  # a service account's key


class Purpose(StrEnum):
    """The purpose of use a token states (HL7 v3 PurposeOfUse: TREAT, HRESCH), modelled on
    SMART's launch context: ``treatment`` is bound to one patient, ``research`` to none and
    sees de-identified data only. A token without one has no purpose-bound access at all."""

    TREATMENT = "treatment"
    RESEARCH = "research"


@dataclass(frozen=True)
class Principal:
    """An authenticated user or service account, and the hospitals whose studies it may see
    (``scope``: none unless assigned, :mod:`core.tenancy`).

    ``purpose``, ``patient_key`` and ``reason`` come from a context token
    (``POST /api/auth/context-token``, :mod:`core.identity`) or an OIDC token's claims:
    the purpose of use, the radcloud patient key a treatment token is bound to, and the
    break-glass reason it was issued with, if any.
    """

    name: str
    roles: frozenset[Role]
    method: AuthMethod
    token_id: str | None = None
    scope: HospitalScope = field(default_factory=HospitalScope)
    purpose: Purpose | None = None
    patient_key: str | None = None
    reason: str | None = None

    @property
    def role(self) -> str:
        """The roles as one string, for logs and audit records."""
        return ",".join(sorted(self.roles))


class Door(StrEnum):
    """Through which door an action came into radcloud (kept in each record's ``detail.via``)."""

    HTTP = "http"  # the API: a request of a signed-in user or a service account
    CLI = "cli"  # the ``radcloud`` command line, run by an OS user on the host
    DIMSE = "dimse"  # a DICOM association with the gateway
    WORKER = "worker"  # a background worker of radcloud itself


@dataclass(frozen=True)
class Actor:
    """Who did an audited action, and through which door (the PS3.15 A.5 active participant).

    Parameters
    ----------
    name
        The user, service account, OS user or AE title; for a sign-in, the name claimed.
    door
        How the action came in.
    role
        The radcloud roles held, for logs and records (``None`` for the command line: whoever
        can run it on the host can reach the database anyway).
    address
        The network address the action came from, or the host name for the command line.
    scope
        The hospitals whose studies the actor may see and change (none unless given; the
        command line is a platform operator's).
    """

    name: str
    door: Door
    role: str | None = None
    address: str | None = None
    scope: HospitalScope = field(default_factory=HospitalScope)

    @classmethod
    def from_principal(
        cls, principal: Principal, door: Door = Door.HTTP, address: str | None = None
    ) -> Actor:
        """An authenticated user or service account, e.g. the caller of an API route."""
        return cls(principal.name, door, principal.role, address, principal.scope)

    @classmethod
    def cli(cls) -> Actor:
        """The OS user running this command on this host."""
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no user name for this uid (a bare container)
            name = f"uid {os.getuid()}"
        return cls(name, Door.CLI, None, socket.gethostname(), HospitalScope.platform())
