"""Map radcloud's errors to HTTP answers with a JSON body ``{"error", "detail", ...}``.

The one place where domain errors become HTTP statuses (the routes raise, never answer an
error themselves). An error's data the client acts on rides along in the body: a worklist
conflict's current ``status``, ``claimed_by`` and ``version``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.exceptions import (
    AlreadyExistsError,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    RadcloudError,
    TooManyAttemptsError,
)
from serving.exceptions import (
    NotClaimantError,
    PlatformUnavailableError,
    SignError,
    StudyNotReadyError,
    UnknownModelError,
    UnreadableImageError,
    UploadTooLargeError,
    WorklistConflictError,
)

__all__ = ["install_error_handlers"]

#: (error class, HTTP status, ``error`` code, attributes copied into the body); first match wins.
_STATUS: tuple[tuple[type[RadcloudError], int, str, tuple[str, ...]], ...] = (
    (AuthenticationError, 401, "unauthorized", ()),
    (PermissionDeniedError, 403, "forbidden", ()),
    (NotClaimantError, 403, "forbidden", ("claimed_by",)),
    (UnknownModelError, 404, "unknown_model", ()),
    (NotFoundError, 404, "not_found", ()),
    (AlreadyExistsError, 409, "conflict", ()),
    (WorklistConflictError, 409, "conflict", ("status", "claimed_by", "version")),
    (StudyNotReadyError, 409, "conflict", ()),
    (UploadTooLargeError, 413, "too_large", ()),
    (TooManyAttemptsError, 429, "too_many_requests", ("retry_after_s",)),
    (SignError, 422, "invalid_report", ()),
    (UnreadableImageError, 422, "unreadable_image", ()),
    (PlatformUnavailableError, 503, "unavailable", ()),
)


def _answer(exc: RadcloudError) -> JSONResponse:
    for cls, status, error, fields in _STATUS:
        if isinstance(exc, cls):
            headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else {}
            if isinstance(exc, TooManyAttemptsError):  # RFC 9110 10.2.3
                headers["Retry-After"] = str(exc.retry_after_s)
            body: dict[str, Any] = {"error": error, "detail": str(exc)}
            body |= {name: getattr(exc, name) for name in fields}
            return JSONResponse(body, status, headers=headers)
    return JSONResponse({"error": "internal", "detail": str(exc)}, 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RadcloudError)  # noqa: S101 - registered for this type only
        return _answer(exc)

    app.add_exception_handler(RadcloudError, handle)
