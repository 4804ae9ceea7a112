"""A real Orthanc as radcloud's DICOM edge (``gateway_edge=orthanc``), started by radcloud's own
component code (:func:`radcloud.services.orthanc_component` under a :class:`Supervisor`), with
its plugin, in a temporary ``RADCLOUD_HOME`` on free ports. Tests drive it with dcmtk and
pynetdicom peers and read what it did from Orthanc, the quarantine and the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.audit import AuditTrail
from core.config import Settings
from core.db import Database, upgrade
from core.secrets import Secrets, load_secrets
from core.security import Actor
from dicom_gateway.edge.peers import peer_name
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.senders import SenderRegistry
from radcloud.services import Supervisor, orthanc_component
from radcloud.services.components import gateway_component
from tests.conftest import settings_from_env, stack_env
from tests.helpers import wait_until

__all__ = ["OrthancEdge", "start_orthanc_edge"]


@dataclass
class OrthancEdge:
    """A running Orthanc edge and radcloud's state behind it."""

    settings: Settings
    secrets: Secrets
    db: Database
    audit: AuditTrail
    senders: SenderRegistry
    supervisor: Supervisor

    @property
    def port(self) -> int:
        return self.settings.gateway_port

    @property
    def ae_title(self) -> str:
        return self.settings.gateway_ae_title

    @property
    def quarantine(self) -> Quarantine:
        return Quarantine(self.settings.paths.quarantine_dir)

    def client(self) -> httpx.Client:
        """Orthanc's REST API (tests check Orthanc itself)."""
        return httpx.Client(
            base_url=self.settings.orthanc_url,
            auth=(self.secrets.orthanc_user, self.secrets.orthanc_password),
            timeout=30,
        )

    def get(self, path: str) -> Any:
        with self.client() as client:
            response = client.get(path)
            response.raise_for_status()
            return response.json()

    def has_peer(self, ae_title: str) -> bool:
        return peer_name(ae_title) in self.get("/modalities")

    def add_sender(self, ae_title: str, hospital: str, host: str = "127.0.0.1") -> None:
        """Register a sender and wait until Orthanc admits it (the plugin mirrors it)."""
        self.senders.add_sender(ae_title, hospital, host, actor=Actor.cli())
        assert wait_until(lambda: self.has_peer(ae_title), timeout_s=15), ae_title

    def add_destination(
        self, ae_title: str, host: str, port: int, hospital: str | None = None
    ) -> None:
        """Register a C-MOVE destination and wait until Orthanc can send to it."""
        self.senders.add_destination(ae_title, host, port, hospital, actor=Actor.cli())
        assert wait_until(lambda: self.has_peer(ae_title), timeout_s=15), ae_title

    def instances(self) -> list[str]:
        """SOP Instance UIDs Orthanc holds."""
        with self.client() as client:
            answer = client.post(
                "/tools/find", json={"Level": "Instance", "Query": {}, "Expand": True}
            )
            answer.raise_for_status()
            return [item["MainDicomTags"]["SOPInstanceUID"] for item in answer.json()]

    def audit_records(self, event_code: str) -> list[dict[str, Any]]:
        """Records of ``event_code`` not written by the set-up's registrations."""
        records = self.audit.search(actor=Actor.cli(), event_code=event_code, limit=1000)
        return [r for r in records if r["detail"].get("via") != "cli"]

    def log(self) -> str:
        return (self.settings.paths.log_dir / "orthanc.log").read_text(errors="replace")

    def stop(self) -> None:
        self.supervisor.down()
        self.db.dispose()


def start_orthanc_edge(home: Path, *, gateway: bool = False, **settings: object) -> OrthancEdge:
    """Start Orthanc as the DICOM edge in ``home`` (dev mode unless ``settings`` say otherwise).

    Parameters
    ----------
    home
        ``RADCLOUD_HOME``.
    gateway
        Also start the gateway process (study completeness from Orthanc's change log, the
        ``study.ready`` events; no DIMSE port of its own in this mode).
    settings
        Further settings (TLS files, limits).
    """
    env = stack_env(home, **({"gateway_edge": "orthanc", "mode": "dev"} | settings))
    config = settings_from_env(env)
    config.paths.home.mkdir(parents=True, exist_ok=True)
    secrets = load_secrets(config)
    db = Database.from_settings(config)
    upgrade(db)
    audit = AuditTrail.from_secrets(db, secrets)
    registry = SenderRegistry(db, audit, edge=config.gateway_edge)
    components = [orthanc_component(config, secrets)]
    if gateway:
        components.append(gateway_component(config))
    supervisor = Supervisor(config, components)
    supervisor.up()
    return OrthancEdge(config, secrets, db, audit, registry, supervisor)
