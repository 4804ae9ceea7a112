"""Orthanc's DICOM peers (its ``DicomModalities``): who may associate with Orthanc's own DICOM
server, and where it sends C-STORE sub-operations.

Orthanc checks every association against this table (with ``DicomCheckModalityHost``: the
calling AE title and the peer's address; per service: ``Allow*``), and sends only to a peer in
it (``POST /modalities/{name}/store``). The DICOM edge in ``orthanc`` mode
(:mod:`dicom_gateway.edge`) keeps it equal to radcloud's senders and C-MOVE destinations; the
table is Orthanc's configuration file at start, then changed at run time through
``PUT``/``DELETE /modalities/{name}`` (held in memory: ``DicomModalitiesInDatabase`` is off, the
configuration file is rewritten at every start).

Orthanc 1.10 looks a calling AE title up in one entry only (the first by name), so an AE title
has one entry: one host (an address, no network), one port.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from core.archive.exceptions import ArchiveError, ArchiveNotFoundError
from core.archive.model import ArchiveId
from core.archive.orthanc_archive import OrthancArchive
from core.config import validate_ae_title

__all__ = ["DicomModality", "OrthancPeers"]

logger = logging.getLogger(__name__)

_STORE_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class DicomModality:
    """A DICOM peer of Orthanc (Orthanc's ``DicomModalities`` entry).

    Parameters
    ----------
    ae_title
        The peer's AE title (PS3.5 6.2); with ``DicomCheckCalledAet`` and
        ``DicomCheckModalityHost`` on, the calling AE title and host must both match.
    host, port
        Where the peer's own SCP listens.
    allow_echo, allow_find, allow_get, allow_move, allow_store
        Which DIMSE services (PS3.4) the peer may request.
    allow_storage_commitment
        Whether it may ask for storage commitment (N-ACTION) and be sent its N-EVENT-REPORT:
        off, radcloud offers no storage commitment (Orthanc's default would answer it for any
        study, whichever hospital's).
    """

    ae_title: str
    host: str
    port: int
    allow_echo: bool = True
    allow_find: bool = True
    allow_get: bool = True
    allow_move: bool = True
    allow_store: bool = True
    allow_storage_commitment: bool = False

    def __post_init__(self) -> None:
        validate_ae_title(self.ae_title)
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} of modality {self.ae_title!r}: expected 1-65535")

    def to_orthanc(self) -> dict[str, Any]:
        """The entry's value in Orthanc's configuration and ``PUT /modalities/{name}``."""
        return {
            "AET": self.ae_title,
            "Host": self.host,
            "Port": self.port,
            "AllowEcho": self.allow_echo,
            "AllowFind": self.allow_find,
            "AllowGet": self.allow_get,
            "AllowMove": self.allow_move,
            "AllowStore": self.allow_store,
            "AllowNAction": self.allow_storage_commitment,
            "AllowEventReport": self.allow_storage_commitment,
        }

    @classmethod
    def from_orthanc(cls, entry: dict[str, Any]) -> DicomModality:
        """An entry as ``GET /modalities?expand`` answers it."""
        return cls(
            ae_title=str(entry["AET"]),
            host=str(entry["Host"]),
            port=int(entry["Port"]),
            allow_echo=bool(entry.get("AllowEcho", True)),
            allow_find=bool(entry.get("AllowFind", True)),
            allow_get=bool(entry.get("AllowGet", True)),
            allow_move=bool(entry.get("AllowMove", True)),
            allow_store=bool(entry.get("AllowStore", True)),
            allow_storage_commitment=bool(entry.get("AllowNAction", True))
            and bool(entry.get("AllowEventReport", True)),
        )


class OrthancPeers:
    """Orthanc's peer table over its REST API, and C-STORE to a peer.

    Parameters
    ----------
    archive
        The Orthanc archive whose connection (and error mapping) is used.
    """

    def __init__(self, archive: OrthancArchive) -> None:
        self._archive = archive

    @staticmethod
    def _path(name: str) -> str:
        return f"/modalities/{quote(name, safe='')}"

    def list(self) -> dict[str, DicomModality]:
        """Every peer, by name.

        Raises
        ------
        ArchiveError
            Orthanc cannot be reached or answers otherwise.
        """
        answer = self._archive._json("GET", "/modalities", params={"expand": ""})
        if not isinstance(answer, dict):
            raise ArchiveError(f"Orthanc GET /modalities answered {type(answer).__name__}")
        return {name: DicomModality.from_orthanc(entry) for name, entry in answer.items()}

    def put(self, name: str, modality: DicomModality) -> None:
        """Add or replace the peer ``name``."""
        self._archive._send("PUT", self._path(name), json=modality.to_orthanc())

    def delete(self, name: str) -> None:
        """Remove the peer ``name`` (nothing happens when there is none)."""
        try:
            self._archive._send("DELETE", self._path(name))
        except ArchiveNotFoundError:
            logger.debug("Orthanc has no peer %s to remove", name)

    def store(self, name: str, instances: Sequence[ArchiveId]) -> dict[str, Any]:
        """Send ``instances`` to the peer ``name`` with C-STORE, one association, and wait.

        Returns
        -------
        dict[str, Any]
            Orthanc's job answer (``FailedInstancesCount``, ``InstancesCount``, ...).

        Raises
        ------
        ArchiveError
            Orthanc cannot be reached, or the peer refused or could not be reached.
        """
        body = {"Resources": list(instances), "Synchronous": True}
        answer = self._archive._json(
            "POST", f"{self._path(name)}/store", json=body, timeout_s=_STORE_TIMEOUT_S
        )
        return answer if isinstance(answer, dict) else {}
