"""Who may send to the gateway (senders, by calling AE title and host) and where C-MOVE may
send (destinations), each mapped to a hospital. Stored in the application database.

A sender is bound to where it calls from: its host (a name, an address or a network in CIDR
notation, ``10.1.2.0/24``) and, over TLS with client certificates, its certificate, whose subject
must name the sender's AE title (CN) and hospital (O). An AE title alone is no credential (any
peer can claim one), so in prod mode a sender bound to neither is refused
(:meth:`SenderRegistry.authorise` with ``require_binding``).

Hospitals are tenants: a sender's C-FIND and C-MOVE see only the studies its own hospital sent
(:meth:`SenderRegistry.orthanc_study_ids`), and C-MOVE sends only to destinations of the same
hospital (or registered without one). Looking across hospitals is the cross-hospital API's job,
scoped, audited and de-identified.

Registering and removing senders and destinations changes who may reach the archive, so each
change is audited here, whichever door it came through, in the same transaction as the change:
110113 Security Alert, action C (registered) or D (removed), object ``sender`` or
``destination`` and its AE title; a refused change (an AE title taken or unknown, an invalid
AE title or port) with outcome 4, minor failure.

With the Orthanc edge (``RADCLOUD_GATEWAY_EDGE=orthanc``) Orthanc itself checks who associates
(:mod:`dicom_gateway.edge`): one entry per AE title with one host address, no networks, no
names, no certificate subject. A registry made with ``edge=GatewayEdge.ORTHANC`` therefore
refuses, with the reason, what that edge could not enforce: a sender without a host, a host
that is a network or a name, and a destination that shares a sender's AE title on another host.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.audit import AuditAction, AuditedChange, AuditTrail
from core.config import GatewayEdge, validate_ae_title
from core.db import Database
from core.db.models import Hospital, MoveDestination, Sender, Study
from core.exceptions import AlreadyExistsError, NotFoundError
from core.security import Actor
from core.tenancy import hospital_row
from dicom_gateway.exceptions import UnknownSenderError

__all__ = ["ClientCertificate", "DestinationInfo", "SenderInfo", "SenderRegistry"]

logger = logging.getLogger(__name__)

_DNS_TTL_S = 60.0


@dataclass(frozen=True)
class SenderInfo:
    """A registered sender."""

    ae_title: str
    hospital: str
    host: str | None


@dataclass(frozen=True)
class ClientCertificate:
    """The subject of a TLS client certificate the gateway verified against its CAs."""

    common_name: str | None
    organization: str | None


@dataclass(frozen=True)
class DestinationInfo:
    """A registered C-MOVE destination."""

    ae_title: str
    host: str
    port: int
    hospital: str | None


def _check_host(host: str) -> str:
    """``host`` if it is a name, an address or a CIDR network, else ``ValueError``."""
    host = host.strip()
    if "/" in host:
        try:
            ipaddress.ip_network(host, strict=False)
        except ValueError as exc:
            raise ValueError(
                f'host "{host}" is not valid: expected a name, an address or a CIDR network '
                "such as 10.1.2.0/24"
            ) from exc
    elif not host or any(c.isspace() for c in host):
        raise ValueError(f'host "{host}" is not valid: expected a name or an address')
    return host


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 address as IPv4), or ``None``."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class SenderRegistry:
    """Senders and C-MOVE destinations.

    Parameters
    ----------
    db
        The application database.
    audit
        The audit trail the registrations and removals are recorded in.
    edge
        Which DICOM edge enforces the registry (``RADCLOUD_GATEWAY_EDGE``): with
        ``orthanc``, registrations it cannot enforce are refused (the module docstring).
    """

    def __init__(
        self, db: Database, audit: AuditTrail, *, edge: GatewayEdge = GatewayEdge.PYNETDICOM
    ) -> None:
        self._db = db
        self._audit = audit
        self._edge = edge
        self._dns: dict[str, tuple[float, set[str]]] = {}

    def _check_orthanc_sender(self, session: Session, ae_title: str, host: str | None) -> None:
        """Refuse a sender the Orthanc edge could not hold to its host (``ValueError``)."""
        if self._edge is not GatewayEdge.ORTHANC:
            return
        if host is None or _address(host) is None:
            given = f'host "{host}"' if host else "no host"
            raise ValueError(
                f"{given} cannot be enforced by the Orthanc DICOM edge "
                "(RADCLOUD_GATEWAY_EDGE=orthanc): Orthanc checks a calling AE title against "
                "one IP address, with no networks, names or certificate subjects: expected "
                "--host with one IP address"
            )
        destination = session.scalar(
            select(MoveDestination).where(MoveDestination.ae_title == ae_title)
        )
        if destination is not None and _address(destination.host) != _address(host):
            raise ValueError(
                f'host "{host}" differs from destination {ae_title}\'s host '
                f'"{destination.host}": the Orthanc DICOM edge keeps one host per AE title'
            )

    def _check_orthanc_destination(self, session: Session, ae_title: str, host: str) -> None:
        """Refuse a destination sharing a sender's AE title on another host (``ValueError``)."""
        if self._edge is not GatewayEdge.ORTHANC:
            return
        sender = session.scalar(select(Sender).where(Sender.ae_title == ae_title))
        if sender is not None and (_address(host) or host) != (
            _address(sender.host or "") or sender.host
        ):
            raise ValueError(
                f'host "{host}" differs from sender {ae_title}\'s host "{sender.host}": the '
                "Orthanc DICOM edge keeps one host per AE title"
            )

    def _change(
        self, actor: Actor, action: AuditAction, kind: str, ae_title: str, **detail: Any
    ) -> AbstractContextManager[AuditedChange]:
        done = "registered" if action is AuditAction.CREATE else "removed"
        return self._audit.security_change(
            actor, action, kind, ae_title.strip(), change=f"{kind} {done}", **detail
        )

    # -- senders ---------------------------------------------------------------------------

    def add_sender(
        self, ae_title: str, hospital: str, host: str | None = None, *, actor: Actor
    ) -> SenderInfo:
        """Register a calling AE title for ``hospital`` (created if new), optionally bound to
        ``host`` (a name, an address or a CIDR network the association must come from).

        Raises
        ------
        AlreadyExistsError
            The AE title is registered already.
        ValueError
            The AE title (PS3.5 6.2) or the host is not valid.
        """
        with self._change(
            actor, AuditAction.CREATE, "sender", ae_title, hospital=hospital, host=host
        ) as change:
            ae_title = validate_ae_title(ae_title).strip()
            host = _check_host(host) if host is not None else None
            session = change.session
            if session.scalar(select(Sender).where(Sender.ae_title == ae_title)) is not None:
                raise AlreadyExistsError("sender", ae_title)
            self._check_orthanc_sender(session, ae_title, host)
            owner = hospital_row(session, hospital)
            session.add(Sender(ae_title=ae_title, hospital=owner, host=host))
        return SenderInfo(ae_title, hospital, host)

    def remove_sender(self, ae_title: str, *, actor: Actor) -> None:
        """Unregister a sender; :class:`NotFoundError` if it is not registered."""
        ae_title = ae_title.strip()
        with self._change(actor, AuditAction.DELETE, "sender", ae_title) as change:
            sender = change.session.scalar(select(Sender).where(Sender.ae_title == ae_title))
            if sender is None:
                raise NotFoundError("sender", ae_title)
            change.session.delete(sender)

    def list_senders(self) -> list[SenderInfo]:
        """Every sender, by AE title."""
        with self._db.session() as session:
            rows = session.scalars(select(Sender).order_by(Sender.ae_title))
            return [SenderInfo(s.ae_title, s.hospital.name, s.host) for s in rows]

    def _addresses(self, host: str) -> set[str]:
        cached = self._dns.get(host)
        if cached and time.monotonic() - cached[0] < _DNS_TTL_S:
            return cached[1]
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except OSError:
            logger.warning('cannot resolve registered sender host "%s"', host)
            addresses = set()
        addresses.add(host)
        self._dns[host] = (time.monotonic(), addresses)
        return addresses

    def _from_host(self, host: str, address: str | None) -> bool:
        """Whether ``address`` is ``host``: in its network, one of its addresses, or itself."""
        if address is None:
            return False
        if "/" in host:
            network = ipaddress.ip_network(host, strict=False)
            peer = _address(address)
            return peer is not None and peer.version == network.version and peer in network
        peer = _address(address)
        candidates = {_address(known) or known for known in self._addresses(host)}
        return (peer or address) in candidates

    def authorise(
        self,
        ae_title: str,
        address: str | None,
        certificate: ClientCertificate | None = None,
        *,
        require_binding: bool = False,
    ) -> SenderInfo:
        """The sender calling as ``ae_title`` from ``address``, if it may.

        Parameters
        ----------
        ae_title, address
            The calling AE title and the peer's address.
        certificate
            The subject of the peer's verified TLS client certificate, if it presented one.
        require_binding
            Refuse a sender bound neither to a host nor by ``certificate`` (prod mode).

        Raises
        ------
        UnknownSenderError
            The AE title is not registered; it is bound to a host that ``address`` is not; the
            certificate names another AE title or hospital; or ``require_binding`` and the
            sender is bound to nothing.
        """
        ae_title = ae_title.strip()
        with self._db.session() as session:
            sender = session.scalar(select(Sender).where(Sender.ae_title == ae_title))
            if sender is None:
                raise UnknownSenderError(ae_title, address, "calling AE title is not registered")
            info = SenderInfo(sender.ae_title, sender.hospital.name, sender.host)
        if info.host and not self._from_host(info.host, address):
            raise UnknownSenderError(
                ae_title, address, f'calling AE title is registered for host "{info.host}"'
            )
        if certificate is not None:
            named = (certificate.common_name, certificate.organization)
            if named != (info.ae_title, info.hospital):
                raise UnknownSenderError(
                    ae_title,
                    address,
                    f'client certificate names CN="{named[0]}", O="{named[1]}": expected '
                    f'CN="{info.ae_title}", O="{info.hospital}"',
                )
        elif require_binding and not info.host:
            raise UnknownSenderError(
                ae_title,
                address,
                "sender is bound to no host and presented no client certificate, which "
                "prod mode requires (radcloud senders add --host)",
            )
        return info

    def orthanc_study_ids(self, hospital: str) -> frozenset[str]:
        """Orthanc IDs of the studies ``hospital`` sent: what its senders may query and move."""
        with self._db.session() as session:
            rows = session.scalars(
                select(Study.orthanc_id)
                .join(Hospital, Study.hospital_id == Hospital.id)
                .where(Hospital.name == hospital, Study.orthanc_id.is_not(None))
            )
            return frozenset(row for row in rows if row)

    # -- C-MOVE destinations ---------------------------------------------------------------

    def add_destination(
        self, ae_title: str, host: str, port: int, hospital: str | None = None, *, actor: Actor
    ) -> DestinationInfo:
        """Register a C-MOVE destination.

        Raises
        ------
        AlreadyExistsError
            The AE title is registered already.
        ValueError
            Invalid AE title or port.
        """
        where = {"host": host, "port": port, "hospital": hospital}
        with self._change(actor, AuditAction.CREATE, "destination", ae_title, **where) as change:
            ae_title = validate_ae_title(ae_title).strip()
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not valid: expected 1-65535")
            session = change.session
            existing = session.scalar(
                select(MoveDestination).where(MoveDestination.ae_title == ae_title)
            )
            if existing is not None:
                raise AlreadyExistsError("destination", ae_title)
            self._check_orthanc_destination(session, ae_title, host)
            row = MoveDestination(ae_title=ae_title, host=host, port=port)
            if hospital:
                row.hospital_id = hospital_row(session, hospital).id
            session.add(row)
        return DestinationInfo(ae_title, host, port, hospital)

    def remove_destination(self, ae_title: str, *, actor: Actor) -> None:
        """Unregister a destination; :class:`NotFoundError` if it is not registered."""
        ae_title = ae_title.strip()
        with self._change(actor, AuditAction.DELETE, "destination", ae_title) as change:
            row = change.session.scalar(
                select(MoveDestination).where(MoveDestination.ae_title == ae_title)
            )
            if row is None:
                raise NotFoundError("destination", ae_title)
            change.session.delete(row)

    def list_destinations(self) -> list[DestinationInfo]:
        """Every destination, by AE title."""
        with self._db.session() as session:
            rows = session.scalars(select(MoveDestination).order_by(MoveDestination.ae_title))
            return [self._destination(session, row) for row in rows]

    def destination(self, ae_title: str) -> DestinationInfo | None:
        """The destination registered as ``ae_title``, or ``None``."""
        with self._db.session() as session:
            row = session.scalar(
                select(MoveDestination).where(MoveDestination.ae_title == ae_title.strip())
            )
            return self._destination(session, row) if row else None

    @staticmethod
    def _destination(session: Session, row: MoveDestination) -> DestinationInfo:
        hospital = session.get(Hospital, row.hospital_id) if row.hospital_id else None
        return DestinationInfo(
            row.ae_title, row.host, row.port, hospital.name if hospital else None
        )
