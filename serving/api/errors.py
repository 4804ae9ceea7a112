"""Map radcloud's errors to HTTP answers with a JSON body ``{"error", "detail", ...}``.

The one place where domain errors become HTTP statuses (the routes raise, never answer an
error themselves). An error's data the client acts on rides along in the body: a worklist
conflict's current ``status``, ``claimed_by`` and ``version``.

A path parameter that does not fit its pattern (a UID that is not one,
:mod:`serving.api._params`) is a bad request, 400, answered before the route runs, whatever
else is wrong with the request: the path names no resource, so nothing is looked up by it.
Other invalid input keeps FastAPI's 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.exceptions import (
    AlreadyExistsError,
    AuthenticationError,
    IdentityLinkError,
    InvalidUidError,
    NotFoundError,
    PermissionDeniedError,
    RadcloudError,
    TooManyAttemptsError,
)
from models.exceptions import StageError
from serving.api.security import require_roles
from serving.exceptions import (
    NotClaimantError,
    PlatformUnavailableError,
    PromotionRefusedError,
    SignError,
    StudyNotReadyError,
    TooManyVoxelsError,
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
    (IdentityLinkError, 409, "conflict", ()),
    (InvalidUidError, 400, "bad_request", ("keyword",)),
    (WorklistConflictError, 409, "conflict", ("status", "claimed_by", "version")),
    (StudyNotReadyError, 409, "conflict", ()),
    (PromotionRefusedError, 409, "promotion_refused", ("problems",)),
    (StageError, 409, "conflict", ()),
    (UploadTooLargeError, 413, "too_large", ()),
    (TooManyVoxelsError, 413, "too_large", ("limit",)),
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


# The routes that answer without credentials (sign-in, health); any other route's invalid
# request is first authenticated.
_ANONYMOUS_PATHS = frozenset({"/healthz", "/api/auth/token"})


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RadcloudError)  # noqa: S101 - registered for this type only
        return _answer(exc)

    async def handle_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only
        if request.url.path not in _ANONYMOUS_PATHS:
            # FastAPI validates a body before it runs the route's dependencies: authenticate
            # first, so a caller without valid credentials gets the 401 (audited) it gets from
            # every route, not a description of the body the route expects.
            try:
                await run_in_threadpool(require_roles(), request)
            except AuthenticationError as refused:
                return _answer(refused)
        in_path = [error for error in exc.errors() if error.get("loc", ("",))[0] == "path"]
        if in_path:
            where = ", ".join(str(error["loc"][-1]) for error in in_path)
            return JSONResponse(
                {"error": "bad_request", "detail": f"invalid path parameter: {where}"}, 400
            )
        return await request_validation_exception_handler(request, exc)

    async def handle_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for it only
        if exc.status_code == 400 and request.url.path not in _ANONYMOUS_PATHS:
            # a body FastAPI cannot even decode (e.g. not UTF-8) is refused with 400 before
            # the route's dependencies run: as for an invalid body, authenticate first
            try:
                await run_in_threadpool(require_roles(), request)
            except AuthenticationError as refused:
                return _answer(refused)
        return await http_exception_handler(request, exc)

    app.add_exception_handler(RadcloudError, handle)
    app.add_exception_handler(RequestValidationError, handle_invalid)
    app.add_exception_handler(StarletteHTTPException, handle_http)
