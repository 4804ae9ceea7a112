"""Federated retrieval: WADO-RS of a study another hospital holds, through radcloud, under
``/api/federated/hospitals/{hospital}/dicom-web`` (PS3.18 10.4), for a treatment token of that
study's patient.

Study, series and instance retrieval, their metadata and frames, an instance rendered (JPEG or
PNG: the reading app's thumbnails), and the study's series (QIDO-RS ``/studies/{study}/series``)
are relayed from the holding node chunk by chunk, never
buffered: this deployment's Orthanc for a tenant, the remote node's DICOMweb service for a
remote hospital (:mod:`serving.federation.retrieval` decides which, and whether the caller may).
URLs the node writes into JSON answers are rewritten onto this base. A study of another patient
is 404, like one that does not exist (audited 110113). Every request is audited at this side
(110103 / 110112, with purpose, patient key, hospital and node kind); a remote node is told who
asks (``X-Radcloud-Requesting-User``, ``-Hospitals``, ``-Purpose``) for its own audit record,
as IHE XCA-I's responding gateway records the initiating one's assertion.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from core.archive import ArchiveError, ArchiveUnavailableError, RelayedAnswer, open_relay
from core.audit import AuditAction, AuditEventCode
from core.db.models import Role
from core.exceptions import NotFoundError
from core.security import Principal, Purpose
from serving.api._dicomweb import DICOM_JSON, audit_outcome, error_response, public_root
from serving.api._multipart import UrlRewriter
from serving.api._params import BulkPath, FrameList, SeriesUID, SopUID, StudyUID
from serving.api.security import audit_request, context, request_actor, require_purpose
from serving.federation.retrieval import StudySource

__all__ = ["REQUESTER_HEADERS", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/federated/hospitals/{hospital}/dicom-web", tags=["federated"])
Clinician = Annotated[
    Principal,
    Depends(
        require_purpose(Purpose.TREATMENT, roles=(Role.PEER_HOSPITAL, Role.RADIOLOGIST, Role.ADMIN))
    ),
]
Hospital = Annotated[str, Path(min_length=1, max_length=128, description="The holding hospital")]
REQUESTER_HEADERS = (
    "X-Radcloud-Requesting-User",
    "X-Radcloud-Requesting-Hospitals",
    "X-Radcloud-Purpose",
)
_INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
_RENDERED = "image/jpeg"


def federated_base(request: Request, hospital: str) -> str:
    """This hospital's federated WADO-RS base, as clients see it."""
    return f"{public_root(request)}/api/federated/hospitals/{quote(hospital, safe='')}/dicom-web"


def _accept(request: Request, default: str) -> str | None:
    accept = request.headers.get("accept", "").strip()
    if default == "*/*":  # bulk data: what the client asks, else the node's choice
        return accept or None
    if not accept or accept == "*/*" or 'type="*/*"' in accept or "type=*/*" in accept:
        return default
    return accept


def _requester(principal: Principal) -> dict[str, str]:
    hospitals = ",".join(sorted(principal.scope.hospitals)) or "-"
    return dict(zip(REQUESTER_HEADERS, (principal.name, hospitals, "treatment"), strict=True))


async def _relay(
    request: Request,
    principal: Principal,
    hospital: str,
    study: str,
    path: str,
    *,
    default_accept: str,
    json_body: bool,
) -> Response:
    """Authorise, open the node's answer, relay it, and audit (one record per request)."""
    ctx = context(request)
    actor = request_actor(request, principal)
    event = AuditEventCode.QUERY if path.endswith("/series") else AuditEventCode.INSTANCES_ACCESSED
    detail: dict[str, Any] = {
        "federated": True,
        "purpose": str(principal.purpose),
        "patient_key": principal.patient_key,
        "hospital": hospital,
        "path": path,
    }
    source: StudySource | None = None
    stack = contextlib.AsyncExitStack()
    response: Response
    try:
        try:
            source = await run_in_threadpool(
                ctx.retrieval.source, actor, principal, hospital, study
            )
            detail["node"] = str(source.kind)
            answer = await _open(stack, source, request, principal, path, default_accept)
        except NotFoundError:
            response = error_response(404, "not_found", f'study "{study}" does not exist')
        except ArchiveUnavailableError as exc:
            response = error_response(
                502, "node_unavailable", f'hospital "{hospital}" did not answer: {exc.reason}'
            )
        except ArchiveError as exc:
            response = error_response(502, "node_error", f'hospital "{hospital}": {exc}')
        else:
            if answer.status_code >= 400:
                status = 404 if answer.status_code == 404 else 502
                response = error_response(
                    status,
                    "not_found" if status == 404 else "node_error",
                    f'hospital "{hospital}" answered {answer.status_code}',
                )
            elif json_body and source is not None:  # small: read whole, URLs rewritten
                rewriter = UrlRewriter(
                    {source.upstream_base.encode(): federated_base(request, hospital).encode()}
                )
                body = b"".join(rewriter.rewrite([await answer.read()]))
                response = Response(body, answer.status_code, media_type=DICOM_JSON)
            else:
                passed = ("content-type", "content-length", "content-encoding")
                response = StreamingResponse(
                    answer.chunks(),
                    answer.status_code,
                    headers={k: answer.headers[k] for k in passed if k in answer.headers},
                    background=BackgroundTask(stack.aclose),
                )
        detail["status"] = response.status_code
        await run_in_threadpool(
            audit_request,
            request,
            event,
            principal=principal,
            action=AuditAction.EXECUTE if event is AuditEventCode.QUERY else AuditAction.READ,
            outcome=audit_outcome(response.status_code),
            resource_type="study",
            resource_id=study,
            detail=detail,
        )
    except BaseException:
        await stack.aclose()
        raise
    if not isinstance(response, StreamingResponse):
        await stack.aclose()
    return response


async def _open(  # noqa: PLR0917 - where, whom for, what, as what
    stack: contextlib.AsyncExitStack,
    source: StudySource,
    request: Request,
    principal: Principal,
    path: str,
    default_accept: str,
) -> RelayedAnswer:
    """The node's answer, unread, on the event loop; closed with ``stack``.

    Raises
    ------
    ArchiveUnavailableError
        The node did not answer (:class:`~core.archive.ArchiveTimeoutError` in time).
    """
    headers = {"Accept-Encoding": "identity"}
    accept = _accept(request, default_accept)
    if accept:
        headers["Accept"] = accept
    if source.kind.value == "remote":
        headers |= _requester(principal)
    relay = open_relay(
        source.endpoint,
        source.prefix + path,
        query=list(request.query_params.multi_items()),
        headers=headers,
    )
    return await stack.enter_async_context(relay)


@router.get("/studies/{study}")
async def retrieve_study(
    request: Request, caller: Clinician, *, hospital: Hospital, study: StudyUID
) -> Response:
    """The study's instances (multipart/related; application/dicom), from its holding node."""
    return await _relay(
        request,
        caller,
        hospital,
        study,
        f"studies/{study}",
        default_accept=_INSTANCES,
        json_body=False,
    )


@router.get("/studies/{study}/metadata")
async def retrieve_study_metadata(
    request: Request, caller: Clinician, *, hospital: Hospital, study: StudyUID
) -> Response:
    """The study's metadata (DICOM JSON), URLs onto this base."""
    return await _relay(
        request,
        caller,
        hospital,
        study,
        f"studies/{study}/metadata",
        default_accept=DICOM_JSON,
        json_body=True,
    )


@router.get("/studies/{study}/series")
async def search_for_study_series(
    request: Request, caller: Clinician, *, hospital: Hospital, study: StudyUID
) -> Response:
    """The study's series (QIDO-RS, DICOM JSON)."""
    return await _relay(
        request,
        caller,
        hospital,
        study,
        f"studies/{study}/series",
        default_accept=DICOM_JSON,
        json_body=True,
    )


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(
    request: Request, caller: Clinician, *, hospital: Hospital, study: StudyUID, series: SeriesUID
) -> Response:
    """The series' instances."""
    path = f"studies/{study}/series/{series}"
    return await _relay(
        request,
        caller,
        hospital=hospital,
        study=study,
        path=path,
        default_accept=_INSTANCES,
        json_body=False,
    )


@router.get("/studies/{study}/series/{series}/metadata")
async def retrieve_series_metadata(
    request: Request, caller: Clinician, *, hospital: Hospital, study: StudyUID, series: SeriesUID
) -> Response:
    """The series' metadata (DICOM JSON)."""
    path = f"studies/{study}/series/{series}/metadata"
    return await _relay(
        request,
        caller,
        hospital=hospital,
        study=study,
        path=path,
        default_accept=DICOM_JSON,
        json_body=True,
    )


@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(
    request: Request,
    caller: Clinician,
    *,
    hospital: Hospital,
    study: StudyUID,
    series: SeriesUID,
    instance: SopUID,
) -> Response:
    """One instance."""
    path = f"studies/{study}/series/{series}/instances/{instance}"
    return await _relay(
        request,
        caller,
        hospital=hospital,
        study=study,
        path=path,
        default_accept=_INSTANCES,
        json_body=False,
    )


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def retrieve_instance_metadata(
    request: Request,
    caller: Clinician,
    *,
    hospital: Hospital,
    study: StudyUID,
    series: SeriesUID,
    instance: SopUID,
) -> Response:
    """One instance's metadata (DICOM JSON)."""
    path = f"studies/{study}/series/{series}/instances/{instance}/metadata"
    return await _relay(
        request,
        caller,
        hospital=hospital,
        study=study,
        path=path,
        default_accept=DICOM_JSON,
        json_body=True,
    )


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
async def retrieve_instance_rendered(
    request: Request,
    caller: Clinician,
    *,
    hospital: Hospital,
    study: StudyUID,
    series: SeriesUID,
    instance: SopUID,
) -> Response:
    """One instance rendered as an image (WADO-RS rendered, PS3.18 10.4.1.1.3): JPEG unless
    the client asks for another type the node renders."""
    path = f"studies/{study}/series/{series}/instances/{instance}/rendered"
    return await _relay(
        request,
        caller,
        hospital=hospital,
        study=study,
        path=path,
        default_accept=_RENDERED,
        json_body=False,
    )


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def retrieve_frames(
    request: Request,
    caller: Clinician,
    *,
    hospital: Hospital,
    study: StudyUID,
    series: SeriesUID,
    instance: SopUID,
    frames: FrameList,
) -> Response:
    """Frames of one instance (multipart/related; application/octet-stream)."""
    path = f"studies/{study}/series/{series}/instances/{instance}/frames/{frames}"
    return await _relay(
        request,
        caller,
        hospital=hospital,
        study=study,
        path=path,
        default_accept=_FRAMES,
        json_body=False,
    )


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulk/{bulk:path}")
async def retrieve_bulk_data(
    request: Request,
    caller: Clinician,
    *,
    hospital: Hospital,
    study: StudyUID,
    series: SeriesUID,
    instance: SopUID,
    bulk: BulkPath,
) -> Response:
    """Bulk data named by a BulkDataURI of this base's metadata."""
    path = f"studies/{study}/series/{series}/instances/{instance}/bulk/{bulk}"
    return await _relay(
        request, caller, hospital, study, path, default_accept="*/*", json_body=False
    )
