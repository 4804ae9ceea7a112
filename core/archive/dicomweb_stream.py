"""DICOMweb over HTTP, shared by every DICOMweb archive (a remote node's, the local Orthanc's
plugin): the error contract, timeouts, a streamed retrieval and a node's status.

:func:`open_dicomweb_stream` relays a WADO-RS (or QIDO-RS) answer chunk by chunk, as the
federated pass-through needs: nothing is buffered, and the connection is released when the
context ends, however it ends. HTTP answers map to the seam's errors as
:class:`~core.archive.OrthancArchive`'s do::

    no answer within the timeout               ArchiveTimeoutError (an ArchiveUnavailableError)
    no answer (refused, reset, TLS failure)    ArchiveUnavailableError(status_code=None)
    5xx, 401, 403, 408, 429                    ArchiveUnavailableError(status_code)
    404                                        ArchiveNotFoundError
    other 4xx                                  ArchiveRejectedError(status_code)

:func:`node_status` sorts any outcome into the four statuses a fan-out reports per node
(:class:`NodeStatus`: ok, timeout, refused, error), with ``unreachable`` told apart from
``error`` for an operator's ``radcloud hospitals check``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import httpx

from core.archive.exceptions import (
    ArchiveNotFoundError,
    ArchiveRejectedError,
    ArchiveTimeoutError,
    ArchiveUnavailableError,
)

__all__ = [
    "DicomwebStream",
    "NodeCheck",
    "NodeStatus",
    "answer_error",
    "check_answer",
    "dicomweb_timeout",
    "node_status",
    "open_dicomweb_stream",
    "transport_error",
]

logger = logging.getLogger(__name__)

UNAVAILABLE_STATUSES = frozenset({401, 403, 408, 429})
REFUSED_STATUSES = frozenset({401, 403})
CHUNK_BYTES = 256 * 1024  # 64 KiB chunks relayed at about half the throughput (federation bench)


class NodeStatus(StrEnum):
    """How one node answered (a fan-out reports one per node; PS3.18 says nothing of it)."""

    OK = "ok"
    TIMEOUT = "timeout"
    """No answer within the node's timeout."""
    REFUSED = "refused"
    """The node answered 401 or 403: the credentials are wrong or not allowed."""
    UNREACHABLE = "unreachable"
    """No connection (refused, reset, name or TLS failure): a fan-out may report it as error."""
    ERROR = "error"
    """The node answered with an error (5xx, 429, a 4xx) or with something unreadable."""


@dataclass(frozen=True)
class NodeCheck:
    """A node's status with the reason and how long the request took."""

    node: str
    status: NodeStatus
    reason: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """Whether the node answered."""
        return self.status is NodeStatus.OK


def node_status(error: BaseException | None) -> NodeStatus:
    """The :class:`NodeStatus` of a request that raised ``error`` (``None``: it succeeded)."""
    if error is None:
        return NodeStatus.OK
    if isinstance(error, ArchiveTimeoutError):
        return NodeStatus.TIMEOUT
    if isinstance(error, ArchiveUnavailableError):
        if error.status_code in REFUSED_STATUSES:
            return NodeStatus.REFUSED
        if error.status_code is None:
            return NodeStatus.UNREACHABLE
    return NodeStatus.ERROR


def dicomweb_timeout(connect_s: float, read_s: float) -> httpx.Timeout:
    """Timeouts of one request: ``connect_s`` to connect (and to get a pooled connection),
    ``read_s`` for each read and write."""
    return httpx.Timeout(read_s, connect=connect_s, pool=connect_s)


def transport_error(url: str, exc: httpx.RequestError) -> ArchiveUnavailableError:
    """The seam's error for a request that got no answer."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        phase = type(exc).__name__  # ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout
        return ArchiveTimeoutError(url, f"{phase}: {reason}")
    return ArchiveUnavailableError(url, reason)


def _reason(response: httpx.Response) -> str:
    try:
        text = response.read().decode("utf-8", "replace")
    except httpx.HTTPError as exc:
        return f"(answer unreadable: {exc})"
    return " ".join(text.split())[:300] or response.reason_phrase


def check_answer(
    response: httpx.Response, *, missing: tuple[str, str] | None = None
) -> httpx.Response:
    """``response`` if it is a success, else the seam's error for it (module docstring).

    Parameters
    ----------
    response
        An answer (streamed or not: an error's body is read for its reason).
    missing
        What a 404 means, as ``(resource, identifier)``.
    """
    status = response.status_code
    if status < 400:
        return response
    request = response.request
    raise answer_error(
        request.method,
        str(request.url),
        request.url.path,
        status,
        _reason(response),
        missing=missing,
    )


def answer_error(
    method: str,
    url: str,
    path: str,
    status: int,
    reason: str,
    *,
    missing: tuple[str, str] | None = None,
) -> ArchiveUnavailableError | ArchiveNotFoundError | ArchiveRejectedError:
    """The seam's error for an error answer ``status`` (400 or above) to ``method url`` (module
    docstring); ``reason``: the answer's text, ``missing``: what a 404 means."""
    if status >= 500 or status in UNAVAILABLE_STATUSES:
        return ArchiveUnavailableError(url, reason, status)
    if status == 404:
        resource, identifier = missing or ("resource", path)
        return ArchiveNotFoundError(resource, identifier)
    return ArchiveRejectedError(f"{method} {path}: {reason}", status)


@dataclass(frozen=True)
class DicomwebStream:
    """An answer being received: its status, headers, and its body as chunks read on demand
    (iterate ``chunks`` once, inside the :func:`open_dicomweb_stream` context)."""

    status_code: int
    headers: httpx.Headers
    chunks: Iterator[bytes]


@contextmanager
def open_dicomweb_stream(
    client: httpx.Client,
    path: str,
    query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    check: bool = False,
    missing: tuple[str, str] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    decoded: bool = False,
) -> Iterator[DicomwebStream]:
    """GET ``path`` of a DICOMweb service and stream the answer, never buffering it.

    Parameters
    ----------
    client
        An HTTP client whose ``base_url`` is the DICOMweb service root (credentials and
        timeouts set), e.g. :meth:`~core.archive.DicomwebArchive.http_client` or
        :func:`~core.archive.dicomweb_client`.
    path
        Below the service root, e.g. ``studies/{uid}`` or ``studies/{uid}/metadata``.
    query
        Query parameters, as given.
    headers
        Request headers, e.g. ``Accept: multipart/related; type="application/dicom"``.
    check
        Raise the seam's error for an error status (see :func:`check_answer`) rather than
        yield it; the pass-through leaves it ``False`` to relay the node's own answer.
    missing
        With ``check``, what a 404 means, as ``(resource, identifier)``.
    chunk_bytes
        Size of the chunks read (the last may be shorter; the transport may give less).
    decoded
        Undo a ``Content-Encoding`` (gzip) of the body; by default the chunks are the bytes as
        sent, to relay with the answer's own ``Content-Encoding`` header.

    Yields
    ------
    DicomwebStream
        Status, headers and the body's chunks; the connection is closed on leaving.

    Raises
    ------
    ArchiveUnavailableError
        No answer came (:class:`~core.archive.ArchiveTimeoutError` when the connect or first
        read timed out); a timeout or break while iterating ``chunks`` raises it too.
    """
    url = f"{client.base_url}{path.lstrip('/')}"
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query or ())
    params = httpx.QueryParams([(str(k), str(v)) for k, v in pairs])
    request = client.build_request("GET", path.lstrip("/"), params=params, headers=headers)
    try:
        response = client.send(request, stream=True)
    except httpx.RequestError as exc:
        raise transport_error(url, exc) from exc
    try:
        if check:
            check_answer(response, missing=missing)

        def chunks() -> Iterator[bytes]:
            try:
                if decoded:
                    yield from response.iter_bytes(chunk_bytes)
                else:
                    yield from response.iter_raw(chunk_bytes)
            except httpx.RequestError as exc:
                logger.warning("DICOMweb stream from %s broke off: %s", url, exc)
                raise transport_error(url, exc) from exc

        yield DicomwebStream(response.status_code, response.headers, chunks())
    finally:
        response.close()
