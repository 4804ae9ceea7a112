"""The gateway process (``python -m dicom_gateway``): DIMSE service, forwarder, study tracker,
and a small HTTP endpoint on ``gateway_metrics_port`` with ``/healthz`` (JSON: spool depth,
Orthanc reachability, open associations) and ``/metrics`` (Prometheus).

The metrics endpoint carries no patient data (sender AE titles and counts only) and binds to
``bind_host`` like everything else; it needs no credentials so that Prometheus can scrape it.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.archive import open_archive
from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.config import Settings
from core.db import Database, upgrade
from core.secrets import load_secrets
from dicom_gateway.completeness import StudyTracker
from dicom_gateway.forwarder import Forwarder
from dicom_gateway.intake import Intake
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.senders import SenderRegistry
from dicom_gateway.spool import Spool

__all__ = ["GatewayService"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


class GatewayService:
    """Every part of the gateway, started and stopped together.

    Parameters
    ----------
    settings
        The validated settings.
    """

    def __init__(self, settings: Settings) -> None:
        from dicom_gateway.scp import DicomService  # pynetdicom: only in the gateway process

        self.settings = settings
        secrets = load_secrets(settings)
        self.db = Database.from_settings(settings)
        upgrade(self.db)
        self.audit = AuditTrail(self.db, secrets.audit_hmac_key)
        self.archive = open_archive(settings, secrets)
        self.spool = Spool.from_settings(settings)
        self.quarantine = Quarantine(settings.paths.quarantine_dir)
        self.intake = Intake(self.spool, self.quarantine, settings.gateway_max_instance_mib * _MIB)
        self.senders = SenderRegistry(self.db)
        self.tracker = StudyTracker(
            self.db,
            self.archive,
            settings.gateway_stable_seconds,
            pending_studies=lambda: self.forwarder.pending_studies(),  # noqa: PLW0108 - set below
        )
        self.forwarder = Forwarder(
            self.spool,
            self.quarantine,
            self.archive,
            record=self.tracker.record,
            workers=settings.gateway_forward_workers,
        )
        self.dicom = DicomService(
            settings,
            intake=self.intake,
            senders=self.senders,
            audit=self.audit,
            orthanc=self.archive,
        )
        self._http: ThreadingHTTPServer | None = None
        self._stopped = threading.Event()

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers."""
        usage = self.spool.usage()
        return {
            "status": "ok",
            "spool": {"files": usage.files, "bytes": usage.bytes, "limit_bytes": usage.limit_bytes},
            "quarantine": self.quarantine.count(),
            "orthanc_available": self.forwarder.orthanc_available,
            "associations_open": self.dicom.associations_open,
            "ae_title": self.settings.gateway_ae_title,
            "port": self.settings.gateway_port,
            "tls": self.settings.gateway_tls_enabled,
        }

    def _start_http(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    body = json.dumps(service.health()).encode()
                    content_type = "application/json"
                elif self.path == "/metrics":
                    body, content_type = generate_latest(), CONTENT_TYPE_LATEST
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("metrics endpoint: " + format, *args)

        address = (self.settings.bind_host, self.settings.gateway_metrics_port)
        self._http = ThreadingHTTPServer(address, Handler)
        threading.Thread(target=self._http.serve_forever, name="gateway-http", daemon=True).start()

    def start(self) -> None:
        """Start forwarding, tracking, the DIMSE service and the health endpoint."""
        self.forwarder.start()
        self.tracker.start()
        self.dicom.start()
        self._start_http()
        self.audit.record(
            AuditEventCode.APPLICATION_ACTIVITY,
            action=AuditAction.EXECUTE,
            user_name=self.settings.gateway_ae_title,
            resource_type="application",
            resource_id="dicom_gateway",
            detail={"activity": "started", "port": self.settings.gateway_port},
        )
        logger.info(
            "gateway %s listening on %s:%d (TLS %s)",
            self.settings.gateway_ae_title,
            self.settings.bind_host,
            self.settings.gateway_port,
            "on" if self.settings.gateway_tls_enabled else "off",
        )

    def stop(self) -> None:
        """Stop accepting, then let in-flight work finish; the spool keeps the rest."""
        self.dicom.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
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
        self.db.dispose()

    def run(self) -> None:
        """Run until SIGTERM or SIGINT."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stopped.set())
        self.start()
        self._stopped.wait()
        logger.info("gateway stopping")
        self.stop()
