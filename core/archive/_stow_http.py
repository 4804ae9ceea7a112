"""STOW-RS requests of :class:`~core.archive.DicomwebArchive` over urllib3 (private).

Storing is the archive seam's hottest request: the gateway's STOW-RS door sends every instance
it takes through it (issue 16). httpx, which the rest of the DICOMweb seam uses for its streamed
answers, spent about 0.14 ms of Python CPU per 33-kB instance on a 16-instance STOW-RS request
to a local Orthanc; urllib3's pool, 0.10 (``benchmarks/README.md``, "The gateway's STOW-RS
door"). A STOW-RS request is a body sent whole and a small JSON answer read whole, so it needs
none of what httpx adds. urllib3 asks for no compressed answer either, so the archive spends no
CPU compressing it.

The same node, credentials, TLS context and timeouts as the archive's httpx client; no retry
(as httpx: a request that got no answer is the caller's to send again, storing is idempotent).
Errors map as :mod:`core.archive.dicomweb_stream` draws them.
"""

from __future__ import annotations

import base64
import ssl

import urllib3
from urllib3.exceptions import HTTPError, TimeoutError

from core.archive.dicomweb_stream import answer_error
from core.archive.exceptions import (
    ArchiveError,
    ArchiveTimeoutError,
    ArchiveUnavailableError,
)

__all__ = ["StowSender"]

_POOL_SIZE = 8  # connections kept per node; more are opened when needed, then closed


class StowSender:
    """``POST {root}/studies`` to one DICOMweb node.

    Parameters
    ----------
    root
        The service root (``http[s]://host:port/path``).
    headers
        Header fields of every request (a bearer token).
    basic
        ``(username, password)`` for HTTP basic authentication, if any.
    tls
        The TLS context for an ``https`` root.
    connect_timeout_s, read_timeout_s
        As the archive's.
    """

    def __init__(
        self,
        root: str,
        *,
        headers: dict[str, str],
        basic: tuple[str, str] | None,
        tls: ssl.SSLContext,
        connect_timeout_s: float,
        read_timeout_s: float,
    ) -> None:
        self._url = f"{root.rstrip('/')}/studies"
        self._path = urllib3.util.parse_url(self._url).path or "/studies"
        self._headers = dict(headers)
        if basic is not None:
            token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        options: dict[str, object] = {
            "maxsize": _POOL_SIZE,
            "block": False,
            "retries": False,
            "timeout": urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        }
        if self._url.startswith("https:"):
            options["ssl_context"] = tls
        self._pool = urllib3.connection_from_url(self._url, **options)

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.close()

    def post(self, content_type: str, body: bytes, accept: str) -> tuple[int, bytes]:
        """Send one STOW-RS request; its status and body (any status below 400, or 409).

        Raises
        ------
        ArchiveTimeoutError
            No answer within the timeouts.
        ArchiveUnavailableError
            No answer (refused, reset, TLS failure), or 5xx, 401, 403, 408, 429.
        ArchiveError
            Another error answer (:func:`~core.archive.dicomweb_stream.answer_error`).
        """
        headers = {**self._headers, "Content-Type": content_type, "Accept": accept}
        try:
            response = self._pool.urlopen(
                "POST", self._path, body=body, headers=headers, preload_content=True
            )
        except TimeoutError as exc:
            raise ArchiveTimeoutError(self._url, f"{type(exc).__name__}: {exc}") from exc
        except HTTPError as exc:
            raise ArchiveUnavailableError(self._url, str(exc) or type(exc).__name__) from exc
        status, data = response.status, response.data
        if status >= 400 and status != 409:
            text = " ".join(data.decode("utf-8", "replace").split())[:300]
            error: ArchiveError = answer_error(
                "POST", self._url, self._path, status, text or (response.reason or "")
            )
            raise error
        return status, data
