"""Who may send to the gateway (senders, by calling AE title and host) and where C-MOVE may
send (destinations), each mapped to a hospital. Stored in the application database.

Hospitals are tenants: a sender's C-FIND and C-MOVE see only the studies its own hospital sent
(:meth:`SenderRegistry.orthanc_study_ids`), and C-MOVE sends only to destinations of the same
hospital (or registered without one). Looking across hospitals is the cross-hospital API's job,
scoped, audited and de-identified.

Registering and removing senders and destinations changes who may reach the archive, so each
change is audited here, whichever door it came through, in the same transaction as the change:
110113 Security Alert, action C (registered) or D (removed), object ``sender`` or
``destination`` and its AE title; a refused change (an AE title taken or unknown, an invalid
AE title or port) with outcome 4, minor failure.
"""

from __future__ import annotations

import logging
import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.audit import AuditAction, AuditedChange, AuditTrail
from core.config import validate_ae_title
from core.db import Database
from core.db.models import Hospital, MoveDestination, Sender, Study
from core.exceptions import AlreadyExistsError, NotFoundError
from core.security import Actor
from core.tenancy import hospital_row
from dicom_gateway.exceptions import UnknownSenderError

__all__ = ["DestinationInfo", "SenderInfo", "SenderRegistry"]

logger = logging.getLogger(__name__)

_DNS_TTL_S = 60.0


@dataclass(frozen=True)
class SenderInfo:
    """A registered sender."""

    ae_title: str
    hospital: str
    host: str | None


@dataclass(frozen=True)
class DestinationInfo:
    """A registered C-MOVE destination."""

    ae_title: str
    host: str
    port: int
    hospital: str | None


class SenderRegistry:
    """Senders and C-MOVE destinations.

    Parameters
    ----------
    db
        The application database.
    audit
        The audit trail the registrations and removals are recorded in.
    """

    def __init__(self, db: Database, audit: AuditTrail) -> None:
        self._db = db
        self._audit = audit
        self._dns: dict[str, tuple[float, set[str]]] = {}

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
        ``host`` (a name or address the association must come from).

        Raises
        ------
        AlreadyExistsError
            The AE title is registered already.
        ValueError
            The AE title is not valid (PS3.5 6.2).
        """
        with self._change(
            actor, AuditAction.CREATE, "sender", ae_title, hospital=hospital, host=host
        ) as change:
            ae_title = validate_ae_title(ae_title).strip()
            session = change.session
            if session.scalar(select(Sender).where(Sender.ae_title == ae_title)) is not None:
                raise AlreadyExistsError("sender", ae_title)
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

    def authorise(self, ae_title: str, address: str | None) -> SenderInfo:
        """The sender calling as ``ae_title`` from ``address``, if it may.

        Raises
        ------
        UnknownSenderError
            The AE title is not registered, or it is bound to a host that ``address`` is not.
        """
        ae_title = ae_title.strip()
        with self._db.session() as session:
            sender = session.scalar(select(Sender).where(Sender.ae_title == ae_title))
            if sender is None:
                raise UnknownSenderError(ae_title, address, "calling AE title is not registered")
            info = SenderInfo(sender.ae_title, sender.hospital.name, sender.host)
        if info.host and (address is None or address not in self._addresses(info.host)):
            raise UnknownSenderError(
                ae_title, address, f'calling AE title is registered for host "{info.host}"'
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
