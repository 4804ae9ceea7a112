"""Map radcloud's errors to HTTP answers with a JSON body ``{"error", "detail"}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.exceptions import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    RadcloudError,
)

__all__ = ["install_error_handlers"]

_STATUS: tuple[tuple[type[RadcloudError], int, str], ...] = (
    (AuthenticationError, 401, "unauthorized"),
    (PermissionDeniedError, 403, "forbidden"),
    (NotFoundError, 404, "not_found"),
    (AlreadyExistsError, 409, "conflict"),
)


def _answer(exc: RadcloudError) -> JSONResponse:
    for cls, status, error in _STATUS:
        if isinstance(exc, cls):
            headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else {}
            return JSONResponse({"error": error, "detail": str(exc)}, status, headers=headers)
    return JSONResponse({"error": "internal", "detail": str(exc)}, 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RadcloudError)  # noqa: S101 - registered for this type only
        return _answer(exc)

    app.add_exception_handler(RadcloudError, handle)
