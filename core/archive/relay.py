"""A DICOMweb answer opened on an event loop and relayed as it arrives (aiohttp).

The federated WADO-RS pass-through (``serving/api/routes/federated_wado.py``) relays whole
studies; through httpx on an event loop the relay cost more CPU than the node serving the study
(pure-Python HTTP parsing and re-chunking), and on a 2-core machine it ran at half the direct
rate. aiohttp parses HTTP in C and hands over the buffers it received (``benchmarks/README.md``,
"Federation": the ratio after the change).

:class:`HttpEndpoint` says where a DICOMweb service is and how to reach it (root, credentials,
TLS, timeouts): :class:`~core.archive.DicomwebArchive` and the local Orthanc each give one.
:func:`open_relay` opens ``GET`` of a path below it and yields a :class:`RelayedAnswer`; errors
map to the seam's as :func:`~core.archive.dicomweb_stream.transport_error` does for httpx::

    no connection within the connect timeout, or no read within the read timeout
                                               ArchiveTimeoutError
    refused, reset, name or TLS failure        ArchiveUnavailableError(status_code=None)

An error *status* is not raised: the pass-through relays the node's own answer.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from core.archive.exceptions import ArchiveTimeoutError, ArchiveUnavailableError

__all__ = ["HttpEndpoint", "RelayedAnswer", "open_relay"]

logger = logging.getLogger(__name__)

READ_BUFFER_BYTES = 4 * 1024 * 1024
"""How much of an answer aiohttp buffers before it stops reading the socket (its default,
64 KiB, pauses and resumes the transport every few reads)."""


@dataclass(frozen=True)
class HttpEndpoint:
    """Where a DICOMweb service is and how to reach it.

    ``base_url`` is the root every path is below (with its trailing ``/``); ``auth`` HTTP basic
    credentials; ``headers`` sent with every request (e.g. a bearer token); ``ssl_context`` the
    TLS trust for an ``https`` root (``None``: the system's); ``fallback_urls`` other roots of
    the same service (the other archive nodes), tried in order when a root cannot be connected
    to (:func:`open_relay`).
    """

    base_url: str
    auth: tuple[str, str] | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 15.0
    fallback_urls: tuple[str, ...] = ()

    def url(self, path: str, root: str | None = None) -> str:
        """The address of ``path`` below the root (or below ``root``, one of the fallbacks)."""
        return f"{(root or self.base_url).rstrip('/')}/{path.lstrip('/')}"


@dataclass(frozen=True)
class RelayedAnswer:
    """An answer being received: status, headers (case-insensitive) and its body."""

    status_code: int
    headers: Mapping[str, str]
    url: str
    _response: aiohttp.ClientResponse = field(repr=False)

    async def read(self) -> bytes:
        """The whole body (for small answers: JSON).

        Raises
        ------
        ArchiveUnavailableError
            The node broke off or stopped sending.
        """
        try:
            return await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(self.url, exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as sent (no ``Content-Encoding`` undone), as they arrive.

        Raises
        ------
        ArchiveUnavailableError
            The node broke off or stopped sending (the relay's client sees the answer end
            early).
        """
        try:
            async for chunk, _ in self._response.content.iter_chunks():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("DICOMweb relay from %s broke off: %s", self.url, exc)
            raise _transport_error(self.url, exc) from exc


def _transport_error(url: str, exc: BaseException) -> ArchiveUnavailableError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):  # aiohttp's connect and read timeouts are TimeoutErrors
        return ArchiveTimeoutError(url, f"{type(exc).__name__}: {reason}")
    return ArchiveUnavailableError(url, reason)


@asynccontextmanager
async def open_relay(
    endpoint: HttpEndpoint,
    path: str,
    *,
    query: Sequence[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[RelayedAnswer]:
    """``GET`` ``path`` below ``endpoint`` and yield the answer unread; the connection is
    closed on leaving, however the context ends.

    A root that cannot be connected to (refused, or no connection within the connect timeout)
    is passed over for the endpoint's next root (``fallback_urls``): nothing was sent, and a
    ``GET`` may go anywhere the same archive is served.

    Parameters
    ----------
    endpoint
        The service.
    path
        Below its root, e.g. ``studies/{uid}``.
    query
        Query parameters, in order, repeated names kept.
    headers
        Request headers (``Accept``, ...), added to the endpoint's own.

    Raises
    ------
    ArchiveUnavailableError
        No answer came (:class:`~core.archive.ArchiveTimeoutError` when connecting or waiting
        for it timed out).
    """
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=endpoint.connect_timeout_s,
        sock_connect=endpoint.connect_timeout_s,
        sock_read=endpoint.read_timeout_s,
    )
    auth = aiohttp.BasicAuth(*endpoint.auth) if endpoint.auth is not None else None
    connector = aiohttp.TCPConnector(
        ssl=endpoint.ssl_context if endpoint.ssl_context is not None else True,
        force_close=True,  # one request: nothing to keep alive
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auth=auth,
        headers=dict(endpoint.headers),
        auto_decompress=False,
        read_bufsize=READ_BUFFER_BYTES,
        max_field_size=65536,
    ) as session:
        roots = (endpoint.base_url, *endpoint.fallback_urls)
        for index, root in enumerate(roots):
            url = endpoint.url(path, root)
            try:
                response = await session.get(url, params=list(query), headers=dict(headers or {}))
                break
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                if index == len(roots) - 1:
                    raise _transport_error(url, exc) from exc
                logger.warning("DICOMweb root %s cannot be reached (%s): next", root, exc)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _transport_error(url, exc) from exc
        try:
            yield RelayedAnswer(response.status, response.headers, url, response)
        finally:
            response.close()
