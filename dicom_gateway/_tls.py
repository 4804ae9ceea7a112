"""Server TLS contexts of the gateway's listeners (TLS 1.2 or later): the DIMSE port's
(:func:`dicom_gateway._transport.tls_context`, PS3.15 B.1) and the STOW-RS door's
(:func:`dicom_gateway._door_http.https_context`)."""

from __future__ import annotations

import ssl
from pathlib import Path

from core.exceptions import ConfigError

__all__ = ["server_context"]


def server_context(
    certificate: Path | None, private_key: Path | None, prefix: str
) -> ssl.SSLContext:
    """A TLS 1.2+ server context with ``certificate`` (PEM chain) and ``private_key``.

    Parameters
    ----------
    certificate, private_key
        The PEM files.
    prefix
        The settings' name without ``_CERTIFICATE``, for the error (``RADCLOUD_API_TLS``).

    Raises
    ------
    ConfigError
        The certificate or key cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(certificate), str(private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{prefix}_CERTIFICATE",
            str(certificate),
            f"a PEM certificate matching {prefix}_PRIVATE_KEY ({exc})",
        ) from exc
    return context
