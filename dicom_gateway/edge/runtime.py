"""The Orthanc edge's parts, built from radcloud's settings inside Orthanc's process, and its
background work.

Orthanc's plugin runs one Python interpreter without ``AllowThreads`` (orthanc-python 4.0): while
a callback runs Python, every other callback waits. So the C-STORE filter works from memory
(the peer table, the ownership cache), and the slow work runs on one background thread, every
second: reading the sender registry and mirroring it into Orthanc's peer table (over HTTP, so
the interpreter is free while Orthanc answers), and writing the audit records of the studies
stored. The thread starts when the plugin is loaded and retries until Orthanc's REST API
answers; it ends with the process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from core.archive import open_archive
from core.archive.orthanc_peers import OrthancPeers
from core.audit import AuditTrail
from core.config import GatewayEdge, Settings
from core.db import Database
from core.secrets import load_secrets
from dicom_gateway import metrics
from dicom_gateway._archive import QueryRetrieveArchive
from dicom_gateway._retrieve import QueryRetrievePolicy
from dicom_gateway.edge.peers import PeerTable
from dicom_gateway.edge.policy import StoredStudies, StorePolicy
from dicom_gateway.edge.query import EdgeQueryRetrieve
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.senders import SenderRegistry

__all__ = ["Edge"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
_INTERVAL_S = 1.0


class Edge:
    """Every part of the Orthanc edge.

    Parameters
    ----------
    settings
        The instance's settings (Orthanc's environment carries them as ``RADCLOUD_*``).

    Attributes
    ----------
    store
        The C-STORE filter.
    query
        C-FIND and C-MOVE.
    peers
        Senders and destinations, and Orthanc's copy of them.
    """

    def __init__(self, settings: Settings) -> None:
        secrets = load_secrets(settings)
        self.settings = settings
        self._db = Database.from_settings(settings)
        audit = AuditTrail.from_secrets(self._db, secrets)
        self._archive = open_archive(settings, secrets)
        orthanc_peers = OrthancPeers(self._archive)
        registry = SenderRegistry(self._db, audit, edge=GatewayEdge.ORTHANC)
        self.peers = PeerTable(registry, orthanc_peers)
        self.peers.refresh(mirror=False)  # the configuration file holds the same peers
        retrieve = QueryRetrievePolicy(registry, audit)
        self.stored = StoredStudies(retrieve)
        quarantine = Quarantine(
            settings.paths.quarantine_dir,
            limit_bytes=settings.gateway_quarantine_limit_mib * _MIB,
            max_files=settings.gateway_quarantine_max_files,
        )
        self.store = StorePolicy(
            self.peers,
            StudyOwnership(self._db, audit),
            quarantine,
            settings.gateway_max_instance_mib * _MIB,
            self.stored,
        )
        self.query = EdgeQueryRetrieve(
            self.peers,
            retrieve,
            QueryRetrieveArchive(self._archive, settings.gateway_ae_title),
            orthanc_peers,
        )
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()  # Orthanc's peers matched the registry once

    def start(self) -> None:
        """Start the background thread (peer sync, audit of stored studies)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="radcloud-edge", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(0.0 if not self.synced.is_set() else _INTERVAL_S):
            self.tick()
            if not self.synced.is_set():
                self._stopped.wait(0.2)

    def tick(self) -> None:
        """One round of background work; errors are logged and the next round tries again."""
        try:
            self.peers.refresh()
            self.synced.set()
        except Exception as exc:  # noqa: BLE001 - Orthanc starting or down: next round
            logger.debug("cannot bring Orthanc's peers up to date yet: %s", exc)
        try:
            self.stored.flush()
        except Exception:
            logger.exception("cannot write the audit records of stored studies")

    def stop(self) -> None:
        """Stop the background thread, write the pending audit records, close connections."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.stored.flush(everything=True)
        self._archive.close()
        self._db.dispose()

    def health(self) -> dict[str, Any]:
        """What the edge reports of itself (``GET /radcloud/edge`` on Orthanc's REST API)."""
        return {
            "edge": "orthanc",
            "ae_title": self.settings.gateway_ae_title,
            "port": self.settings.gateway_port,
            "peers_synced": self.synced.is_set(),
            "not_enforced": list(self.peers.problems()),
        }

    @staticmethod
    def metrics() -> bytes:
        """The gateway's metrics as counted in Orthanc's process (Prometheus text; the gateway
        process adds its DIMSE counters to its own ``/metrics``)."""
        return metrics.exposition()
