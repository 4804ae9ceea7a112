"""What every request handler needs, built once per API process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.archive import orthanc_client
from core.audit import AuditTrail
from core.config import Settings
from core.db import Database, upgrade
from core.secrets import load_secrets
from core.security import Accounts, TokenService
from serving.api._stow import GatewayIngest

if TYPE_CHECKING:
    import pyorthanc

__all__ = ["SERVING_LINKS", "ApiContext", "ServingLinks"]


@dataclass
class ServingLinks:
    """What the Ray Serve ingress of this process hands to its routes (empty under uvicorn).

    Ray Serve deserialises its own copy of the FastAPI app in the replica, so the ingress's
    constructor cannot reach ``app.state``; it fills this process-wide object instead, which the
    app's lifespan puts in ``app.state.links`` (read it at request time: Serve may run the
    lifespan before the constructor).
    """

    model_handles: dict[str, Any] = field(default_factory=dict)
    model_stats: Callable[[], Awaitable[dict[str, Any]]] | None = None
    triage: Any = None


SERVING_LINKS = ServingLinks()


@dataclass(frozen=True)
class ApiContext:
    """Settings, database, security, the gateway's STOW endpoint and Orthanc of one API process."""

    settings: Settings
    db: Database
    audit: AuditTrail
    accounts: Accounts
    tokens: TokenService
    ingest: GatewayIngest
    orthanc: pyorthanc.Orthanc

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiContext:
        """Open the database (migrating it), load secrets and build the services."""
        secrets = load_secrets(settings)
        db = Database.from_settings(settings)
        upgrade(db)
        audit = AuditTrail(db, secrets.audit_hmac_key)
        return cls(
            settings=settings,
            db=db,
            audit=audit,
            accounts=Accounts(db, audit),
            tokens=TokenService(settings, secrets.jwt_signing_key),
            ingest=GatewayIngest.from_settings(settings, secrets),
            orthanc=orthanc_client(settings, secrets),
        )

    def close(self) -> None:
        """Release the connections to Orthanc, the gateway and the database."""
        self.orthanc.close()
        self.ingest.close()
        self.db.dispose()
