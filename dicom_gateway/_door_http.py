"""The HTTP listener of the gateway's public STOW-RS door (:mod:`dicom_gateway.stow_door`) on
``bind_host:gateway_stow_port``: HTTPS with the API's certificate (``RADCLOUD_API_TLS_*``; the
door is the API's DICOMweb under another port, so clients trust the same name), plain HTTP
without.

The same machinery as the loopback listener (:mod:`dicom_gateway._http`): HTTP/1.1 with
keep-alive, one thread per connection, ``TCP_NODELAY``; and for a public port:

- at most ``max_connections`` connections are served at once; beyond that a connection is
  answered 503 with Retry-After in a thread of a second pool of the same size (so a client
  learns why), and beyond both it is closed at once: never more than twice that many threads;
- a socket timeout (``RADCLOUD_GATEWAY_NETWORK_TIMEOUT_S``), so a stalled client (in the TLS
  handshake, the headers or the body) frees its thread;
- bodies with ``Content-Length`` or ``Transfer-Encoding: chunked``, read in chunks as they
  arrive; a connection whose body was not read to its end is closed after the answer.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from core.config import Settings
from core.multipart import MultipartError
from dicom_gateway._http import BackgroundHttpServer
from dicom_gateway._tls import server_context
from dicom_gateway.exceptions import BodyTooLargeError, ClientGoneError
from dicom_gateway.stow_door import RETRY_AFTER_S, DoorAnswer, DoorRequest, StowDoor

__all__ = ["StowDoorServer", "https_context"]

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_LINE_MAX = 4096


def https_context(settings: Settings) -> ssl.SSLContext | None:
    """The door's server TLS context from the API's certificate and key (TLS 1.2 or later), or
    ``None`` when the API speaks plain HTTP.

    Raises
    ------
    ConfigError
        The certificate or key cannot be loaded.
    """
    if not settings.api_tls_enabled:
        return None
    return server_context(
        settings.api_tls_certificate, settings.api_tls_private_key, "RADCLOUD_API_TLS"
    )


class _Server(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` with a bound on its threads and TLS per connection (the
    handshake in the connection's thread, never in the accepting one)."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        overloaded: type[BaseHTTPRequestHandler],
        *,
        tls: ssl.SSLContext | None,
        max_connections: int,
        timeout_s: float,
    ) -> None:
        super().__init__(address, handler)
        self._overloaded = overloaded
        self._tls = tls
        self._timeout_s = timeout_s
        self._served = threading.BoundedSemaphore(max_connections)
        self._refused = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        for slots, handler in (
            (self._served, self.RequestHandlerClass),
            (self._refused, self._overloaded),
        ):
            if slots.acquire(blocking=False):
                thread = threading.Thread(
                    target=self._serve,
                    args=(request, client_address, handler, slots),
                    name="stow-door",
                    daemon=True,
                )
                thread.start()
                return
        logger.warning("STOW-RS door: %s refused, every thread busy", client_address[0])
        self.shutdown_request(request)

    def _serve(
        self,
        request: socket.socket,
        client_address: Any,
        handler: type[BaseHTTPRequestHandler],
        slots: threading.BoundedSemaphore,
    ) -> None:
        try:
            request.settimeout(self._timeout_s)
            if self._tls is not None:
                request = self._tls.wrap_socket(request, server_side=True)
            handler(request, client_address, self)
        except (OSError, ssl.SSLError) as exc:  # a handshake refused, a client gone
            logger.debug("STOW-RS door: connection from %s ended: %r", client_address[0], exc)
        except Exception:  # an answer failed unexpectedly: close this one, serve the others
            logger.exception("STOW-RS door: connection from %s failed", client_address[0])
        finally:
            self.shutdown_request(request)
            slots.release()


class StowDoorServer(BackgroundHttpServer):
    """The door's listener, served from a daemon thread.

    Parameters
    ----------
    address
        ``(bind_host, gateway_stow_port)``.
    door
        Answers the requests.
    timeout_s
        Socket timeout of a connection.
    max_connections
        Connections served at once (as many more are answered 503).
    tls
        The server TLS context (``None``: plain HTTP).
    """

    def __init__(
        self,
        address: tuple[str, int],
        door: StowDoor,
        *,
        timeout_s: float,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(address)
        self._door = door
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._tls = tls

    def start(self) -> None:
        """Bind and serve in a background thread."""
        handler, overloaded = _handler(self._door, self._timeout_s)
        server = _Server(
            self._address,
            handler,
            overloaded,
            tls=self._tls,
            max_connections=self._max_connections,
            timeout_s=self._timeout_s,
        )
        self._serve(server, "stow-door-http")


class _Handler(BaseHTTPRequestHandler):
    """Answers with :class:`StowDoor`; the door and timeout are set by :func:`_handler`."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY: header and body leave in two writes
    server_version = "radcloud-stow"
    door: StowDoor
    _body_done = True

    def _send(self, answer: DoorAnswer) -> None:
        body = json.dumps(answer.body).encode()
        if not self._body_done:
            self.close_connection = True  # its body unread: the next bytes are not a request
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _read(self, size: int) -> bytes:
        try:
            data = self.rfile.read(size)
        except OSError as exc:  # a timeout included
            raise ClientGoneError(f"reading the body: {exc!r}") from exc
        if not data:
            raise ClientGoneError("the client closed before its body ended")
        return data

    def _line(self) -> bytes:
        try:
            line = self.rfile.readline(_LINE_MAX)
        except OSError as exc:
            raise ClientGoneError(f"reading the body: {exc!r}") from exc
        if not line:
            raise ClientGoneError("the client closed before its body ended")
        if not line.endswith(b"\n"):
            raise MultipartError("a chunk-size line of the chunked body is too long")
        return line

    def _sized(self, length: int) -> Iterator[bytes]:
        left = length
        while left > 0:
            data = self._read(min(left, _CHUNK))
            left -= len(data)
            yield data
        self._body_done = True

    def _chunked(self, limit: int) -> Iterator[bytes]:
        """A ``Transfer-Encoding: chunked`` body (RFC 9112 7.1), counted against ``limit``."""
        total = 0
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise MultipartError(f"chunk size {size_text[:20]!r} is not hexadecimal") from exc
            if size == 0:
                while self._line().strip():  # trailer fields, up to the empty line
                    pass
                self._body_done = True
                return
            total += size
            if total > limit:
                raise BodyTooLargeError(limit)
            left = size
            while left > 0:
                data = self._read(min(left, _CHUNK))
                left -= len(data)
                yield data
            if self._line().strip():
                raise MultipartError("a chunk of the chunked body is longer than its size")

    def _body(self) -> tuple[Iterator[bytes], int | None]:
        """The body's chunks and its declared length (``None`` for chunked).

        Raises
        ------
        ValueError
            The ``Content-Length`` is not a length.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._body_done = False
            return self._chunked(self.door.max_body_bytes), None
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError(f"Content-Length {length}")
        self._body_done = length == 0
        return self._sized(length), length

    def _handle(self) -> None:
        try:
            body, length = self._body()
        except ValueError:
            self._body_done = False
            detail = "expected a Content-Length of digits or a chunked body"
            self._send(DoorAnswer(400, {"error": "bad_request", "detail": detail}))
            return
        request = DoorRequest(
            self.command, self.path, self.headers, self.client_address[0], body, length
        )
        answer = self.door.handle(request)
        if answer is None:
            self.close_connection = True  # the client left: nothing to answer
            return
        self._send(answer)

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("stow door: " + format, *args)


class _Overloaded(_Handler):
    """Answers every request 503 and closes: the door serves as many as it may."""

    def _handle(self) -> None:
        self._body_done = False
        detail = "the STOW-RS door is serving as many requests as it may; try again later"
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        self._send(DoorAnswer(503, {"error": "unavailable", "detail": detail}, retry))

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815


def _handler(door: StowDoor, timeout_s: float) -> tuple[type[_Handler], type[_Handler]]:
    """The handler classes of a door: serving, and answering 503."""

    class Handler(_Handler):
        timeout = timeout_s

    class Overloaded(_Overloaded):
        timeout = timeout_s

    Handler.door = Overloaded.door = door
    return Handler, Overloaded
