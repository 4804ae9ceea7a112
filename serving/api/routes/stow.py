"""STOW-RS on radcloud's authenticated API (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]``,
roles ``pacs`` and ``admin``.

Each part of a ``multipart/related; type="application/dicom"`` body is handed, as soon as it has
arrived (one part in memory at a time), to the gateway process over its internal STOW endpoint
(:class:`~serving.api._stow.GatewayIngest`). There it takes the path of an instance received
over DIMSE (validation, quarantine, durable spool; the gateway is the spool's only writer, so
the spool's limit, accounting and fsync rules hold as one) and is forwarded to Orthanc shortly
after. The per-instance answers become the Store Instances Response (failure reasons:
:mod:`serving.api._stow`). An instance is reported stored only once the gateway has it on disk.

With the Orthanc edge (``RADCLOUD_GATEWAY_EDGE=orthanc``) the parts go to the gateway in
batches (at most ``core.ingest.BATCH_MAX_PARTS`` parts, ``BATCH_MAX_BYTES`` bytes), one being
stored while the next is read, so at most two batches are in memory; the gateway checks them
and stores the accepted ones with Orthanc's own STOW-RS, no spool, and an instance is reported
stored only once Orthanc has it (:class:`dicom_gateway.stow.ArchiveStow`).

Budget: the body is bounded before routing (``RADCLOUD_API_MAX_STOW_MIB``,
:mod:`serving._body_limit`); a request of more than ``RADCLOUD_API_MAX_STOW_PARTS``
parts is answered 413 once that many were handled, the rest unread.

The gateway unreachable: 503 ``gateway_unavailable`` with Retry-After when nothing was stored;
when it fails after some parts were stored, 202 with the rest named as not stored (PS3.18
Table 10.5.3-1). Every request writes one audit record, 110104 Instances Transferred (action
C), with the study UID and the patient ID where known.

The gateway process serves the same STOW-RS on a port of its own
(``dicom_gateway.stow_door``, ``RADCLOUD_GATEWAY_STOW_PORT``), without Ray Serve's proxy and
this hop; both doors share the multipart reader (:mod:`core.multipart`), the part checks,
answer and audit record (:mod:`core.stow`) and the credential check
(:func:`core.security.admit_request`).

What is stored belongs to the sender's hospital (:mod:`core.tenancy`): the credential must be
assigned exactly one hospital (a ``pacs`` API key created with ``--hospital``), else 403; a
``POST /studies/{study}`` naming a study of another hospital is 404, as for an unknown study
on every other route.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from core.db.models import Role
from core.ingest import FailureReason, StoreAnswer
from core.multipart import BodyPart, MultipartError, MultipartReader
from core.security import Principal
from core.stow import (
    PartBatch,
    audit_stow,
    no_single_hospital,
    store_response,
    stow_boundary,
    too_many_parts,
    unsupported_media_type,
)
from core.tenancy import study_of_another_hospital
from serving.api._dicomweb import (
    DICOM_JSON,
    PREFIX,
    RETRY_AFTER_S,
    StudyUID,
    error_response,
    public_base,
)
from serving.api._stow import store_batch, store_part
from serving.api.security import client_address, context, require_roles

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
Sender = Annotated[Principal, Depends(require_roles(Role.PACS, Role.ADMIN))]

_IN_FLIGHT = 2  # batches being stored at once by one request (Orthanc edge)


class _TooManyParts(Exception):  # noqa: N818 - control flow between two functions of this module
    """The request has more parts than ``RADCLOUD_API_MAX_STOW_PARTS``; reading stopped."""


class _GatewayGone(Exception):  # noqa: N818 - control flow between two functions of this module
    """The gateway could not be reached while storing part ``number``."""

    def __init__(self, number: int, cause: httpx.TransportError) -> None:
        self.number, self.cause = number, cause
        super().__init__(f"part {number}: {cause!r}")


async def _read_parts(
    request: Request,
    reader: MultipartReader,
    study: str | None,
    hospital: str,
    outcomes: list[StoreAnswer],
) -> None:
    """Hand each part to the gateway as soon as it has arrived (one part in memory at a time),
    appending its outcome to ``outcomes``.

    Raises
    ------
    MultipartError
        The body is malformed before any part was read.
    _GatewayGone
        The gateway is unreachable; reading stopped there.
    _TooManyParts
        More parts than the limit; the first were handled, reading stopped there.
    """
    ingest = context(request).ingest
    max_parts = context(request).settings.api_max_stow_parts
    if ingest.batch_url is not None:
        await _read_batches(request, reader, study, hospital, outcomes)
        return

    async def store(parts: list[BodyPart]) -> None:
        for part in parts:
            number = len(outcomes) + 1
            if number > max_parts:
                raise _TooManyParts
            try:
                outcome = await run_in_threadpool(store_part, ingest, part, number, study, hospital)
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
        outcomes.append(StoreAnswer(FailureReason.CANNOT_UNDERSTAND, reason))


async def _read_batches(
    request: Request,
    reader: MultipartReader,
    study: str | None,
    hospital: str,
    outcomes: list[StoreAnswer],
) -> None:
    """:func:`_read_parts` with the Orthanc edge: the parts go to the gateway in batches
    (:class:`~core.stow.PartBatch`), one batch being stored while the next is read (so
    at most two batches are in memory); raises as :func:`_read_parts`."""
    ingest = context(request).ingest
    max_parts = context(request).settings.api_max_stow_parts
    batch = PartBatch()
    in_flight: deque[tuple[int, asyncio.Future[list[StoreAnswer]]]] = deque()
    count = 0

    async def land(keep: int = 0) -> None:
        """Wait for the oldest batches being stored until ``keep`` are left; their answers
        join ``outcomes``, in order."""
        while len(in_flight) > keep:
            first, waiting = in_flight.popleft()
            try:
                outcomes.extend(await waiting)
            except httpx.TransportError as exc:
                for _, later in in_flight:  # let them finish; their answers are not reported
                    later.add_done_callback(lambda done: done.exception())
                in_flight.clear()
                raise _GatewayGone(first, exc) from exc

    async def send() -> None:
        """Hand the batch read so far over, once at most one other is being stored."""
        await land(keep=_IN_FLIGHT - 1)
        if batch.parts:
            parts = batch.take()
            stored = asyncio.ensure_future(
                run_in_threadpool(store_batch, ingest, parts, study, hospital)
            )
            in_flight.append((parts[0][1], stored))

    async def store(parts: list[BodyPart]) -> None:
        nonlocal count
        for part in parts:
            count += 1
            if count > max_parts:
                await send()
                await land()
                raise _TooManyParts
            if not batch.fits(part):
                await send()
            batch.add(part, count)

    try:
        async for chunk in request.stream():
            await store(reader.feed(chunk))
        await store(reader.close())
    except MultipartError as exc:
        await send()
        await land()
        if not outcomes:
            raise
        reason = f"body malformed after part {len(outcomes)}: {exc}"
        outcomes.append(StoreAnswer(FailureReason.CANNOT_UNDERSTAND, reason))
        return
    except ClientDisconnect:
        await land()  # what was stored is audited; the batch not handed over is dropped
        raise
    await send()
    await land()


def _gateway_gone(gone: _GatewayGone, outcomes: list[StoreAnswer]) -> JSONResponse | None:
    """503 when the gateway was unreachable before any instance was stored; else ``None``,
    with the failure of part ``gone.number`` and the rest of the body appended to ``outcomes``.
    """
    logger.error("the DICOM gateway is unreachable for STOW-RS: %r", gone.cause)
    if not any(o.stored for o in outcomes):
        return error_response(
            503,
            "gateway_unavailable",
            "the DICOM gateway is unavailable: nothing was stored; try again later",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    reason = f"the DICOM gateway became unavailable: part {gone.number} and later not stored"
    failure = FailureReason.PROCESSING_FAILURE
    outcomes.append(StoreAnswer(failure, reason, retry=True))
    return None


async def _audit_store(
    request: Request,
    principal: Principal,
    study: str | None,
    outcomes: list[StoreAnswer],
    status: int | None,
) -> None:
    """One 110104 record (action C) for a STOW-RS request; ``status`` ``None``: the client left."""
    await run_in_threadpool(
        audit_stow,
        context(request).audit,
        source="stow",
        principal=principal,
        address=client_address(request),
        study=study,
        outcomes=outcomes,
        status=status,
    )


async def _store_parts(
    request: Request,
    boundary: str,
    study: str | None,
    hospital: str,
    outcomes: list[StoreAnswer],
) -> Response:
    """Read the body's parts into ``outcomes`` and answer for them."""
    limit = context(request).ingest.max_instance_bytes
    try:
        reader = MultipartReader(boundary, limit)
        await _read_parts(request, reader, study, hospital, outcomes)
    except MultipartError as exc:
        return error_response(400, "bad_request", f"malformed multipart/related body: {exc}")
    except _GatewayGone as gone:
        unavailable = _gateway_gone(gone, outcomes)
        if unavailable is not None:
            return unavailable
    except _TooManyParts:
        detail = too_many_parts(outcomes, "RADCLOUD_API_MAX_STOW_PARTS")
        return error_response(413, "too_large", detail)
    if not outcomes:
        return error_response(400, "bad_request", "the request holds no instances")
    status, body = store_response(outcomes, public_base(request), study)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body, status, headers=headers, media_type=DICOM_JSON)


async def _store(request: Request, principal: Principal, study: str | None) -> Response:
    """Run a STOW-RS request and audit it."""
    content_type = request.headers.get("content-type", "")
    boundary = stow_boundary(content_type)
    outcomes: list[StoreAnswer] = []
    response: Response
    hospital = principal.scope.sole_hospital
    if hospital is None:
        response = error_response(403, "forbidden", no_single_hospital(principal))
    elif study is not None and await run_in_threadpool(
        study_of_another_hospital, context(request).db, study, principal.scope
    ):
        response = error_response(404, "not_found", f'study "{study}" does not exist')
    elif boundary is None:
        response = error_response(
            415, "unsupported_media_type", unsupported_media_type(content_type)
        )
    else:
        try:
            response = await _store_parts(request, boundary, study, hospital, outcomes)
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
