"""Transport of the gateway's DIMSE service: TLS (PS3.15 B.1) and sockets.

pynetdicom's threaded server does the TLS handshake on the listener thread with no timeout, so
one silent client would block every new connection; :class:`AssociationServer` does it on the
connection's own thread with a timeout, and turns Nagle's algorithm off on every socket.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any, cast

from pynetdicom.transport import ThreadedAssociationServer

from core.config import Settings
from core.exceptions import ConfigError
from dicom_gateway._tls import server_context
from dicom_gateway.senders import ClientCertificate

__all__ = ["AssociationServer", "client_certificate", "set_tcp_nodelay", "tls_context"]

logger = logging.getLogger(__name__)


def set_tcp_nodelay(sock: socket.socket | None) -> None:
    """Disable Nagle's algorithm on ``sock``: a DIMSE message is written as several PDUs, and
    Nagle with delayed ACKs costs about 40 ms per message."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        logger.debug("cannot set TCP_NODELAY: %s", exc)


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The server TLS context of the gateway (PS3.15 B.1; TLS 1.2 or later).

    With ``gateway_tls_ca_certificates`` set, clients must present a certificate signed by
    one of those CAs.

    Raises
    ------
    ConfigError
        A certificate, key or CA file cannot be loaded.
    """
    context = server_context(
        settings.gateway_tls_certificate,
        settings.gateway_tls_private_key,
        "RADCLOUD_GATEWAY_TLS",
    )
    if settings.gateway_tls_ca_certificates is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(settings.gateway_tls_ca_certificates))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "RADCLOUD_GATEWAY_TLS_CA_CERTIFICATES",
                str(settings.gateway_tls_ca_certificates),
                f"a file of PEM CA certificates ({exc})",
            ) from exc
    return context


def client_certificate(sock: object) -> ClientCertificate | None:
    """The subject of the client certificate ``sock`` verified, or ``None`` (plain TCP, or
    TLS without client certificates: ``getpeercert()`` is empty unless verified)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        certificate = sock.getpeercert()
    except (ValueError, OSError):  # no handshake done, or the connection is gone
        return None
    if not certificate:
        return None
    # ((name, value), ...) per relative distinguished name; typeshed types it loosely
    rdns: Any = certificate.get("subject", ())
    subject = {str(key): str(value) for rdn in rdns for key, value in rdn}
    return ClientCertificate(subject.get("commonName"), subject.get("organizationName"))


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's server, with TCP_NODELAY on every connection and the TLS handshake on
    the connection's thread (pynetdicom does it on the listener's, unbounded in time)."""

    handshake_timeout_s: float = 30.0
    on_tls_failure: Any = None

    def get_request(self) -> tuple[socket.socket, Any]:
        listener = cast(socket.socket, self.socket)  # bound in __init__
        client, address = listener.accept()
        set_tcp_nodelay(client)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.handshake_timeout_s)
                request.do_handshake()
                request.settimeout(None)
            except OSError as exc:  # ssl.SSLError, timeout, reset
                logger.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                if isinstance(exc, ssl.SSLError) and self.on_tls_failure is not None:
                    self.on_tls_failure(client_address[0], exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)
