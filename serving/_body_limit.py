"""The request body budget, enforced before routing, authentication and body parsing.

FastAPI reads and parses a route's body before it runs the route's dependencies, the
authentication among them, so a limit checked in a route or a dependency comes too late: an
anonymous client could make the API read gigabytes. :class:`BodyLimitMiddleware` is a plain
ASGI middleware that sits in front of everything and gives each request a budget by its route
class (:class:`BodyLimits`):

========================================  ==============================================
``POST /api/infer/...``                   ``RADCLOUD_API_MAX_INFER_MIB`` (512 MiB)
``POST /dicom-web/studies[/{study}]``     ``RADCLOUD_API_MAX_STOW_MIB`` (4 GiB, STOW-RS)
anything else                             ``RADCLOUD_API_MAX_BODY_KIB`` (1 MiB, JSON)
========================================  ==============================================

A declared ``Content-Length`` above the budget is answered 413 at once, before the application
sees the request; a body without one (chunked) is counted as it arrives, and the message that
crosses the budget is never handed on: the middleware answers 413 itself, tells the application
the client has gone (``http.disconnect``) and drops whatever the application answers later.
Nothing past the budget is read, so memory and disk stay flat however much is sent.

Ray Serve's HTTP proxy reads request bodies into an unbounded queue in front of the replica, so
the same middleware also runs in the proxy (:func:`proxy_middlewares`, named by
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, which :mod:`serving.application` sets). The
proxy imports this module while its health check waits, so it lives outside :mod:`serving.api`
(whose import pulls in the whole application) and imports only Starlette and the settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import Settings, load_settings

__all__ = ["PROXY_CALLBACK", "BodyLimitMiddleware", "BodyLimits", "proxy_middlewares"]

#: The import path Ray Serve's proxy calls for its middlewares.
PROXY_CALLBACK = "serving._body_limit.proxy_middlewares"

_KIB = 1024
_MIB = 1024 * 1024
_INFER_PREFIX = "/api/infer/"
_STOW_PATH = "/dicom-web/studies"


@dataclass(frozen=True)
class BodyLimits:
    """Body budgets in bytes per route class (see the module)."""

    json_bytes: int
    infer_bytes: int
    stow_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        """The budgets of ``RADCLOUD_API_MAX_BODY_KIB``, ``_INFER_MIB`` and ``_STOW_MIB``."""
        return cls(
            settings.api_max_body_kib * _KIB,
            settings.api_max_infer_mib * _MIB,
            settings.api_max_stow_mib * _MIB,
        )

    def for_request(self, method: str, path: str) -> tuple[int, str]:
        """The budget of a request and the setting that sets it."""
        if method == "POST" and path.startswith(_INFER_PREFIX):
            return self.infer_bytes, "RADCLOUD_API_MAX_INFER_MIB"
        if method == "POST" and (path == _STOW_PATH or path.startswith(_STOW_PATH + "/")):
            return self.stow_bytes, "RADCLOUD_API_MAX_STOW_MIB"
        return self.json_bytes, "RADCLOUD_API_MAX_BODY_KIB"


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int, setting: str) -> tuple[Message, Message]:
    body = json.dumps(
        {
            "error": "too_large",
            "detail": f"request body exceeds the limit of {limit} bytes ({setting})",
        }
    ).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimitMiddleware:
    """Answer 413 to a request whose body exceeds its route class's budget (see the module).

    Parameters
    ----------
    app
        The application (or Ray Serve's proxy) behind it.
    limits
        The budgets; ``None``: from the settings of the environment.
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits | None = None) -> None:
        self.app = app
        self.limits = limits or BodyLimits.from_settings(load_settings())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limits.for_request(scope["method"], scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            for message in _too_large(limit, setting):
                await send(message)
            return
        state = _Budget(limit, setting, send)
        try:
            await self.app(scope, state.receive_from(receive), state.send)
        except Exception:
            if not state.answered:
                raise
            # The application saw a disconnect it did not expect; the client has its 413.


class _Budget:
    """One request's count of body bytes, and who has answered."""

    def __init__(self, limit: int, setting: str, send: Send) -> None:
        self.limit, self.setting, self._send = limit, setting, send
        self.received = 0
        self.started = False  # the application began its answer
        self.answered = False  # we answered 413 in its place

    def receive_from(self, receive: Receive) -> Receive:
        async def limited() -> Message:
            if self.answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] != "http.request":
                return message
            self.received += len(message.get("body", b""))
            if self.received <= self.limit:
                return message
            if not self.started:
                self.answered = True
                for reply in _too_large(self.limit, self.setting):
                    await self._send(reply)
            else:
                self.answered = True  # mid-answer: cut the connection short instead
            return {"type": "http.disconnect"}

        return limited

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def proxy_middlewares() -> list[Any]:
    """The middlewares Ray Serve's HTTP proxy puts in front of the replicas (its callback,
    ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the body budget, from the settings of the
    environment the proxy actor inherited."""
    return [Middleware(BodyLimitMiddleware, limits=BodyLimits.from_settings(load_settings()))]
