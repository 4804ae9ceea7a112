"""radcloud's senders and C-MOVE destinations as Orthanc's DICOM peers.

Orthanc checks every association against its peer table (``DicomCheckModalityHost``,
``DicomCheckCalledAet``, ``DicomAlwaysAllow*`` off): the calling AE title must have an entry
whose host is the peer's address, and the entry must allow the service. The edge keeps that
table equal to radcloud's registry:

- a sender becomes an entry with its AE title and host (one IP address: Orthanc compares it
  with the peer's address, with no networks and no names; :class:`SenderRegistry` refuses
  others with ``edge=orthanc``), allowed C-ECHO, C-STORE, C-FIND and C-MOVE, never C-GET
  (Orthanc would answer it unscoped);
- a C-MOVE destination becomes an entry allowed nothing, which Orthanc sends to; a destination
  with a sender's AE title shares the sender's entry (Orthanc looks an AE title up in one
  entry), with the destination's port.

Entries are named ``radcloud-<AE title in hex>``; entries named otherwise are left alone. A
registration that cannot be mirrored (registered before ``edge=orthanc``) is skipped and
reported by :meth:`PeerTable.problems`, and logged.

:class:`PeerTable` also answers the C-STORE filter's question, "which sender is this AE
title", from memory: it is refreshed from the database by :meth:`PeerTable.refresh` (the edge
calls it every second), so the filter costs no database round trip.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.archive import ArchiveError
from core.archive.orthanc_archive import OrthancArchive
from core.archive.orthanc_peers import DicomModality, OrthancPeers
from core.config import GatewayEdge, Settings
from core.secrets import load_secrets
from dicom_gateway.senders import DestinationInfo, SenderInfo, SenderRegistry

__all__ = [
    "PEER_PREFIX",
    "PeerTable",
    "peer_name",
    "peers_of",
    "wait_until_admitted",
    "wait_until_mirrored",
]

logger = logging.getLogger(__name__)

PEER_PREFIX = "radcloud-"
_NO_PORT = 104  # a sender's entry needs a port; Orthanc sends to it only for a destination


def peer_name(ae_title: str) -> str:
    """The name of the peer entry of ``ae_title`` (hex: an AE title may hold any character)."""
    return PEER_PREFIX + ae_title.encode().hex()


def wait_until_mirrored(
    archive: OrthancArchive, ae_titles: Iterable[str], *, timeout_s: float = 5.0
) -> bool:
    """Wait until the running edge has mirrored ``ae_titles`` into Orthanc's peer table (its
    plugin does within a second of a registration), so that a sender registered a moment ago
    is admitted at its first association.

    Returns
    -------
    bool
        ``True`` once every entry is there; ``False`` when not within ``timeout_s`` or when
        Orthanc does not answer (not running: it reads the registry when it starts).
    """
    wanted = {peer_name(ae_title) for ae_title in ae_titles}
    peers = OrthancPeers(archive)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if wanted <= set(peers.list()):
                return True
        except ArchiveError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def wait_until_admitted(
    settings: Settings, ae_titles: Iterable[str], *, timeout_s: float = 5.0
) -> bool:
    """Wait until radcloud's DICOM edge admits the registered ``ae_titles``: at once with the
    pynetdicom edge (it reads the registry at each association), once mirrored with the
    Orthanc edge (:func:`wait_until_mirrored`, against every running archive node)."""
    if settings.gateway_edge is not GatewayEdge.ORTHANC:
        return True
    secrets = load_secrets(settings)
    titles = list(ae_titles)
    for node in range(settings.orthanc_nodes):  # each node's plugin mirrors into its own table
        with OrthancArchive(
            settings.orthanc_node_url(node),
            username=secrets.orthanc_user,
            password=secrets.orthanc_password,
            timeout_s=5,
        ) as archive:
            if not wait_until_mirrored(archive, titles, timeout_s=timeout_s):
                return False
    return True


def _ip(host: str | None) -> str | None:
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host.strip()))
    except ValueError:
        return None


@dataclass(frozen=True)
class _Mirror:
    modalities: dict[str, DicomModality]
    problems: tuple[str, ...]


def peers_of(
    senders: Iterable[SenderInfo], destinations: Iterable[DestinationInfo]
) -> tuple[dict[str, DicomModality], list[str]]:
    """Orthanc's peer entries for ``senders`` and ``destinations``, and what cannot be mirrored.

    Returns
    -------
    tuple[dict[str, DicomModality], list[str]]
        The entries by name, and one sentence per registration left out.
    """
    modalities: dict[str, DicomModality] = {}
    problems: list[str] = []
    hosts: dict[str, str] = {}
    for sender in senders:
        address = _ip(sender.host)
        if address is None:
            problems.append(
                f'sender {sender.ae_title} (host "{sender.host or "none"}") is not admitted: '
                "the Orthanc edge needs one IP address per sender"
            )
            continue
        hosts[sender.ae_title] = address
        modalities[peer_name(sender.ae_title)] = DicomModality(
            sender.ae_title, address, _NO_PORT, allow_get=False
        )
    for destination in destinations:
        name = peer_name(destination.ae_title)
        sender_host = hosts.get(destination.ae_title)
        if sender_host is None:
            modalities[name] = DicomModality(
                destination.ae_title,
                destination.host,
                destination.port,
                allow_echo=False,
                allow_find=False,
                allow_get=False,
                allow_move=False,
                allow_store=False,
            )
        elif _ip(destination.host) == sender_host:
            modalities[name] = DicomModality(
                destination.ae_title, sender_host, destination.port, allow_get=False
            )
        else:
            problems.append(
                f'destination {destination.ae_title} (host "{destination.host}") is not '
                f"reachable by C-MOVE: its AE title is a sender's on {sender_host}, and the "
                "Orthanc edge keeps one host per AE title"
            )
    return modalities, problems


class PeerTable:
    """The senders and destinations the edge knows, from memory, and Orthanc's copy of them.

    Parameters
    ----------
    registry
        radcloud's senders and destinations (the database).
    peers
        Orthanc's peer table; ``None``: nothing is mirrored (tests of the policy alone).
    """

    def __init__(self, registry: SenderRegistry, peers: OrthancPeers | None) -> None:
        self._registry = registry
        self._peers = peers
        self._lock = threading.Lock()
        self._senders: dict[str, SenderInfo] = {}
        self._mirror = _Mirror({}, ())
        self._applied: dict[str, DicomModality] | None = None

    def sender(self, ae_title: str) -> SenderInfo | None:
        """The sender registered as ``ae_title`` when last refreshed, or ``None``."""
        return self._senders.get(ae_title.strip())

    def problems(self) -> tuple[str, ...]:
        """The registrations the edge cannot enforce (each one sentence)."""
        return self._mirror.problems

    def modalities(self) -> Mapping[str, DicomModality]:
        """The peer entries the registry asks for (Orthanc's configuration at start)."""
        return dict(self._mirror.modalities)

    def refresh(self, *, mirror: bool = True) -> None:
        """Read the registry again and (``mirror``) bring Orthanc's peer table up to date.

        Raises
        ------
        core.archive.ArchiveError
            Orthanc cannot be reached; the next refresh tries again.
        """
        senders = self._registry.list_senders()
        destinations = self._registry.list_destinations()
        modalities, problems = peers_of(senders, destinations)
        with self._lock:
            self._senders = {sender.ae_title: sender for sender in senders}
            if set(problems) - set(self._mirror.problems):
                for problem in problems:
                    logger.error("%s", problem)
            self._mirror = _Mirror(modalities, tuple(problems))
            if not mirror or self._peers is None or modalities == self._applied:
                return
            self._apply(self._peers, modalities)
            self._applied = modalities

    @staticmethod
    def _apply(peers: OrthancPeers, wanted: dict[str, DicomModality]) -> None:
        current = {name: m for name, m in peers.list().items() if name.startswith(PEER_PREFIX)}
        for name in sorted(set(current) - set(wanted)):
            logger.info("removing %s (%s) from Orthanc's peers", name, current[name].ae_title)
            peers.delete(name)
        for name, modality in sorted(wanted.items()):
            if current.get(name) != modality:
                logger.info("peer %s: %s at %s", name, modality.ae_title, modality.host)
                peers.put(name, modality)
