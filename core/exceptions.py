"""Errors of radcloud's platform core. Protocol edges translate them (HTTP status, exit code).

::

    RadcloudError
    ├── ConfigError(key, value, expected)
    ├── SecretsError(path, reason)
    ├── ServiceError
    │   ├── DependencyMissingError(program, install_command)
    │   ├── PortInUseError(port, setting)
    │   └── StartupError(component, reason, log_file)
    ├── AuthError
    │   ├── AuthenticationError(reason)           -> HTTP 401
    │   ├── PermissionDeniedError(role, allowed)  -> HTTP 403
    │   │   ├── PurposeRequiredError(purpose, allowed)  -> HTTP 403 (core.identity)
    │   │   └── NoCareRelationshipError(user, patient_key) -> HTTP 403 (core.identity)
    │   └── TooManyAttemptsError(reason, retry_after_s) -> HTTP 429
    ├── NotFoundError(kind, name)                 -> HTTP 404
    │   └── UnknownIdentifierDomainError(parameter, system) -> HTTP 404/403 (FHIR PIXm)
    ├── AlreadyExistsError(kind, name)            -> HTTP 409
    ├── InvalidUidError(keyword, value, reason)   -> HTTP 400, DIMSE 0xA900 (core.uids)
    ├── IdentityLinkError(identifier, reason)     -> HTTP 409 (core.identity)
    └── AuditChainError(problems)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "AlreadyExistsError",
    "AuditChainError",
    "AuthError",
    "AuthenticationError",
    "ConfigError",
    "DependencyMissingError",
    "IdentityLinkError",
    "InvalidUidError",
    "NoCareRelationshipError",
    "NotFoundError",
    "PatientContextError",
    "PermissionDeniedError",
    "PortInUseError",
    "PurposeRequiredError",
    "RadcloudError",
    "SecretsError",
    "ServiceError",
    "StartupError",
    "TooManyAttemptsError",
    "UnknownIdentifierDomainError",
]


class RadcloudError(Exception):
    """Root of radcloud's platform errors."""


class ConfigError(RadcloudError):
    """A setting has an invalid value."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        shown = "" if value is None else f"={value!r}"
        super().__init__(f"invalid setting {key}{shown}: {expected}")


class SecretsError(RadcloudError):
    """The secrets file cannot be used."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"secrets file {path}: {reason}")


class ServiceError(RadcloudError):
    """A component cannot be started, stopped or reached."""


class DependencyMissingError(ServiceError):
    """A program radcloud needs is not installed."""

    def __init__(self, program: str, install_command: str) -> None:
        self.program, self.install_command = program, install_command
        super().__init__(f"{program} is not installed; install it with: {install_command}")


class PortInUseError(ServiceError):
    """A port radcloud would listen on is taken by another process."""

    def __init__(self, port: int, setting: str) -> None:
        self.port, self.setting = port, setting
        super().__init__(
            f"port {port} is already in use by another process; "
            f"choose another with {setting}=<port>"
        )


class StartupError(ServiceError):
    """A component started but never became healthy, or exited."""

    def __init__(self, component: str, reason: str, log_file: Path | None = None) -> None:
        self.component, self.reason, self.log_file = component, reason, log_file
        where = f" (log: {log_file})" if log_file else ""
        super().__init__(f"{component} failed to start: {reason}{where}")


class AuthError(RadcloudError):
    """Authentication or authorisation failed."""


class AuthenticationError(AuthError):
    """No valid credentials were presented (HTTP 401)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PermissionDeniedError(AuthError):
    """Valid credentials, but the role may not do this (HTTP 403)."""

    def __init__(self, role: str, allowed: Sequence[str]) -> None:
        self.role, self.allowed = role, tuple(allowed)
        super().__init__(f'role "{role}" may not do this; allowed roles: {", ".join(allowed)}')


class PurposeRequiredError(PermissionDeniedError):
    """The token states no purpose of use, or not one this action allows (HTTP 403); a
    missing purpose is never taken for "any"."""

    def __init__(self, purpose: str | None, allowed: Sequence[str]) -> None:
        self.purpose = purpose
        self.role, self.allowed = f"purpose {purpose or '(none)'}", tuple(allowed)
        stated = f'purpose of use "{purpose}"' if purpose else "a token without a purpose of use"
        AuthError.__init__(
            self, f"{stated} may not do this; allowed purposes: {', '.join(allowed)}"
        )


class NoCareRelationshipError(PermissionDeniedError):
    """A treatment token asked for a patient none of the caller's hospitals holds an
    identifier of, without a break-glass reason (HTTP 403)."""

    def __init__(self, user: str, patient_key: str) -> None:
        self.user, self.patient_key = user, patient_key
        self.role, self.allowed = user, ("a care relationship", "a break-glass reason")
        AuthError.__init__(
            self,
            f'"{user}" has no care relationship with patient {patient_key} (none of its '
            "hospitals holds an identifier of the patient): state a break-glass reason",
        )


class PatientContextError(PermissionDeniedError):
    """A treatment token asked for another patient than the one it is bound to, or a research
    token named a patient (HTTP 403)."""

    def __init__(self, user: str, asked: str, bound: str | None) -> None:
        self.user, self.asked, self.bound = user, asked, bound
        self.role, self.allowed = user, (bound or "no patient",)
        what = f"bound to patient {bound}" if bound else "bound to no patient (research)"
        AuthError.__init__(self, f'the token of "{user}" is {what}; it may not ask for {asked}')


class TooManyAttemptsError(AuthError):
    """Too many sign-in attempts: refused whatever the password for ``retry_after_s`` (HTTP 429)."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        self.reason, self.retry_after_s = reason, retry_after_s
        super().__init__(f"{reason}: try again in {retry_after_s} s")


class NotFoundError(RadcloudError):
    """A named thing does not exist."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(f'{kind} "{name}" does not exist')


class UnknownIdentifierDomainError(NotFoundError):
    """A patient identifier system (domain) radcloud does not know, named by ``parameter``
    (``sourceIdentifier`` or ``targetSystem`` of ``$ihe-pix``, IHE PIXm ITI-83)."""

    def __init__(self, parameter: str, system: str) -> None:
        self.parameter, self.system = parameter, system
        self.kind, self.name = f"{parameter} identifier domain", system
        RadcloudError.__init__(self, f'{parameter} identifier domain "{system}" is not known')


class AlreadyExistsError(RadcloudError):
    """A named thing exists already."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(f'{kind} "{name}" already exists')


class InvalidUidError(RadcloudError):
    """A value that should be a UID is not one radcloud may use (:mod:`core.uids`)."""

    def __init__(self, keyword: str, value: str, reason: str) -> None:
        self.keyword, self.value, self.reason = keyword, value, reason
        shown = repr(value if len(value) <= 80 else f"{value[:80]}...")
        super().__init__(f"{keyword} {shown} is not a valid UID: {reason}")


class IdentityLinkError(RadcloudError):
    """A link of patient identifiers cannot be made or undone as asked (HTTP 409), e.g. an
    unlink of an identifier that no manual link joins."""

    def __init__(self, identifier: str, reason: str) -> None:
        self.identifier, self.reason = identifier, reason
        super().__init__(f"patient identifier {identifier}: {reason}")


class AuditChainError(RadcloudError):
    """The audit trail's hash chain is broken: records were edited, deleted or inserted."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"audit chain broken: {'; '.join(problems[:5])}")
