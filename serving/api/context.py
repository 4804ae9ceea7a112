"""What every request handler needs, built once per API process."""

from __future__ import annotations

from dataclasses import dataclass

from radcloud.audit import AuditTrail
from radcloud.config import Settings
from radcloud.db import Database, upgrade
from radcloud.secrets import load_secrets
from radcloud.security import Accounts, TokenService

__all__ = ["ApiContext"]


@dataclass(frozen=True)
class ApiContext:
    """Settings, database and the security services of one API process."""

    settings: Settings
    db: Database
    audit: AuditTrail
    accounts: Accounts
    tokens: TokenService

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiContext:
        """Open the database (migrating it), load secrets and build the services."""
        secrets = load_secrets(settings)
        db = Database.from_settings(settings)
        upgrade(db)
        return cls(
            settings=settings,
            db=db,
            audit=AuditTrail(db, secrets.audit_hmac_key),
            accounts=Accounts(db),
            tokens=TokenService(settings, secrets.jwt_signing_key),
        )
