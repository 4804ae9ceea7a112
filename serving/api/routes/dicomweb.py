"""DICOMweb on radcloud's authenticated API (PS3.18 10.4-10.6), under ``/dicom-web``.

- STOW-RS (roles ``pacs``, ``admin``): each part of a ``multipart/related;
  type="application/dicom"`` body is handed, as soon as it has arrived, to the gateway process
  over its internal STOW endpoint, where it takes the path of an instance received over DIMSE
  (validation, quarantine, durable spool; the gateway is the spool's only writer) and is
  forwarded to Orthanc shortly after (failure reasons: :mod:`serving.api._stow`). The gateway
  unreachable: 503 with Retry-After, nothing stored (or, if it fails after some parts were
  stored, 202 naming the rest as not stored); an instance is only ever reported stored once
  the gateway has it on disk.
- QIDO-RS and WADO-RS (roles ``radiologist``, ``ml_engineer``, ``admin``): proxied to Orthanc's
  DICOMweb plugin and streamed back, never buffered. Orthanc is told the public host
  (``Forwarded``, RFC 7239) and its own base URL is rewritten in JSON bodies, so no answer names
  Orthanc's internal address.

Every request writes one audit record: 110112 Query, 110103 Instances Accessed (action R) or
110104 Instances Transferred (action C), with the study UID and the patient ID where known.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from enum import Enum
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import ClientDisconnect

from core.audit import AuditAction, AuditEventCode, AuditOutcome
from core.db.models import Role
from core.security import Principal
from serving.api._multipart import (
    BodyPart,
    MultipartError,
    MultipartReader,
    UrlRewriter,
    parse_media_type,
)
from serving.api._stow import FailureReason, StoreOutcome, store_part, store_response
from serving.api.security import audit_request, context, require_roles

__all__ = ["router"]

logger = logging.getLogger(__name__)

PREFIX = "/dicom-web"
router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
Viewer = Annotated[
    Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ML_ENGINEER, Role.ADMIN))
]
Sender = Annotated[Principal, Depends(require_roles(Role.PACS, Role.ADMIN))]

_UID_PATTERN = r"^[0-9A-Za-z_-][0-9A-Za-z._-]{0,127}$"  # lenient on stored UIDs, never "." / ".."
StudyUID = Annotated[str, Path(pattern=_UID_PATTERN, description="Study Instance UID")]
SeriesUID = Annotated[str, Path(pattern=_UID_PATTERN, description="Series Instance UID")]
SopUID = Annotated[str, Path(pattern=_UID_PATTERN, description="SOP Instance UID")]
FrameList = Annotated[
    str, Path(pattern=r"^[0-9]{1,9}(,[0-9]{1,9}){0,1023}$", description="Frame numbers, e.g. 1,3")
]
BulkPath = Annotated[
    str, Path(pattern=r"^[0-9A-Fa-f]{1,8}(/[0-9A-Fa-f]{1,8}){0,31}$", description="Bulk data path")
]

DICOM_JSON = "application/dicom+json"
_DICOM = "application/dicom"
_FORWARDED_HOST = re.compile(r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")
_RETRY_AFTER_S = 30


# -- Orthanc proxy (QIDO-RS, WADO-RS) ----------------------------------------------------------


class _Kind(Enum):
    """What a proxied request is: its audit event, default Accept, and whether URLs in its JSON
    body are rewritten.
    """

    QUERY = (AuditEventCode.QUERY, DICOM_JSON, True)
    METADATA = (AuditEventCode.INSTANCES_ACCESSED, DICOM_JSON, True)
    INSTANCES = (
        AuditEventCode.INSTANCES_ACCESSED,
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        False,
    )
    FRAMES = (
        AuditEventCode.INSTANCES_ACCESSED,
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        False,
    )
    RENDERED = (AuditEventCode.INSTANCES_ACCESSED, None, False)

    def __init__(self, event: AuditEventCode, accept: str | None, rewrite: bool) -> None:
        self.event, self.default_accept, self.rewrite = event, accept, rewrite


class _PatientIds:
    """Patient ID of recently accessed studies (for audit records), so that a viewer fetching
    frame after frame does not cost one more Orthanc query each.
    """

    def __init__(self, size: int = 4096, ttl_s: float = 300.0) -> None:
        self._size, self._ttl_s = size, ttl_s
        self._entries: OrderedDict[tuple[str, str], tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, client: httpx.Client, base_url: str, study: str) -> str | None:
        key, now = (base_url, study), time.monotonic()
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and now - cached[0] < self._ttl_s:
                self._entries.move_to_end(key)
                return cached[1]
        patient_id = _lookup_patient_id(client, base_url, study)
        with self._lock:
            self._entries[key] = (now, patient_id)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return patient_id


_patient_ids = _PatientIds()


def _lookup_patient_id(client: httpx.Client, base_url: str, study: str) -> str | None:
    """The study's Patient ID (0010,0020) by a QIDO-RS query to Orthanc; ``None`` if unknown."""
    try:
        answer = client.get(
            f"{base_url}{PREFIX}/studies",
            params={"StudyInstanceUID": study, "includefield": "00100020"},
            headers={"Accept": DICOM_JSON},
        )
        matches = answer.json() if answer.status_code == 200 else []
        values = matches[0]["00100020"]["Value"] if matches else []
    except (httpx.HTTPError, ValueError, LookupError, TypeError) as exc:
        logger.debug("no patient ID for study %s: %s", study, exc)
        return None
    return str(values[0]) if values else None


def _error(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status, headers=headers)


def _outcome(status: int) -> AuditOutcome:
    if status < 400:
        return AuditOutcome.SUCCESS
    return AuditOutcome.MINOR_FAILURE if status < 500 else AuditOutcome.SERIOUS_FAILURE


def _public_root(request: Request) -> str:
    """``RADCLOUD_PUBLIC_URL``, else the address this request came to."""
    return context(request).settings.public_url or str(request.base_url).rstrip("/")


def _public_base(request: Request) -> str:
    return f"{_public_root(request)}{PREFIX}"


def _accept(accept: str, default: str | None) -> str | None:
    """The Accept header for Orthanc: ``*/*`` and ``multipart/related; type="*/*"`` (what
    dicomweb-client asks for frames), which Orthanc refuses, become the route's default.
    """
    if default is None:
        return None if accept.strip() in ("", "*/*") else accept
    alternatives: list[str] = []
    for alternative in accept.split(","):
        try:
            media_type, params = parse_media_type(alternative)
        except MultipartError:
            continue
        wildcard = media_type == "*/*" or (
            media_type == "multipart/related" and params.get("type", "*/*") == "*/*"
        )
        alternatives.append(default if wildcard else alternative.strip())
    return ", ".join(dict.fromkeys(alternatives)) or default


def _upstream_headers(request: Request, kind: _Kind) -> tuple[dict[str, str], str | None]:
    """Headers for Orthanc, and the base URL Orthanc will then put in its answers."""
    headers = {"Accept-Encoding": "identity"}
    accept = _accept(request.headers.get("accept", ""), kind.default_accept)
    if accept:
        headers["Accept"] = accept
    public = httpx.URL(_public_root(request))
    host = public.netloc.decode()
    if _FORWARDED_HOST.match(host) and public.scheme in ("http", "https"):
        headers["Forwarded"] = f"host={host};proto={public.scheme}"
        return headers, f"{public.scheme}://{host}{PREFIX}"
    return headers, None


def _orthanc_error(answer: httpx.Response, rewriter: UrlRewriter) -> JSONResponse:
    """Our JSON error for an error answer of Orthanc: 4xx kept, 5xx as 502."""
    try:
        body = json.loads(answer.read())
        detail = str(body.get("Details") or body.get("Message") or "")
    except (ValueError, AttributeError, httpx.HTTPError):
        detail = ""
    detail = b"".join(rewriter.rewrite([detail.encode()])).decode(errors="replace")
    status = answer.status_code
    if status == 404:
        return _error(404, "not_found", detail or "no such study, series, instance or frame")
    if status >= 500:
        return _error(502, "image_store_error", f"the image store failed: {detail or status}")
    error = {400: "bad_request", 406: "not_acceptable"}.get(status, "image_store_refused")
    return _error(status, error, detail or f"the image store answered {status}")


def _open(client: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
    return client.send(client.build_request("GET", url, headers=headers), stream=True)


async def _relay(answer: httpx.Response, rewriter: UrlRewriter | None) -> AsyncIterator[bytes]:
    """Orthanc's body, chunk by chunk; the upstream connection is released however it ends."""
    chunks = answer.iter_raw() if rewriter is None else rewriter.rewrite(answer.iter_bytes())
    try:
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk
    except httpx.HTTPError as exc:
        logger.warning("stream from the image store broke off (%s): %s", answer.url.path, exc)
        raise
    finally:
        answer.close()


def _query_audit(request: Request) -> tuple[str | None, str | None, list[str]]:
    """Study UID, patient ID and parameter names of a QIDO query (never its other values)."""
    params = request.query_params
    study = params.get("StudyInstanceUID") or params.get("0020000D")
    patient = params.get("PatientID") or params.get("00100020")
    return study, patient, sorted(set(params.keys()))


async def _proxy(
    request: Request, principal: Principal, kind: _Kind, path: str, study: str | None
) -> Response:
    """Forward a GET to Orthanc's DICOMweb, stream its answer back, and audit the request."""
    ctx = context(request)
    client: httpx.Client = ctx.orthanc
    orthanc_base = ctx.settings.orthanc_url
    public_base = _public_base(request)
    headers, forwarded_base = _upstream_headers(request, kind)
    internal = f"{orthanc_base}{PREFIX}".encode()
    replacements = {internal: public_base.encode()}
    if forwarded_base:
        replacements[forwarded_base.encode()] = public_base.encode()
    rewriter = UrlRewriter(replacements)
    url = f"{orthanc_base}{PREFIX}{path}"
    if request.url.query:
        url = f"{url}?{request.url.query}"
    patient_id: str | None = None
    detail: dict[str, Any] = {"path": f"{PREFIX}{path}"}
    if kind is _Kind.QUERY:
        study_param, patient_id, detail["query"] = _query_audit(request)
        study = study or study_param
    response: Response
    streaming: httpx.Response | None = None
    try:
        answer = await run_in_threadpool(_open, client, url, headers)
    except httpx.TransportError as exc:
        logger.error("image store (Orthanc) unreachable for %s: %r", path, exc)
        response = _error(
            503,
            "image_store_unavailable",
            "the image store (Orthanc) is unavailable; try again later",
            {"Retry-After": str(_RETRY_AFTER_S)},
        )
    else:
        if answer.is_success:
            streaming = answer
            response = _streaming(answer, rewriter if kind.rewrite else None)
        else:
            try:
                response = await run_in_threadpool(_orthanc_error, answer, rewriter)
            finally:
                await run_in_threadpool(answer.close)
    try:
        if streaming is not None and study and kind is not _Kind.QUERY:
            patient_id = await run_in_threadpool(_patient_ids.get, client, orthanc_base, study)
        detail["status"] = response.status_code
        await run_in_threadpool(
            audit_request,
            request,
            kind.event,
            principal=principal,
            action=AuditAction.EXECUTE if kind is _Kind.QUERY else AuditAction.READ,
            outcome=_outcome(response.status_code),
            resource_type="study" if study else None,
            resource_id=study,
            patient_id=patient_id,
            detail=detail,
        )
    except BaseException:
        if streaming is not None:  # the body will never be relayed: free the connection
            streaming.close()
        raise
    return response


def _streaming(answer: httpx.Response, rewriter: UrlRewriter | None) -> StreamingResponse:
    passed = ["content-type", "warning"]
    if rewriter is None:
        passed += ["content-length", "content-encoding"]
    headers = {name: answer.headers[name] for name in passed if name in answer.headers}
    return StreamingResponse(_relay(answer, rewriter), answer.status_code, headers=headers)


def _segments(*parts: str) -> str:
    return "".join(f"/{quote(part, safe='')}" for part in parts)


# -- QIDO-RS (PS3.18 10.6) ---------------------------------------------------------------------


@router.get("/studies")
async def search_for_studies(request: Request, principal: Viewer) -> Response:
    """Search for studies (QIDO-RS); the query string is passed to the image store."""
    return await _proxy(request, principal, _Kind.QUERY, "/studies", None)


@router.get("/series")
async def search_for_all_series(request: Request, principal: Viewer) -> Response:
    """Search for series of any study (QIDO-RS)."""
    return await _proxy(request, principal, _Kind.QUERY, "/series", None)


@router.get("/instances")
async def search_for_all_instances(request: Request, principal: Viewer) -> Response:
    """Search for instances of any study (QIDO-RS)."""
    return await _proxy(request, principal, _Kind.QUERY, "/instances", None)


@router.get("/studies/{study}/series")
async def search_for_series(request: Request, principal: Viewer, study: StudyUID) -> Response:
    """Search for series of a study (QIDO-RS)."""
    path = _segments("studies", study, "series")
    return await _proxy(request, principal, _Kind.QUERY, path, study)


@router.get("/studies/{study}/instances")
async def search_for_study_instances(
    request: Request, principal: Viewer, study: StudyUID
) -> Response:
    """Search for instances of a study (QIDO-RS)."""
    path = _segments("studies", study, "instances")
    return await _proxy(request, principal, _Kind.QUERY, path, study)


@router.get("/studies/{study}/series/{series}/instances")
async def search_for_instances(
    request: Request, principal: Viewer, *, study: StudyUID, series: SeriesUID
) -> Response:
    """Search for instances of a series (QIDO-RS)."""
    path = _segments("studies", study, "series", series, "instances")
    return await _proxy(request, principal, _Kind.QUERY, path, study)


# -- WADO-RS (PS3.18 10.4) ---------------------------------------------------------------------


@router.get("/studies/{study}")
async def retrieve_study(request: Request, principal: Viewer, study: StudyUID) -> Response:
    """Retrieve every instance of a study (WADO-RS), streamed as multipart/related."""
    return await _proxy(request, principal, _Kind.INSTANCES, _segments("studies", study), study)


@router.get("/studies/{study}/metadata")
async def retrieve_study_metadata(request: Request, principal: Viewer, study: StudyUID) -> Response:
    """Retrieve the metadata of every instance of a study (WADO-RS), as DICOM JSON."""
    path = _segments("studies", study, "metadata")
    return await _proxy(request, principal, _Kind.METADATA, path, study)


@router.get("/studies/{study}/rendered")
async def retrieve_study_rendered(request: Request, principal: Viewer, study: StudyUID) -> Response:
    """Retrieve a study rendered as an image (WADO-RS rendered)."""
    path = _segments("studies", study, "rendered")
    return await _proxy(request, principal, _Kind.RENDERED, path, study)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(
    request: Request, principal: Viewer, *, study: StudyUID, series: SeriesUID
) -> Response:
    """Retrieve every instance of a series (WADO-RS), streamed as multipart/related."""
    path = _segments("studies", study, "series", series)
    return await _proxy(request, principal, _Kind.INSTANCES, path, study)


@router.get("/studies/{study}/series/{series}/metadata")
async def retrieve_series_metadata(
    request: Request, principal: Viewer, *, study: StudyUID, series: SeriesUID
) -> Response:
    """Retrieve the metadata of every instance of a series (WADO-RS), as DICOM JSON."""
    path = _segments("studies", study, "series", series, "metadata")
    return await _proxy(request, principal, _Kind.METADATA, path, study)


@router.get("/studies/{study}/series/{series}/rendered")
async def retrieve_series_rendered(
    request: Request, principal: Viewer, *, study: StudyUID, series: SeriesUID
) -> Response:
    """Retrieve a series rendered as an image (WADO-RS rendered)."""
    path = _segments("studies", study, "series", series, "rendered")
    return await _proxy(request, principal, _Kind.RENDERED, path, study)


_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


@router.get(_INSTANCE)
async def retrieve_instance(
    request: Request, principal: Viewer, *, study: StudyUID, series: SeriesUID, instance: SopUID
) -> Response:
    """Retrieve one instance (WADO-RS), as multipart/related application/dicom."""
    path = _segments("studies", study, "series", series, "instances", instance)
    return await _proxy(request, principal, _Kind.INSTANCES, path, study)


@router.get(f"{_INSTANCE}/metadata")
async def retrieve_instance_metadata(
    request: Request, principal: Viewer, *, study: StudyUID, series: SeriesUID, instance: SopUID
) -> Response:
    """Retrieve the metadata of one instance (WADO-RS), as DICOM JSON."""
    path = _segments("studies", study, "series", series, "instances", instance, "metadata")
    return await _proxy(request, principal, _Kind.METADATA, path, study)


@router.get(f"{_INSTANCE}/rendered")
async def retrieve_instance_rendered(
    request: Request, principal: Viewer, *, study: StudyUID, series: SeriesUID, instance: SopUID
) -> Response:
    """Retrieve one instance rendered as an image (WADO-RS rendered)."""
    path = _segments("studies", study, "series", series, "instances", instance, "rendered")
    return await _proxy(request, principal, _Kind.RENDERED, path, study)


@router.get(f"{_INSTANCE}/frames/{{frames}}")
async def retrieve_instance_frames(
    request: Request,
    principal: Viewer,
    *,
    study: StudyUID,
    series: SeriesUID,
    instance: SopUID,
    frames: FrameList,
) -> Response:
    """Retrieve frames of one instance (WADO-RS), as multipart/related pixel data."""
    path = _segments("studies", study, "series", series, "instances", instance, "frames", frames)
    return await _proxy(request, principal, _Kind.FRAMES, path, study)


@router.get(f"{_INSTANCE}/frames/{{frames}}/rendered")
async def retrieve_frames_rendered(
    request: Request,
    principal: Viewer,
    *,
    study: StudyUID,
    series: SeriesUID,
    instance: SopUID,
    frames: FrameList,
) -> Response:
    """Retrieve frames of one instance rendered as an image (WADO-RS rendered)."""
    path = _segments("studies", study, "series", series, "instances", instance, "frames", frames)
    return await _proxy(request, principal, _Kind.RENDERED, f"{path}/rendered", study)


@router.get(f"{_INSTANCE}/bulk/{{bulk:path}}")
async def retrieve_bulk_data(
    request: Request,
    principal: Viewer,
    *,
    study: StudyUID,
    series: SeriesUID,
    instance: SopUID,
    bulk: BulkPath,
) -> Response:
    """Retrieve bulk data named by a BulkDataURI in metadata (WADO-RS)."""
    path = _segments("studies", study, "series", series, "instances", instance, "bulk")
    path += _segments(*bulk.split("/"))
    return await _proxy(request, principal, _Kind.FRAMES, path, study)


# -- STOW-RS (PS3.18 10.5) ---------------------------------------------------------------------


class _GatewayGone(Exception):  # noqa: N818 - control flow between two functions of this module
    """The gateway could not be reached while storing part ``number``."""

    def __init__(self, number: int, cause: httpx.TransportError) -> None:
        self.number, self.cause = number, cause
        super().__init__(f"part {number}: {cause!r}")


async def _read_parts(
    request: Request,
    reader: MultipartReader,
    study: str | None,
    outcomes: list[StoreOutcome],
) -> None:
    """Hand each part to the gateway as soon as it has arrived (one part in memory at a time),
    appending its outcome to ``outcomes``.

    Raises
    ------
    MultipartError
        The body is malformed before any part was read.
    _GatewayGone
        The gateway is unreachable; reading stopped there.
    """
    ingest = context(request).ingest

    async def store(parts: list[BodyPart]) -> None:
        for part in parts:
            number = len(outcomes) + 1
            try:
                outcome = await run_in_threadpool(store_part, ingest, part, number, study)
            except httpx.TransportError as exc:
                raise _GatewayGone(number, exc) from exc
            outcomes.append(outcome)

    try:
        async for chunk in request.stream():
            await store(reader.feed(chunk))
        await store(reader.close())
    except MultipartError as exc:
        if not outcomes:
            raise
        reason = f"body malformed after part {len(outcomes)}: {exc}"
        outcomes.append(
            StoreOutcome(None, None, None, failure=FailureReason.CANNOT_UNDERSTAND, reason=reason)
        )


def _gateway_gone(gone: _GatewayGone, outcomes: list[StoreOutcome]) -> JSONResponse | None:
    """503 when the gateway was unreachable before any instance was stored; else ``None``,
    with the failure of part ``gone.number`` and the rest of the body appended to ``outcomes``.
    """
    logger.error("the DICOM gateway is unreachable for STOW-RS: %r", gone.cause)
    if not any(o.failure is None for o in outcomes):
        return _error(
            503,
            "gateway_unavailable",
            "the DICOM gateway is unavailable: nothing was stored; try again later",
            {"Retry-After": str(_RETRY_AFTER_S)},
        )
    reason = f"the DICOM gateway became unavailable: part {gone.number} and later not stored"
    failure = FailureReason.PROCESSING_FAILURE
    outcomes.append(
        StoreOutcome(None, None, None, failure=failure, reason=reason, server_side=True)
    )
    return None


def _unique(values: set[str | None]) -> str | None:
    known = {value for value in values if value}
    return known.pop() if len(known) == 1 else None


async def _audit_store(
    request: Request,
    principal: Principal,
    study: str | None,
    outcomes: list[StoreOutcome],
    status: int | None,
) -> None:
    """One 110104 record (action C) for a STOW-RS request; ``status`` ``None``: the client left."""
    failed = [o for o in outcomes if o.failure is not None]
    studies = {o.study_instance_uid for o in outcomes}
    detail = {
        "source": "stow",
        "status": status,
        "stored": len(outcomes) - len(failed),
        "failed": len(failed),
        "studies": sorted(s for s in studies if s)[:20],
        "failures": [
            {
                "sop_instance_uid": o.sop_instance_uid,
                "reason": f"{o.failure:04X}",
                "detail": o.reason,
            }
            for o in failed[:20]
        ],
    }
    logger.info(
        "STOW-RS by %s: %d stored, %d failed (HTTP %s)",
        principal.name,
        detail["stored"],
        len(failed),
        status or "none: client disconnected",
    )
    resource = study or _unique(studies)
    await run_in_threadpool(
        audit_request,
        request,
        AuditEventCode.INSTANCES_TRANSFERRED,
        principal=principal,
        action=AuditAction.CREATE,
        outcome=_outcome(status) if status not in (None, 202) else AuditOutcome.MINOR_FAILURE,
        resource_type="study" if resource else None,
        resource_id=resource,
        patient_id=_unique({o.patient_id for o in outcomes}),
        detail=detail,
    )


async def _store_parts(
    request: Request, boundary: str, study: str | None, outcomes: list[StoreOutcome]
) -> Response:
    """Read the body's parts into ``outcomes`` and answer for them."""
    limit = context(request).ingest.max_instance_bytes
    try:
        reader = MultipartReader(boundary, limit)
        await _read_parts(request, reader, study, outcomes)
    except MultipartError as exc:
        return _error(400, "bad_request", f"malformed multipart/related body: {exc}")
    except _GatewayGone as gone:
        unavailable = _gateway_gone(gone, outcomes)
        if unavailable is not None:
            return unavailable
    if not outcomes:
        return _error(400, "bad_request", "the request holds no instances")
    status, body = store_response(outcomes, _public_base(request), study)
    headers = {"Retry-After": str(_RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body, status, headers=headers, media_type=DICOM_JSON)


async def _store(request: Request, principal: Principal, study: str | None) -> Response:
    """Run a STOW-RS request and audit it."""
    content_type = request.headers.get("content-type", "")
    try:
        media_type, params = parse_media_type(content_type)
    except MultipartError:
        media_type, params = "", {}
    outcomes: list[StoreOutcome] = []
    response: Response
    if media_type != "multipart/related" or params.get("type", _DICOM).lower() != _DICOM:
        response = _error(
            415,
            "unsupported_media_type",
            f'Content-Type "{content_type}" is not supported; '
            'expected multipart/related; type="application/dicom"',
        )
    else:
        try:
            response = await _store_parts(request, params.get("boundary", ""), study, outcomes)
        except ClientDisconnect:
            await _audit_store(request, principal, study, outcomes, None)
            raise
    await _audit_store(request, principal, study, outcomes, response.status_code)
    return response


@router.post("/studies")
async def store_instances(request: Request, principal: Sender) -> Response:
    """Store instances (STOW-RS): validated, spooled durably, then forwarded to the store."""
    return await _store(request, principal, None)


@router.post("/studies/{study}")
async def store_study_instances(request: Request, principal: Sender, study: StudyUID) -> Response:
    """Store instances of one study (STOW-RS); instances of other studies are refused."""
    return await _store(request, principal, study)
