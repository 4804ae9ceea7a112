"""Security headers on every answer of the API and the web app.

A pure ASGI middleware (streamed answers stay streamed), outermost, so that error answers and
the web app's files carry them too:

- ``Content-Security-Policy``: scripts, styles, workers, fonts and connections from this
  origin only, no inline script and no ``eval`` (``'wasm-unsafe-eval'`` lets Cornerstone's
  WebAssembly codecs compile; ``worker-src blob:`` its decoders); inline ``style`` attributes
  are allowed (``style-src-attr``), ``<style>`` elements are not; ``frame-ancestors 'none'``:
  no other site may frame the app (clickjacking), nor may the app be framed at all.
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
  ``X-Frame-Options: DENY`` (for browsers without CSP 2), ``Cross-Origin-Opener-Policy``.
- ``Strict-Transport-Security`` on answers over HTTPS (RFC 6797: never over plain HTTP).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "SecurityHeadersMiddleware"]

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:",
        "style-src 'self'",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "connect-src 'self' blob:",  # Cornerstone's loaders may read the blobs they made
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS: dict[str, str] = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
"""Sent on every answer (lower-case names, as ASGI carries them)."""

_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")
_ENCODED = [(name.encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` (and HSTS over HTTPS) to every HTTP answer; a header the
    route set itself is kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = list(_ENCODED)
        if scope.get("scheme") == "https":
            added.append(_HSTS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                present = {bytes(name).lower() for name, _ in headers}
                headers += [(name, value) for name, value in added if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
