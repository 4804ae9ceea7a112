"""The seam's factories: radcloud's Orthanc (:func:`open_archive`, :func:`open_local_dicomweb`)
and a remote DICOMweb node (:func:`open_node_archive`); a health check of Orthanc and a wait for
its start-up.

:func:`dicomweb_client` serves the API's DICOMweb pass-through, which relays DICOMweb (not
Orthanc's REST API) to Orthanc's plugin.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import httpx

from core.archive.dicomweb_archive import DicomwebArchive
from core.archive.model import RemoteNode
from core.archive.orthanc_archive import OrthancArchive
from core.archive.relay import HttpEndpoint
from core.config import Settings
from core.exceptions import StartupError
from core.secrets import Secrets

__all__ = [
    "NodeAuth",
    "dicomweb_client",
    "open_archive",
    "open_local_dicomweb",
    "open_node_archive",
    "orthanc_healthy",
    "wait_for_orthanc",
]

ORTHANC_DICOMWEB_ROOT = "/dicom-web"  # radcloud/services/orthanc.py: DicomWeb.Root


class NodeAuth(Protocol):
    """A node's credentials (:class:`core.nodes.NodeCredentials`): basic, a token, or none."""

    @property
    def username(self) -> str | None: ...

    @property
    def password(self) -> str | None: ...

    @property
    def token(self) -> str | None: ...


def open_node_archive(
    node: RemoteNode, credentials: NodeAuth | None, settings: Settings
) -> DicomwebArchive:
    """A remote node's archive over DICOMweb.

    Parameters
    ----------
    node
        The node as registered (:func:`core.nodes.NodeRegistry.get_node`).
    credentials
        Its credentials (:meth:`core.nodes.NodeRegistry.credentials`), ``None`` for none.
    settings
        ``remote_connect_timeout_s``, ``remote_read_timeout_s`` (unless the node has its own
        ``timeout_s``) and ``archive_max_find_results`` are used.

    Returns
    -------
    DicomwebArchive
        An :class:`~core.archive.ImageArchive`; close it, or use it as a context manager.
    """
    return DicomwebArchive(
        node.dicomweb_url,
        username=credentials.username if credentials else None,
        password=credentials.password if credentials else None,
        token=credentials.token if credentials else None,
        ca_file=node.ca_file,
        connect_timeout_s=settings.remote_connect_timeout_s,
        read_timeout_s=node.timeout_s or settings.remote_read_timeout_s,
        max_find_results=settings.archive_max_find_results,
        name=node.name,
    )


def open_local_dicomweb(
    settings: Settings, secrets: Secrets, *, timeout_s: float = 30.0, node: int | None = None
) -> DicomwebArchive:
    """radcloud's own Orthanc seen through its DICOMweb plugin: the same interface, and the
    same streaming (:meth:`DicomwebArchive.open_dicomweb_stream`), as a remote node's, so a
    fan-out treats the local archive and remote nodes alike. ``node``: that archive node's
    (``orthanc_nodes``), else ``settings.orthanc_url``'s."""
    root = settings.orthanc_url if node is None else settings.orthanc_node_url(node)
    return DicomwebArchive(
        f"{root}{ORTHANC_DICOMWEB_ROOT}",
        username=secrets.orthanc_user,
        password=secrets.orthanc_password,
        connect_timeout_s=settings.remote_connect_timeout_s,
        read_timeout_s=timeout_s,
        max_find_results=settings.archive_max_find_results,
        name="local",
    )


logger = logging.getLogger(__name__)


def open_archive(
    settings: Settings, secrets: Secrets, *, timeout_s: float = 30.0
) -> OrthancArchive:
    """radcloud's image archive: its Orthanc, authenticated with the generated credentials.

    With several archive nodes (``orthanc_nodes``) the archive spreads its requests over every
    node and fails over to another when one is down (:class:`OrthancArchive`); inside node k
    (``orthanc_node`` set: the edge plugin) it talks to that node only, whose DICOM peers and
    jobs are its own.

    Parameters
    ----------
    settings
        ``orthanc_node_urls`` (or ``orthanc_url`` inside a node) is used.
    secrets
        ``orthanc_user`` and ``orthanc_password`` are used.
    timeout_s
        Timeout of each request (ZIP downloads allow at least 120 s).

    Returns
    -------
    OrthancArchive
        An :class:`~core.archive.ImageArchive` (and :class:`~core.archive.AnonymizingArchive`);
        close it, or use it as a context manager.
    """
    nodes = settings.orthanc_node_urls if settings.orthanc_node is None else [settings.orthanc_url]
    return OrthancArchive(
        nodes,
        username=secrets.orthanc_user,
        password=secrets.orthanc_password,
        timeout_s=timeout_s,
        max_find_results=settings.archive_max_find_results,
    )


def dicomweb_client(
    settings: Settings, secrets: Secrets, *, timeout_s: float = 30.0
) -> httpx.Client:
    """An HTTP client of Orthanc's DICOMweb plugin, for the API's QIDO-RS/WADO-RS pass-through.

    The pass-through relays DICOMweb requests and streams the answers (``serving/api/routes/
    dicomweb.py``); it speaks DICOMweb, not Orthanc's REST API, which only the archive seam
    (:func:`open_archive`) speaks.

    Returns
    -------
    httpx.Client
        Authenticated with the generated credentials, ``base_url`` Orthanc's address (node 0's;
        with several archive nodes a node that cannot be reached is passed over:
        :class:`NodeFailover`); close it, or use it as a context manager.
    """
    transport = None
    if settings.orthanc_nodes > 1 and settings.orthanc_node is None:
        ports = [int(httpx.URL(root).port or 80) for root in settings.orthanc_node_urls]
        transport = NodeFailover(ports)
    return httpx.Client(
        base_url=settings.orthanc_url,
        auth=(secrets.orthanc_user, secrets.orthanc_password),
        timeout=timeout_s,
        transport=transport,
    )


class NodeFailover(httpx.BaseTransport):
    """A transport for requests addressed to node 0 (``ports[0]``) that sends a request the
    node could not be connected to (nothing was sent) to the next node's port instead.

    The request keeps its ``Host`` header, so Orthanc's DICOMweb plugin writes node 0's base in
    the URLs of its answer, which the pass-through rewrites as it always did.
    """

    def __init__(self, ports: list[int]) -> None:
        self._ports = ports
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.port != self._ports[0]:
            return self._inner.handle_request(request)
        for port in self._ports[:-1]:
            try:
                return self._inner.handle_request(self._to(request, port))
            except httpx.ConnectError as exc:
                logger.warning("archive node on port %d cannot be reached (%s): next", port, exc)
        return self._inner.handle_request(self._to(request, self._ports[-1]))

    @staticmethod
    def _to(request: httpx.Request, port: int) -> httpx.Request:
        if request.url.port == port:
            return request
        return httpx.Request(
            request.method,
            request.url.copy_with(port=port),
            headers=request.headers,  # the Host header stays node 0's
            stream=request.stream,
            extensions=request.extensions,
        )

    def close(self) -> None:
        self._inner.close()


def local_endpoint(
    settings: Settings, secrets: Secrets, *, timeout_s: float = 30.0
) -> HttpEndpoint:
    """This deployment's Orthanc (its root: the DICOMweb service is below ``dicom-web/``) as
    an :class:`~core.archive.relay.HttpEndpoint`, for a relay on an event loop; with several
    archive nodes, node 0 with the others as fallbacks (a node that cannot be reached is passed
    over, as :class:`NodeFailover` does for the pass-through)."""
    roots = [f"{str(url).rstrip('/')}/" for url in settings.orthanc_node_urls]
    if settings.orthanc_node is not None:  # a node's own process: its own node only
        roots = [f"{str(settings.orthanc_url).rstrip('/')}/"]
    return HttpEndpoint(
        roots[0],
        (secrets.orthanc_user, secrets.orthanc_password),
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
        fallback_urls=tuple(roots[1:]),
    )


def orthanc_healthy(
    settings: Settings, secrets: Secrets, *, timeout_s: float = 2.0, node: int | None = None
) -> bool:
    """Whether Orthanc answers ``GET /system`` with 200 and a JSON object.

    Parameters
    ----------
    settings, secrets
        Where Orthanc is and the credentials it demands.
    timeout_s
        Timeout of the request.
    node
        Which archive node (``orthanc_nodes``); ``None``: ``settings.orthanc_url``'s.

    Returns
    -------
    bool
        ``False`` on any connection error, error status or unexpected body.
    """
    root = settings.orthanc_url if node is None else settings.orthanc_node_url(node)
    url = f"{root}/system"
    try:
        response = httpx.get(
            url, auth=(secrets.orthanc_user, secrets.orthanc_password), timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        logger.debug("GET %s failed: %s", url, exc)
        return False
    if response.status_code != 200:
        logger.debug("GET %s answered %d", url, response.status_code)
        return False
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        logger.debug("GET %s did not answer JSON", url)
        return False


def wait_for_orthanc(
    settings: Settings,
    secrets: Secrets,
    *,
    timeout_s: float | None = None,
    interval_s: float = 0.2,
) -> None:
    """Block until Orthanc is healthy (see :func:`orthanc_healthy`): every archive node.

    Parameters
    ----------
    settings, secrets
        Where Orthanc is and the credentials it demands.
    timeout_s
        How long to wait; ``settings.startup_timeout_s`` by default.
    interval_s
        Pause between attempts.

    Raises
    ------
    StartupError
        When Orthanc is not healthy in time.
    """
    limit = settings.startup_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + limit
    for node in range(settings.orthanc_nodes):
        while not orthanc_healthy(settings, secrets, node=node):
            if time.monotonic() >= deadline:
                name = "orthanc" if node == 0 else f"orthanc-{node}"
                raise StartupError(
                    name,
                    f"{settings.orthanc_node_url(node)}/system did not answer 200 within "
                    f"{limit:g} s",
                    settings.paths.log_dir / f"{name}.log",
                )
            time.sleep(interval_s)
