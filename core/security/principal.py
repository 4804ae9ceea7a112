"""Who is calling: the identity behind a request, whatever the credential."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.db.models import Role

__all__ = ["AuthMethod", "Principal"]


class AuthMethod(StrEnum):
    """How a principal proved who it is."""

    TOKEN = "token"  # noqa: S105 - a JWT signed by radcloud
    OIDC = "oidc"  # a JWT from the hospital's identity provider, checked against its JWKS
    API_KEY = "api_key"  # a service account's key


@dataclass(frozen=True)
class Principal:
    """An authenticated user or service account."""

    name: str
    roles: frozenset[Role]
    method: AuthMethod
    token_id: str | None = None

    @property
    def role(self) -> str:
        """The roles as one string, for logs and audit records."""
        return ",".join(sorted(self.roles))
