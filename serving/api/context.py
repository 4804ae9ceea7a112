"""What every request handler needs, built once per API process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.archive import ImageArchive, dicomweb_client, local_endpoint, open_archive
from core.audit import AuditTrail
from core.config import Settings
from core.db import Database, upgrade
from core.secrets import load_secrets
from core.security import Accounts, SignInGuard, TokenService
from serving.api._stow import GatewayIngest
from serving.federation import FederatedSearch
from serving.federation.research import ResearchRetrieval
from serving.federation.retrieval import FederatedRetrieval
from serving.federation.wiring import federated_retrieval, federated_search, research_retrieval
from serving.patient_ids import PatientIdCache

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
    """Settings, database, security, the gateway's STOW endpoint and the image archive of one
    API process.

    ``orthanc`` is the raw HTTP client of the DICOMweb proxy (``routes/dicomweb.py``); every
    other use of the archive goes through ``archive``.
    """

    settings: Settings
    db: Database
    audit: AuditTrail
    accounts: Accounts
    tokens: TokenService
    ingest: GatewayIngest
    archive: ImageArchive
    patient_ids: PatientIdCache
    orthanc: httpx.Client
    federation: FederatedSearch
    retrieval: FederatedRetrieval
    research: ResearchRetrieval

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiContext:
        """Open the database (migrating it), load secrets and build the services."""
        secrets = load_secrets(settings)
        db = Database.from_settings(settings)
        upgrade(db)
        audit = AuditTrail.from_secrets(db, secrets)
        archive = open_archive(settings, secrets)
        orthanc = dicomweb_client(settings, secrets)
        research = research_retrieval(db, audit, settings, secrets)
        return cls(
            settings=settings,
            db=db,
            audit=audit,
            accounts=Accounts(db, audit, SignInGuard.from_settings(settings)),
            tokens=TokenService(settings, secrets.jwt_signing_key),
            ingest=GatewayIngest.from_settings(settings, secrets),
            archive=archive,
            patient_ids=PatientIdCache(archive),
            orthanc=orthanc,
            federation=federated_search(db, audit, settings, secrets.deid_hmac_key, research),
            retrieval=federated_retrieval(db, audit, settings, local_endpoint(settings, secrets)),
            research=research,
        )

    def close(self) -> None:
        """Release the connections to the archive, Orthanc, the gateway and the database."""
        self.archive.close()
        self.orthanc.close()
        self.ingest.close()
        self.db.dispose()
