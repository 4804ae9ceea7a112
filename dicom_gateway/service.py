"""The gateway process (``python -m dicom_gateway``): DIMSE service, forwarder, study tracker,
a small HTTP listener on ``gateway_metrics_port`` (:mod:`dicom_gateway._http`) with
``/healthz``, ``/metrics`` and the internal STOW-RS endpoint of the API process
(:mod:`dicom_gateway.stow`), and the public STOW-RS door on ``gateway_stow_port``
(:mod:`dicom_gateway.stow_door`; ``gateway_stow_enabled=false`` turns it off).

This process is the spool's only writer: instances received by DIMSE and by STOW-RS go through
its one :class:`Intake` and :class:`Spool`, so the spool's limit, its accounting and its fsync
rules hold as one.

With ``RADCLOUD_GATEWAY_EDGE=orthanc`` Orthanc's DICOM server receives DIMSE instead (the
plugin of :mod:`dicom_gateway.edge`): this process then opens no DIMSE port, and keeps the
rest (STOW-RS hand-over, spool and forwarder for it, study tracker, quarantine, metrics).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from core.archive import ArchiveError, DicomwebArchive, open_archive, open_local_dicomweb
from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.config import GatewayEdge, Settings
from core.db import Database, upgrade
from core.secrets import load_secrets
from core.security import Accounts, TokenService
from dicom_gateway import metrics
from dicom_gateway._door_http import StowDoorServer, https_context
from dicom_gateway._http import GatewayHttpServer
from dicom_gateway.completeness import StudyTracker
from dicom_gateway.forwarder import Forwarder
from dicom_gateway.intake import Intake
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.senders import SenderRegistry
from dicom_gateway.spool import Spool
from dicom_gateway.stow import ArchiveStow
from dicom_gateway.stow_door import IN_FLIGHT, StowDoor, batch_store

__all__ = ["GatewayService"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
# With several archive nodes, how long the completeness follower waits for a hole in the change
# feed's numbering to fill (a change committed late) before taking it for a rolled-back one.
_SETTLE_S = 2.0


class GatewayService:
    """Every part of the gateway, started and stopped together.

    Parameters
    ----------
    settings
        The validated settings.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        secrets = load_secrets(settings)
        self.db = Database.from_settings(settings)
        upgrade(self.db)
        self.audit = AuditTrail.from_secrets(self.db, secrets)
        self.archive = open_archive(settings, secrets)
        self.spool = Spool.from_settings(settings)
        self.quarantine = Quarantine(
            settings.paths.quarantine_dir,
            limit_bytes=settings.gateway_quarantine_limit_mib * _MIB,
            max_files=settings.gateway_quarantine_max_files,
        )
        self.intake = Intake(
            self.spool,
            self.quarantine,
            settings.gateway_max_instance_mib * _MIB,
            StudyOwnership(self.db, self.audit),
        )
        self.senders = SenderRegistry(self.db, self.audit, edge=settings.gateway_edge)
        self.tracker = StudyTracker(
            self.db,
            self.archive,
            settings.gateway_stable_seconds,
            pending_studies=lambda: self.forwarder.pending_studies(),  # noqa: PLW0108 - set below
            settle_s=_SETTLE_S if settings.orthanc_nodes > 1 else 0.0,
        )
        self.forwarder = Forwarder(
            self.spool,
            self.quarantine,
            self.archive,
            workers=settings.gateway_forward_workers,
        )
        self.dicom: Any = None
        self._dicomweb: list[DicomwebArchive] = []
        if settings.gateway_edge is GatewayEdge.ORTHANC:  # STOW-RS straight into Orthanc
            self._dicomweb = [  # one per archive node: ArchiveStow spreads and fails over
                open_local_dicomweb(
                    settings, secrets, timeout_s=settings.gateway_network_timeout_s, node=node
                )
                for node in range(settings.orthanc_nodes)
            ]
        else:
            from dicom_gateway.scp import DicomService  # pynetdicom: only in this process

            self.dicom = DicomService(
                settings,
                intake=self.intake,
                senders=self.senders,
                audit=self.audit,
                orthanc=self.archive,
            )
        archive_stow = (
            ArchiveStow(self.intake, self._dicomweb, stored=self.tracker.expect)
            if self._dicomweb
            else None
        )
        self._http = GatewayHttpServer(  # loopback only, whatever bind_host says
            ("127.0.0.1", settings.gateway_metrics_port),
            health=self.health,
            metrics=self.metrics,
            intake=self.intake,
            ingest_key=secrets.gateway_ingest_key,
            timeout_s=settings.gateway_network_timeout_s,
            archive_stow=archive_stow,
        )
        self.stow_door: StowDoor | None = None
        self._door: StowDoorServer | None = None
        if settings.gateway_stow_enabled:  # the public STOW-RS door, on bind_host
            self.stow_door = StowDoor(
                accounts=Accounts(self.db, self.audit),
                tokens=TokenService(settings, secrets.jwt_signing_key),
                audit=self.audit,
                db=self.db,
                store=batch_store(self.intake, archive_stow),
                max_instance_bytes=self.intake.max_instance_bytes,
                max_parts=settings.api_max_stow_parts,
                max_body_bytes=settings.api_max_stow_mib * _MIB,
                retrieve_base=f"{(settings.public_url or settings.api_url).rstrip('/')}/dicom-web",
                workers=settings.gateway_stow_max_connections * IN_FLIGHT,
            )
            self._door = StowDoorServer(
                (settings.bind_host, settings.gateway_stow_port),
                self.stow_door,
                timeout_s=settings.gateway_network_timeout_s,
                max_connections=settings.gateway_stow_max_connections,
                tls=https_context(settings),
            )
        self._stopped = threading.Event()

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers."""
        usage = self.spool.usage()
        return {
            "status": "ok",
            "spool": {"files": usage.files, "bytes": usage.bytes, "limit_bytes": usage.limit_bytes},
            "quarantine": self.quarantine.count(),
            "orthanc_available": self.forwarder.orthanc_available,
            "associations_open": self.dicom.associations_open if self.dicom else None,
            # who answers DICOM on the port: this process, or Orthanc (whose plugin reports at
            # GET /radcloud/edge on Orthanc's REST API)
            "edge": self.settings.gateway_edge.value,
            "ae_title": self.settings.gateway_ae_title,
            "port": self.settings.gateway_port,
            "tls": self.settings.gateway_tls_enabled,
            "stow_url": self.settings.gateway_stow_url,  # the STOW-RS door; None: off
        }

    def metrics(self) -> bytes:
        """What ``/metrics`` answers: this process's metrics and, with the Orthanc edge, its
        DIMSE counters read from Orthanc (:func:`dicom_gateway.metrics.exposition`)."""
        if self.settings.gateway_edge is not GatewayEdge.ORTHANC:
            return metrics.exposition()
        try:
            edge_text: str | None = self.archive.edge_metrics()
        except ArchiveError as exc:
            logger.warning("the Orthanc edge's metrics cannot be read: %s", exc)
            edge_text = None
        return metrics.exposition(edge_text, edge=True)

    def start(self) -> None:
        """Start tracking (first: its position in the change feed is taken before anything is
        forwarded), forwarding, the DIMSE service and the HTTP listener."""
        self.tracker.start()
        self.forwarder.start()
        if self.dicom is not None:
            self.dicom.start()
        self._http.start()
        if self._door is not None:
            self._door.start()
        self.audit.record(
            AuditEventCode.APPLICATION_ACTIVITY,
            action=AuditAction.EXECUTE,
            user_name=self.settings.gateway_ae_title,
            resource_type="application",
            resource_id="dicom_gateway",
            detail={
                "activity": "started",
                "port": self.settings.gateway_port,
                "edge": self.settings.gateway_edge.value,
                "stow_url": self.settings.gateway_stow_url,
            },
        )
        logger.info(
            "gateway %s on %s:%d (TLS %s), DICOM answered by %s",
            self.settings.gateway_ae_title,
            self.settings.bind_host,
            self.settings.gateway_port,
            "on" if self.settings.gateway_tls_enabled else "off",
            "this process" if self.dicom else "Orthanc (RADCLOUD_GATEWAY_EDGE=orthanc)",
        )
        if self.settings.gateway_stow_url is not None:
            logger.info("STOW-RS door on %s", self.settings.gateway_stow_url)

    def stop(self) -> None:
        """Stop accepting, then let in-flight work finish; the spool keeps the rest."""
        if self.dicom is not None:
            self.dicom.stop()
        self._http.stop()
        if self._door is not None:
            self._door.stop()
        if self.stow_door is not None:
            self.stow_door.close()
        self.tracker.stop()
        self.forwarder.stop()
        self.audit.record(
            AuditEventCode.APPLICATION_ACTIVITY,
            action=AuditAction.EXECUTE,
            user_name=self.settings.gateway_ae_title,
            resource_type="application",
            resource_id="dicom_gateway",
            detail={"activity": "stopped"},
        )
        self.archive.close()
        for dicomweb in self._dicomweb:
            dicomweb.close()
        self.db.dispose()

    def run(self) -> None:
        """Run until SIGTERM or SIGINT."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stopped.set())
        self.start()
        self._stopped.wait()
        logger.info("gateway stopping")
        self.stop()
