"""QIDO-RS and WADO-RS on radcloud's authenticated API (PS3.18 10.4, 10.6), under ``/dicom-web``
(STOW-RS: :mod:`serving.api.routes.stow`).

Roles ``radiologist``, ``ml_engineer``, ``admin``, and ``peer_hospital`` as another radcloud's
API key (its record names the requester that deployment asserts). Requests are proxied to
Orthanc's DICOMweb plugin and streamed back, never buffered. Orthanc is told the public host
(``Forwarded``, RFC 7239) and its own base URL is rewritten in JSON bodies, so no answer names
Orthanc's internal address.

Every request writes one audit record: 110112 Query or 110103 Instances Accessed (action R),
with the study UID and the patient ID (keyed hash) where known; a query's record lists the
studies it answered with, each with its patient's keyed hash (``detail["returned"]``).

The hospital boundary (:mod:`core.tenancy`): a request naming a study in its path is checked
against the caller's hospitals before Orthanc is asked anything (a study of another hospital is
404, like one that does not exist); a search across studies keeps only the caller's studies'
matches before it is paged (:mod:`serving.api._qido`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from enum import Enum
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from core.audit import AuditAction, AuditEventCode, AuditOutcome
from core.db.models import Role
from core.exceptions import NotFoundError, PermissionDeniedError
from core.multipart import MultipartError, parse_media_type
from core.security import Actor, AuthMethod, Principal
from core.tenancy import visible_study_uids
from core.uids import InvalidUidError, check_uid_list
from serving._audit import returned_studies, study_patient_ids
from serving._scope import require_study_in_scope
from serving.api import _qido
from serving.api._dicomweb import (
    DICOM_JSON,
    PREFIX,
    RETRY_AFTER_S,
    StudyUID,
    audit_outcome,
    error_response,
    public_base,
    public_root,
)
from serving.api._multipart import UrlRewriter
from serving.api._params import BulkPath, FrameList, SeriesUID, SopUID
from serving.api.security import audit_request, context, request_actor, require_roles

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
_VIEWER_ROLES = (Role.RADIOLOGIST, Role.ML_ENGINEER, Role.ADMIN, Role.PEER_HOSPITAL)
_by_role = require_roles(*_VIEWER_ROLES)
ASSERTED_REQUESTER = {
    "x-radcloud-requesting-user": "user",
    "x-radcloud-requesting-hospitals": "hospitals",
    "x-radcloud-purpose": "purpose",
}
"""Headers in which another radcloud's federated retrieval says who asks (as asserted)."""


def _viewer(request: Request) -> Principal:
    """Radiologists, ML engineers and admins; ``peer_hospital`` only as a service account's API
    key: another radcloud deployment asking for the studies of the hospitals that share with it
    (the key's scope), on behalf of its users. A clinician's own ``peer_hospital`` token reads
    other hospitals' studies through ``/api/federated`` with a treatment token instead."""
    principal = _by_role(request)
    peer_only = not principal.roles & {Role.RADIOLOGIST, Role.ML_ENGINEER, Role.ADMIN}
    if peer_only and principal.method is not AuthMethod.API_KEY:
        reason = "peer_hospital reads DICOMweb only with a peer deployment's API key"
        audit_request(
            request,
            AuditEventCode.SECURITY_ALERT,
            principal=principal,
            outcome=AuditOutcome.MINOR_FAILURE,
            resource_type="route",
            resource_id=f"{request.method} {request.url.path}",
            detail={"reason": reason},
        )
        raise PermissionDeniedError(principal.role, [r.value for r in _VIEWER_ROLES[:3]])
    return principal


Viewer = Annotated[Principal, Depends(_viewer)]


def _asserted(request: Request) -> dict[str, Any]:
    """``{"asserted_requester": ...}`` when another radcloud says on whose behalf it asks: the
    responding side's record of the initiating side's assertion (IHE XCA-I), else nothing."""
    asserted = {
        name: request.headers[header][:128]
        for header, name in ASSERTED_REQUESTER.items()
        if header in request.headers
    }
    return {"asserted_requester": asserted} if asserted else {}


_FORWARDED_HOST = re.compile(r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")


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
    public = httpx.URL(public_root(request))
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
        return error_response(
            404, "not_found", detail or "no such study, series, instance or frame"
        )
    if status >= 500:
        return error_response(
            502, "image_store_error", f"the image store failed: {detail or status}"
        )
    error = {400: "bad_request", 406: "not_acceptable"}.get(status, "image_store_refused")
    return error_response(status, error, detail or f"the image store answered {status}")


def _open(client: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
    return client.send(client.build_request("GET", url, headers=headers), stream=True)


def _not_found(study: str) -> JSONResponse:
    """The answer for a study that does not exist, or is of another hospital: the same."""
    return error_response(404, "not_found", f'study "{study}" does not exist')


def _in_scope(request: Request, actor: Actor, study: str) -> bool:
    """Whether ``study`` is of the caller's hospitals (an unknown study is not)."""
    ctx = context(request)
    try:
        require_study_in_scope(ctx.db, ctx.audit, study, caller=actor)
    except NotFoundError:
        return False
    return True


def _scoped_search(
    request: Request, actor: Actor, path: str, headers: dict[str, str], rewriter: UrlRewriter
) -> tuple[Response, list[str]]:
    """A QIDO-RS search across studies: Orthanc's matches of the caller's hospitals only, then
    paged (:mod:`serving.api._qido`; a platform operator's search is paged by Orthanc and kept
    whole); and the study UIDs it answered with, for the audit record."""
    ctx = context(request)
    operator = actor.scope.platform_operator
    if not operator and not actor.scope.hospitals:  # nothing to find: Orthanc is not asked
        return Response(b"[]", 200, media_type=DICOM_JSON), []
    accept = request.headers.get("accept", "")
    if "xml" in accept and "json" not in accept and "*/*" not in accept:
        message = f"searches answer {DICOM_JSON} only, not {accept[:80]}"
        return error_response(406, "not_acceptable", message), []
    max_results = ctx.settings.archive_max_find_results
    try:
        params, window = _qido.upstream_query(request.query_params, max_results)
    except ValueError as exc:
        return error_response(400, "bad_request", str(exc)), []
    if operator:
        params = [*request.query_params.multi_items(), ("includefield", _qido.STUDY_UID_TAG)]
        window = _qido.Page(None, 0)
    client: httpx.Client = ctx.orthanc
    url = httpx.URL(f"{ctx.settings.orthanc_url}{PREFIX}{path}", params=params)
    answer = client.get(url, headers=headers | {"Accept": DICOM_JSON})
    if not answer.is_success:
        return _orthanc_error(answer, rewriter), []
    try:
        visible = None
        if not operator:  # a platform operator's search is paged by Orthanc, bounded by its limit
            _qido.check_breadth(answer.content, max_results)
            with ctx.db.session() as session:
                found = _qido.study_uids(answer.content)
                visible = visible_study_uids(session, actor.scope, found)
        body, returned = _qido.page(answer.content, visible, window)
    except ValueError as exc:  # a SearchTooBroadError is the caller's to narrow: 413
        if isinstance(exc, _qido.SearchTooBroadError):
            status, error, detail = 413, "too_broad", str(exc)
        else:
            status, error, detail = 502, "image_store_error", f"the image store failed: {exc}"
        return error_response(status, error, detail), []
    body = b"".join(rewriter.rewrite([body]))
    return Response(body, 200, media_type=DICOM_JSON), returned


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


_UID_KEYS = frozenset(
    {"StudyInstanceUID", "0020000D", "SeriesInstanceUID", "0020000E", "SOPInstanceUID", "00080018"}
)


def _invalid_uid_key(request: Request) -> str | None:
    """Why a QIDO UID matching key is not a list of safe UIDs (PS3.18 8.3.4.1: comma-separated;
    no wildcards for UIDs, PS3.4 C.2.2.2.2), or ``None``; checked before Orthanc is asked."""
    for name, value in request.query_params.multi_items():
        if name in _UID_KEYS:
            try:
                check_uid_list(re.split(r"[,\\]", value), name)
            except InvalidUidError as exc:
                return str(exc)
    return None


def _store_unavailable(path: str, exc: httpx.TransportError) -> Response:
    """503 with Retry-After: Orthanc did not answer the request for ``path``."""
    logger.error("image store (Orthanc) unreachable for %s: %r", path, exc)
    return error_response(
        503,
        "image_store_unavailable",
        "the image store (Orthanc) is unavailable; try again later",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


async def _forward(
    client: httpx.Client,
    url: str,
    *,
    headers: dict[str, str],
    path: str,
    kind: _Kind,
    rewriter: UrlRewriter,
) -> tuple[Response, httpx.Response | None]:
    """Orthanc's answer to a GET: streamed (with the upstream response, which the caller closes
    if it never relays it), or our JSON error."""
    response: Response
    streaming: httpx.Response | None = None
    try:
        answer = await run_in_threadpool(_open, client, url, headers)
    except httpx.TransportError as exc:
        response = _store_unavailable(path, exc)
    else:
        if answer.is_success:
            streaming = answer
            response = _streaming(answer, rewriter if kind.rewrite else None)
        else:
            try:
                response = await run_in_threadpool(_orthanc_error, answer, rewriter)
            finally:
                await run_in_threadpool(answer.close)
    return response, streaming


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
    public = public_base(request)
    headers, forwarded_base = _upstream_headers(request, kind)
    internal = f"{orthanc_base}{PREFIX}".encode()
    replacements = {internal: public.encode()}
    if forwarded_base:
        replacements[forwarded_base.encode()] = public.encode()
    rewriter = UrlRewriter(replacements)
    url = f"{orthanc_base}{PREFIX}{path}"
    if request.url.query:
        url = f"{url}?{request.url.query}"
    patient_id: str | None = None
    detail: dict[str, Any] = {"path": f"{PREFIX}{path}"} | _asserted(request)
    actor = request_actor(request, principal)
    named = study
    if kind is _Kind.QUERY:
        study_param, patient_id, detail["query"] = _query_audit(request)
        study = study or study_param
    response: Response
    streaming: httpx.Response | None = None
    returned: list[str] = []
    # UID matching keys are checked first: a 400 for a malformed key tells nothing of a study
    refused = _invalid_uid_key(request) if kind is _Kind.QUERY else None
    try:
        if refused is not None:
            response = error_response(400, "bad_request", refused)
        elif named is not None and not await run_in_threadpool(_in_scope, request, actor, named):
            response = _not_found(named)
        elif named is None:
            response, returned = await run_in_threadpool(
                _scoped_search, request, actor, path, headers, rewriter
            )
        else:
            response, streaming = await _forward(
                client, url, headers=headers, path=path, kind=kind, rewriter=rewriter
            )
    except httpx.TransportError as exc:  # the scoped search's request to Orthanc
        response = _store_unavailable(path, exc)
    try:
        if streaming is not None and study and kind is not _Kind.QUERY:
            patient_id = await run_in_threadpool(ctx.patient_ids.get, study)
        if kind is _Kind.QUERY and response.status_code < 300:  # which patients it showed
            shown = [named] if named else returned
            patients = await run_in_threadpool(study_patient_ids, ctx.db, shown)
            detail["returned"] = returned_studies(ctx.audit, patients.items())
        detail["status"] = response.status_code
        await run_in_threadpool(
            audit_request,
            request,
            kind.event,
            principal=principal,
            action=AuditAction.EXECUTE if kind is _Kind.QUERY else AuditAction.READ,
            outcome=audit_outcome(response.status_code),
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
