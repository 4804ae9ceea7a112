"""The gateway's small HTTP listener on ``127.0.0.1:gateway_metrics_port``: loopback only,
whatever ``bind_host`` is, so no one beyond this machine learns the sender AE titles its
metrics are labelled with (a remote Prometheus scrapes through an agent or proxy on the host).

- ``GET /healthz`` (JSON: spool depth, Orthanc reachability, open associations) and
  ``GET /metrics`` (Prometheus) need no credentials, so that a local Prometheus agent can
  scrape them; they carry no patient data (sender AE titles and counts only).
- ``POST /internal/stow/instances`` takes one STOW-RS instance from the API process, and with
  the Orthanc edge ``POST /internal/stow/batch`` a batch of them (the protocol is in
  :mod:`core.ingest`, the handling in :mod:`dicom_gateway.stow`); both demand the bearer key
  ``gateway_ingest_key`` of ``secrets.json``, compared in constant time.

HTTP/1.1 with keep-alive, one thread per connection (:class:`ThreadingHTTPServer`), with
``TCP_NODELAY``: an answer's header and body leave in two writes, and Nagle's algorithm would
hold the second until the client's delayed acknowledgement (40 ms per request).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from core.ingest import BATCH_PATH, STOW_PATH, batch_limit_bytes, decode_batch
from core.uids import is_safe_uid
from dicom_gateway.intake import Intake
from dicom_gateway.metrics import exposition
from dicom_gateway.stow import ArchiveStow, store_instance

__all__ = ["BackgroundHttpServer", "GatewayHttpServer"]

logger = logging.getLogger(__name__)

_JSON = "application/json"
_HOSPITAL_MAX = 128  # hospitals.name


class _Refusal(Exception):  # noqa: N818 - control flow inside the handler, never raised out
    """An error answer of the handler: HTTP ``status`` and ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        self.status, self.detail = status, detail
        super().__init__(detail)


class BackgroundHttpServer:
    """An HTTP server bound to ``address`` and served from a daemon thread once started (the
    loopback listener here, the STOW-RS door in :mod:`dicom_gateway._door_http`)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (once started; useful when bound to port 0)."""
        if self._server is None:
            return self._address[1]
        return int(self._server.server_address[1])

    def _serve(self, server: ThreadingHTTPServer, name: str) -> None:
        """Serve ``server`` in a daemon thread named ``name``."""
        self._server = server
        serve = threading.Thread(target=server.serve_forever, name=name)
        serve.daemon = True
        serve.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket (nothing to do unless started)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class GatewayHttpServer(BackgroundHttpServer):
    """Health, metrics and the internal STOW endpoint, served from a daemon thread.

    Parameters
    ----------
    address
        ``(host, port)`` to bind.
    health
        Returns the ``/healthz`` document.
    intake
        Where STOW-RS instances go.
    ingest_key
        The API process's bearer key for ``POST`` (``Secrets.gateway_ingest_key``).
    timeout_s
        Socket timeout of a connection (a stalled client frees its thread after it).
    archive_stow
        Where batches go, with the Orthanc edge (``None``: no batch endpoint).
    metrics
        Returns the ``/metrics`` exposition (Prometheus text): by default this process's.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        health: Callable[[], dict[str, Any]],
        intake: Intake,
        ingest_key: str,
        timeout_s: float,
        archive_stow: ArchiveStow | None = None,
        metrics: Callable[[], bytes] = exposition,
    ) -> None:
        super().__init__(address)
        self._handler = _handler(
            health,
            metrics,
            intake,
            archive_stow=archive_stow,
            authorization=f"Bearer {ingest_key}".encode(),
            timeout_s=timeout_s,
        )

    def start(self) -> None:
        """Bind and serve in a background thread."""
        server = ThreadingHTTPServer(self._address, self._handler)
        server.daemon_threads = True
        self._serve(server, "gateway-http")


def _handler(
    health: Callable[[], dict[str, Any]],
    metrics: Callable[[], bytes],
    intake: Intake,
    *,
    archive_stow: ArchiveStow | None,
    authorization: bytes,
    timeout_s: float,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = timeout_s
        disable_nagle_algorithm = True  # TCP_NODELAY (the module docstring)

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _refuse(self, status: int, detail: str) -> None:
            """An error answer; the connection is closed (its body may be unread)."""
            self.close_connection = True
            self._answer(status, json.dumps({"detail": detail}).encode(), _JSON)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, json.dumps(health()).encode(), _JSON)
            elif self.path == "/metrics":
                self._answer(200, metrics(), CONTENT_TYPE_LATEST)
            else:
                self._refuse(404, f'no resource "{self.path}"')

        def _instance(self, limit: int) -> tuple[str | None, str, bytes]:
            """The request's ``study`` and ``hospital`` parameters and body (at most ``limit``
            bytes), once the key is checked."""
            given = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, authorization):
                logger.warning("internal STOW request from %s: bad key", self.client_address)
                raise _Refusal(401, "expected the gateway ingest key as bearer credential")
            query = parse_qs(urlsplit(self.path).query)
            study = query.get("study", [None])[0]
            if study is not None and not is_safe_uid(study):
                raise _Refusal(400, f'study "{study[:80]}" is not a UID')
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError as exc:
                raise _Refusal(400, "expected a Content-Length header") from exc
            if not 0 <= length <= limit:
                raise _Refusal(413, f"{length} bytes: expected at most {limit}")
            hospital = query.get("hospital", [""])[0].strip()
            if not 0 < len(hospital) <= _HOSPITAL_MAX:
                raise _Refusal(
                    400, f"expected the owning hospital's name (1 to {_HOSPITAL_MAX} characters)"
                )
            data = self.rfile.read(length)
            if len(data) != length:
                raise _Refusal(400, f"body ended after {len(data)} of {length} bytes")
            return study, hospital, data

        def _batch(self) -> dict[str, Any]:
            if archive_stow is None:
                raise _Refusal(404, "no batch STOW-RS: the gateway's edge is not orthanc")
            study, hospital, body = self._instance(batch_limit_bytes(intake.max_instance_bytes))
            try:
                parts = decode_batch(body)
            except ValueError as exc:
                raise _Refusal(400, f"malformed batch: {exc}") from exc
            answers = archive_stow.store_batch(parts, study_instance_uid=study, hospital=hospital)
            return {"answers": [answer.to_json() for answer in answers]}

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            try:
                if path == STOW_PATH:
                    study, hospital, data = self._instance(intake.max_instance_bytes)
                    answer = store_instance(
                        intake, data, study_instance_uid=study, hospital=hospital
                    ).to_json()
                elif path == BATCH_PATH:
                    answer = self._batch()
                else:
                    raise _Refusal(404, f'no resource "{self.path}"')
            except _Refusal as refusal:
                self._refuse(refusal.status, refusal.detail)
            except Exception:  # like a DIMSE handler: answer every request, stay up
                logger.exception("internal STOW request failed unexpectedly")
                self._refuse(500, "internal error: instance not stored")
            else:
                self._answer(200, json.dumps(answer).encode(), _JSON)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("gateway http: " + format, *args)

    return Handler
