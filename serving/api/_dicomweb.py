"""What the DICOMweb routes share (:mod:`serving.api.routes.dicomweb` for QIDO-RS and WADO-RS,
:mod:`serving.api.routes.stow` for STOW-RS): the prefix, media types, path parameters, the JSON
error body and the audit outcome of an HTTP status.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from core.audit import AuditOutcome
from serving.api._params import StudyUID
from serving.api.security import context

__all__ = [
    "DICOM_JSON",
    "PREFIX",
    "RETRY_AFTER_S",
    "StudyUID",
    "audit_outcome",
    "error_response",
    "public_base",
    "public_root",
]

PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"
RETRY_AFTER_S = 30
"""Retry-After (seconds) of a 503: the image store or the gateway is unavailable."""


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """radcloud's JSON error body ``{"error", "detail"}``."""
    return JSONResponse({"error": error, "detail": detail}, status, headers=headers)


def audit_outcome(status: int) -> AuditOutcome:
    """The audit outcome of an HTTP status: success, minor (4xx) or serious (5xx) failure."""
    if status < 400:
        return AuditOutcome.SUCCESS
    return AuditOutcome.MINOR_FAILURE if status < 500 else AuditOutcome.SERIOUS_FAILURE


def public_root(request: Request) -> str:
    """``RADCLOUD_PUBLIC_URL``, else the address this request came to."""
    return context(request).settings.public_url or str(request.base_url).rstrip("/")


def public_base(request: Request) -> str:
    """The public base URL of DICOMweb (``.../dicom-web``)."""
    return f"{public_root(request)}{PREFIX}"
