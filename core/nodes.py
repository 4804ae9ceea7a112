"""Remote nodes: other hospitals' archives reached over DICOMweb, registered by an operator
(``radcloud hospitals add NAME --dicomweb URL``), beside the hospitals that are tenants here.

A remote node is a hospital row (:func:`core.tenancy.hospital_row`) with a ``remote_nodes``
row: its DICOMweb service root, the CA file its TLS certificate is checked against, its read
timeout and the kind of its credentials. The credentials themselves (HTTP basic or a bearer
token) live in ``RADCLOUD_HOME/node-credentials.json`` (0600, atomic writes), never in the
database, a log, an audit record or a ``repr``. :meth:`NodeRegistry.sites` lists every tenant
and every remote node, what a federated query fans out to; :meth:`NodeRegistry.open_archive`
gives a node's :class:`~core.archive.DicomwebArchive`.

Registering and removing a node is audited like the other changes of who is reached
(110113 Security Alert, action C or D, object ``remote_node`` and its name, in the same
transaction; a refused change with outcome 4). Errors: :class:`~core.exceptions.NotFoundError`,
:class:`~core.exceptions.AlreadyExistsError`, ``ValueError`` for an invalid URL, CA file or
timeout.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from core.archive import (
    ArchiveError,
    DicomwebArchive,
    NodeCheck,
    RemoteNode,
    node_status,
    open_node_archive,
)
from core.audit import AuditAction, AuditTrail
from core.config import Settings
from core.db import Database
from core.db.models import Hospital, RemoteDicomwebNode
from core.exceptions import AlreadyExistsError, NotFoundError
from core.security import Actor
from core.security._node_credentials import NodeCredentials, NodeCredentialStore
from core.tenancy import find_hospital, hospital_row

__all__ = ["NodeCredentials", "NodeRegistry", "Site", "check_archive", "validate_dicomweb_url"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Site:
    """A hospital a federated query may ask: a tenant of this deployment, or a remote node."""

    name: str
    remote: RemoteNode | None = None

    @property
    def is_remote(self) -> bool:
        """Whether it is a remote node (else a tenant)."""
        return self.remote is not None


def validate_dicomweb_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an ``http`` or ``https`` URL with a host and
    no credentials in it.

    Raises
    ------
    ValueError
        Naming what is wrong.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f'DICOMweb URL "{_redacted(url)}" is not valid: expected http(s)://host[:port]/path'
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "a DICOMweb URL must not hold credentials: give --username and --password-stdin"
        )
    if parts.query or parts.fragment:
        raise ValueError("a DICOMweb URL must not have a query or fragment")
    return url.strip().rstrip("/")


def _redacted(url: str) -> str:
    """``url`` with any credentials in it replaced, for the audit trail and messages."""
    parts = urlsplit(url.strip())
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"<redacted>@{host}").geturl()


def check_archive(archive: DicomwebArchive, name: str) -> NodeCheck:
    """Ask a node's QIDO-RS ``/studies?limit=1`` and sort the outcome
    (:func:`~core.archive.node_status`): ``ok``, ``refused`` (401/403), ``unreachable``,
    ``timeout`` or ``error``, with the reason. Never raises for the node's failure."""
    started = time.monotonic()
    try:
        found = archive.search_for_studies(limit=1)
    except ArchiveError as exc:
        return NodeCheck(name, node_status(exc), str(exc), time.monotonic() - started)
    reason = "answered QIDO-RS" + (" (it holds studies)" if found else " (no study)")
    return NodeCheck(name, node_status(None), reason, time.monotonic() - started)


def _node(row: RemoteDicomwebNode) -> RemoteNode:
    return RemoteNode(
        name=row.hospital.name,
        dicomweb_url=row.dicomweb_url,
        ca_file=Path(row.ca_file) if row.ca_file else None,
        timeout_s=row.timeout_s,
        auth=row.auth,
    )


class NodeRegistry:
    """The remote nodes of this deployment.

    Parameters
    ----------
    db
        The application database.
    audit
        The audit trail the registrations and removals are recorded in.
    settings
        ``home`` (the credentials file) and the remote timeouts.
    """

    def __init__(self, db: Database, audit: AuditTrail, settings: Settings) -> None:
        self._db = db
        self._audit = audit
        self._settings = settings
        self._store = NodeCredentialStore(settings.home)

    def add_node(
        self,
        name: str,
        dicomweb_url: str,
        *,
        credentials: NodeCredentials | None = None,
        ca_file: Path | None = None,
        timeout_s: float | None = None,
        actor: Actor,
    ) -> RemoteNode:
        """Register hospital ``name`` as a remote node at ``dicomweb_url``.

        Parameters
        ----------
        name
            The hospital's name; no hospital of that name may exist (a tenant is not a node).
        dicomweb_url
            Its DICOMweb service root.
        credentials
            Stored in the credentials file, never in the database.
        ca_file
            PEM file of the CAs that sign its certificate (stored as an absolute path).
        timeout_s
            Its read timeout (else ``RADCLOUD_REMOTE_READ_TIMEOUT_S``).
        actor
            Who registers it (audited).

        Raises
        ------
        AlreadyExistsError
            A hospital (tenant or node) of that name exists.
        ValueError
            The URL, CA file or timeout is not valid.
        """
        credentials = credentials or NodeCredentials()
        detail = {"dicomweb_url": _redacted(dicomweb_url), "auth": credentials.kind}
        with self._audit.security_change(
            actor,
            AuditAction.CREATE,
            "remote_node",
            name,
            change="remote node registered",
            **detail,
        ) as change:
            url = validate_dicomweb_url(dicomweb_url)
            if ca_file is not None:
                ca_file = ca_file.expanduser().resolve()
                if not ca_file.is_file():
                    raise ValueError(f'CA file "{ca_file}" does not exist')
            if timeout_s is not None and not 0 < timeout_s <= 3600:
                raise ValueError(f"timeout {timeout_s:g} s is not valid: expected 0 < S <= 3600")
            session = change.session
            if find_hospital(session, name) is not None:
                raise AlreadyExistsError("hospital", name)
            hospital = hospital_row(session, name)
            row = RemoteDicomwebNode(
                hospital=hospital,
                dicomweb_url=url,
                ca_file=str(ca_file) if ca_file is not None else None,
                timeout_s=timeout_s,
                auth=credentials.kind,
            )
            session.add(row)
            session.flush()
            change.detail.update(ca_file=row.ca_file, timeout_s=timeout_s)
            self._store.put(name, credentials)  # before the commit: a failure rolls it back
            node = _node(row)
        logger.info("remote node %s registered at %s", name, url)
        return node

    def remove_node(self, name: str, *, actor: Actor) -> None:
        """Unregister node ``name`` and forget its credentials; its hospital row goes too
        unless something else refers to it (users assigned to it, studies).

        Raises
        ------
        NotFoundError
            No remote node of that name.
        """
        with self._audit.security_change(
            actor, AuditAction.DELETE, "remote_node", name, change="remote node removed"
        ) as change:
            session = change.session
            row = session.scalar(
                select(RemoteDicomwebNode).join(Hospital).where(Hospital.name == name)
            )
            if row is None:
                raise NotFoundError("remote node", name)
            hospital_id = row.hospital_id
            session.delete(row)
            session.flush()
            try:
                with session.begin_nested():
                    session.execute(delete(Hospital).where(Hospital.id == hospital_id))
                change.detail["hospital_removed"] = True
            except IntegrityError:
                change.detail["hospital_removed"] = False  # still referred to: kept
            self._store.delete(name)

    def list_nodes(self) -> list[RemoteNode]:
        """Every remote node, by name (no credentials)."""
        with self._db.session() as session:
            rows = session.scalars(
                select(RemoteDicomwebNode).join(Hospital).order_by(Hospital.name)
            )
            return [_node(row) for row in rows]

    def sites(self) -> list[Site]:
        """Every hospital, by name: the tenants of this deployment and the remote nodes."""
        with self._db.session() as session:
            nodes = {
                row.hospital_id: _node(row) for row in session.scalars(select(RemoteDicomwebNode))
            }
            hospitals = session.scalars(select(Hospital).order_by(Hospital.name))
            return [Site(h.name, nodes.get(h.id)) for h in hospitals]

    def get_node(self, name: str) -> RemoteNode:
        """The remote node called ``name``; :class:`NotFoundError` if there is none."""
        with self._db.session() as session:
            row = session.scalar(
                select(RemoteDicomwebNode).join(Hospital).where(Hospital.name == name)
            )
            if row is None:
                raise NotFoundError("remote node", name)
            return _node(row)

    def credentials(self, name: str) -> NodeCredentials | None:
        """Node ``name``'s credentials from the credentials file (``None``: it has none)."""
        return self._store.get(name)

    def open_archive(self, name: str) -> DicomwebArchive:
        """Node ``name``'s archive (:func:`~core.archive.open_node_archive`); close it."""
        node = self.get_node(name)
        return open_node_archive(node, self.credentials(name), self._settings)

    def check_node(self, name: str) -> NodeCheck:
        """Ask node ``name``'s QIDO-RS whether it answers (:func:`check_archive`); a node
        that cannot even be opened (its CA file gone) is an ``error``.

        Raises
        ------
        NotFoundError
            No remote node of that name.
        """
        try:
            archive = self.open_archive(name)
        except ArchiveError as exc:
            return NodeCheck(name, node_status(exc), str(exc), 0.0)
        with archive:
            return check_archive(archive, name)
