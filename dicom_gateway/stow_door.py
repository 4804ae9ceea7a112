"""The gateway's own STOW-RS door (PS3.18 10.5): ``POST /dicom-web/studies`` and
``POST /dicom-web/studies/{study}`` served by the gateway process on
``bind_host:gateway_stow_port`` (:mod:`dicom_gateway._door_http`), the same store as the API's
route (``serving.api.routes.stow``) without Ray Serve's proxy and the API's hop to the gateway.

A request is handled as on the API, with the code both doors share in the core:

- the caller's ``Authorization: Bearer`` (a JWT or an API key) or ``X-API-Key``, checked and
  audited by :func:`core.security.admit_request` (401 / 110114; a role other than ``pacs`` or
  ``admin``: 403 / 110113); the credential must be assigned exactly one hospital, the owner of
  what it stores (403); ``POST /studies/{study}`` for a study of another hospital is 404;
- the body, ``multipart/related; type="application/dicom"`` (else 415), split as it arrives
  (:class:`core.multipart.MultipartReader`; malformed before any part: 400), each part checked
  (:func:`core.stow.precheck`: the instance limit, its media type), gathered in batches
  (:class:`core.stow.PartBatch`) and stored, ``IN_FLIGHT`` (two) at once, while the next
  batch is read (at most three in memory): with the Orthanc edge by
  :class:`~dicom_gateway.stow.ArchiveStow` (Orthanc's own STOW-RS, answered once Orthanc has
  stored them), with the pynetdicom edge through the
  :class:`~dicom_gateway.intake.Intake` (fsync-ed to the spool): the calls of the internal
  endpoint the API uses, without the HTTP hop;
- the limits of the API's route: ``RADCLOUD_API_MAX_STOW_MIB`` per request (a declared length
  above it is 413 before anything is read; a chunked body is counted), at most
  ``RADCLOUD_API_MAX_STOW_PARTS`` parts (413 once that many were handled, the rest unread);
- the answer, :func:`core.stow.store_response` (200, 202 with failures, 409 or 503 none
  stored), its Retrieve URLs on the API's public base URL, where WADO-RS is;
- one 110104 Instances Transferred record per request (:func:`core.stow.audit_stow`,
  ``"source": "stow-gateway"``, the client's address), also when the client left mid-body:
  what was stored stays stored and is audited, a batch not yet handed over is dropped.

Errors are answered in the API's format, ``{"error": ..., "detail": ...}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from core.audit import AuditTrail
from core.db import Database
from core.db.models import Role
from core.exceptions import AuthenticationError, PermissionDeniedError
from core.ingest import FailureReason, StoreAnswer
from core.multipart import BodyPart, MultipartError, MultipartReader
from core.security import Accounts, Principal, TokenService, admit_request
from core.stow import (
    PartBatch,
    audit_stow,
    no_single_hospital,
    store_checked,
    store_response,
    stow_boundary,
    too_many_parts,
    unsupported_media_type,
)
from core.tenancy import study_of_another_hospital
from core.uids import is_safe_uid
from dicom_gateway.exceptions import BodyTooLargeError, ClientGoneError
from dicom_gateway.intake import Intake
from dicom_gateway.stow import ArchiveStow, store_instance

__all__ = [
    "IN_FLIGHT",
    "PREFIX",
    "DoorAnswer",
    "DoorRequest",
    "StoreBatch",
    "StowDoor",
    "batch_store",
]

logger = logging.getLogger(__name__)

PREFIX = "/dicom-web"
SOURCE = "stow-gateway"  # the door, in audit records
RETRY_AFTER_S = 30
IN_FLIGHT = 2
"""Batches one request has being stored at once (the API's STOW-RS route keeps as many)."""
_DICOM_JSON = "application/dicom+json"
_JSON = "application/json"
_PATH = re.compile(rf"^{PREFIX}/studies(?:/([^/]+))?/?$")
_ROLES = (Role.PACS, Role.ADMIN)

StoreBatch = Callable[[list[bytes], str | None, str], list[StoreAnswer]]
"""Stores a batch of instances (the request's study, if any, and the owning hospital); an
answer per instance, in order, once each is durable or refused."""


class _TooManyParts(Exception):  # noqa: N818 - control flow between two methods of this module
    """More parts than ``RADCLOUD_API_MAX_STOW_PARTS``; reading stopped."""


@dataclass
class DoorRequest:
    """One HTTP request as the door needs it.

    Attributes
    ----------
    method, path
        The request line's method and path (with any query).
    headers
        Case-insensitive ``get`` of header fields (an ``http.client.HTTPMessage``).
    address
        The client's network address.
    body
        The body's bytes as they arrive; raises :class:`ClientGoneError` or
        :class:`BodyTooLargeError` (or :class:`~core.multipart.MultipartError` for broken
        chunked framing).
    declared_length
        The ``Content-Length``, if one was sent.
    """

    method: str
    path: str
    headers: Any
    address: str | None
    body: Iterator[bytes]
    declared_length: int | None = None


@dataclass
class DoorAnswer:
    """The HTTP answer: status, JSON body, extra header fields, media type."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = _JSON


def _error(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> DoorAnswer:
    return DoorAnswer(status, {"error": error, "detail": detail}, headers or {})


class StowDoor:
    """STOW-RS requests of the gateway's door, from authentication to the audit record
    (thread-safe: one request per calling thread).

    Parameters
    ----------
    accounts, tokens, audit, db
        Who the callers are, where refusals and transfers are recorded, who owns which study.
    store
        Stores a batch (the gateway's edge decides how: :func:`batch_store`).
    max_instance_bytes
        The instance limit (``RADCLOUD_GATEWAY_MAX_INSTANCE_MIB``).
    max_parts, max_body_bytes
        ``RADCLOUD_API_MAX_STOW_PARTS`` and ``RADCLOUD_API_MAX_STOW_MIB`` in bytes.
    retrieve_base
        The API's public DICOMweb base URL (``.../dicom-web``), for Retrieve URLs.
    workers
        Threads storing batches (``IN_FLIGHT`` per request at most are busy at a time).
    """

    def __init__(
        self,
        *,
        accounts: Accounts,
        tokens: TokenService,
        audit: AuditTrail,
        db: Database,
        store: StoreBatch,
        max_instance_bytes: int,
        max_parts: int,
        max_body_bytes: int,
        retrieve_base: str,
        workers: int,
    ) -> None:
        self._accounts, self._tokens, self._audit, self._db = accounts, tokens, audit, db
        self._store = store
        self.max_instance_bytes = max_instance_bytes
        self.max_parts = max_parts
        self.max_body_bytes = max_body_bytes
        self.retrieve_base = retrieve_base.rstrip("/")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="stow-door-store")

    def close(self) -> None:
        """Let batches being stored finish, then release the threads."""
        self._pool.shutdown(wait=True)

    def handle(self, request: DoorRequest) -> DoorAnswer | None:
        """Answer one request; ``None`` when the client left before its answer (then audited
        with status ``None``)."""
        path = request.path.partition("?")[0]
        match = _PATH.match(path)
        early = self._unroutable(request, match)
        if early is not None or match is None:
            return early or _error(404, "not_found", f'no resource "{path[:200]}"')
        try:
            principal = admit_request(
                self._accounts,
                self._tokens,
                self._audit,
                authorization=request.headers.get("Authorization"),
                api_key=request.headers.get("X-API-Key"),
                roles=_ROLES,
                route=f"POST {path}",
                address=request.address,
            )
        except AuthenticationError as exc:
            headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            return _error(401, "unauthorized", str(exc), headers)
        except PermissionDeniedError as exc:
            return _error(403, "forbidden", str(exc))
        study = match.group(1)
        if study is not None and not is_safe_uid(study):
            return _error(400, "bad_request", "invalid path parameter: study")
        outcomes: list[StoreAnswer] = []
        answer: DoorAnswer | None = None
        try:
            answer = self._refusal(request, principal, study)
            if answer is None:
                answer = self._store_parts(request, principal, study, outcomes)
        except ClientGoneError:
            answer = None
        finally:  # the client gone (ClientGoneError) included: audited with status None
            audit_stow(
                self._audit,
                source=SOURCE,
                principal=principal,
                address=request.address,
                study=study,
                outcomes=outcomes,
                status=answer.status if answer is not None else None,
            )
        return answer

    def _unroutable(self, request: DoorRequest, match: re.Match[str] | None) -> DoorAnswer | None:
        """The answer before authentication (as the API's router and body budget answer), or
        ``None``."""
        if match is None:
            return _error(404, "not_found", f'no resource "{request.path[:200]}"')
        if request.method != "POST":
            detail = "the STOW-RS door takes POST only"
            return _error(405, "method_not_allowed", detail, {"Allow": "POST"})
        if request.declared_length is not None and request.declared_length > self.max_body_bytes:
            return _error(
                413,
                "too_large",
                f"request body of {request.declared_length} bytes exceeds the limit of "
                f"{self.max_body_bytes} bytes (RADCLOUD_API_MAX_STOW_MIB)",
            )
        return None

    def _refusal(
        self, request: DoorRequest, principal: Principal, study: str | None
    ) -> DoorAnswer | None:
        """The refusal of an admitted request before its body is read, or ``None``."""
        if principal.scope.sole_hospital is None:
            return _error(403, "forbidden", no_single_hospital(principal))
        if study is not None and study_of_another_hospital(self._db, study, principal.scope):
            return _error(404, "not_found", f'study "{study}" does not exist')
        content_type = request.headers.get("Content-Type") or ""
        if stow_boundary(content_type) is None:
            return _error(415, "unsupported_media_type", unsupported_media_type(content_type))
        return None

    def _store_parts(
        self,
        request: DoorRequest,
        principal: Principal,
        study: str | None,
        outcomes: list[StoreAnswer],
    ) -> DoorAnswer:
        """Read and store the body's parts (``outcomes``: what became of each) and answer.

        Raises
        ------
        ClientGoneError
            The client left mid-body; what was stored is in ``outcomes``.
        """
        hospital = principal.scope.sole_hospital or ""
        boundary = stow_boundary(request.headers.get("Content-Type") or "") or ""
        try:
            reader = MultipartReader(boundary, self.max_instance_bytes)
            self._read(request.body, reader, study, hospital, outcomes)
        except MultipartError as exc:
            return _error(400, "bad_request", f"malformed multipart/related body: {exc}")
        except _TooManyParts:
            return _error(413, "too_large", too_many_parts(outcomes, "RADCLOUD_API_MAX_STOW_PARTS"))
        except BodyTooLargeError as exc:
            stored = sum(1 for o in outcomes if o.stored)
            return _error(
                413,
                "too_large",
                f"request body over {exc.limit_bytes} bytes (RADCLOUD_API_MAX_STOW_MIB): "
                f"{len(outcomes)} parts were handled ({stored} stored), the rest was not read",
            )
        if not outcomes:
            return _error(400, "bad_request", "the request holds no instances")
        status, body = store_response(outcomes, self.retrieve_base, study)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
        return DoorAnswer(status, body, headers, _DICOM_JSON)

    def _stored(
        self, parts: list[tuple[BodyPart, int]], study: str | None, hospital: str
    ) -> list[StoreAnswer]:
        """Store a batch; an unexpected failure fails the batch (retry), never the door."""
        try:
            return store_checked(
                lambda sent: self._store(sent, study, hospital), parts, self.max_instance_bytes
            )
        except Exception:  # like a DIMSE handler: answer every request, stay up
            logger.exception("a STOW-RS batch of %d parts failed unexpectedly", len(parts))
            failure, reason = FailureReason.PROCESSING_FAILURE, "internal error: not stored"
            return [StoreAnswer.failed(part.data, failure, reason, retry=True) for part, _ in parts]

    def _read(
        self,
        body: Iterator[bytes],
        reader: MultipartReader,
        study: str | None,
        hospital: str,
        outcomes: list[StoreAnswer],
    ) -> None:
        """Read the parts as they arrive and store them in batches, ``IN_FLIGHT`` batches being
        stored while the next is read (as the API's route does: with one client, Orthanc
        stores two batches on two threads; at most three batches in memory); the answers join
        ``outcomes``, in order.

        Raises
        ------
        MultipartError
            The body is malformed before any part was stored (after: a failure appended).
        _TooManyParts, BodyTooLargeError, ClientGoneError
            Reading stopped; what was handed over is stored and in ``outcomes``.
        """
        batch = PartBatch()
        storing: list[Future[list[StoreAnswer]]] = []
        count = 0

        def land() -> None:
            while storing:
                outcomes.extend(storing.pop(0).result())

        def send() -> None:
            while len(storing) >= IN_FLIGHT:
                outcomes.extend(storing.pop(0).result())
            if batch.parts:
                storing.append(self._pool.submit(self._stored, batch.take(), study, hospital))

        def take(parts: list[BodyPart]) -> None:
            nonlocal count
            for part in parts:
                count += 1
                if count > self.max_parts:
                    send()
                    land()
                    raise _TooManyParts
                if not batch.fits(part):
                    send()
                batch.add(part, count)

        try:
            for chunk in body:
                take(reader.feed(chunk))
            take(reader.close())
        except MultipartError as exc:
            send()
            land()
            if not outcomes:
                raise
            reason = f"body malformed after part {len(outcomes)}: {exc}"
            outcomes.append(StoreAnswer(FailureReason.CANNOT_UNDERSTAND, reason))
            return
        except (ClientGoneError, BodyTooLargeError):
            land()  # what was stored is audited; the batch not handed over is dropped
            raise
        send()
        land()


def batch_store(intake: Intake, archive_stow: ArchiveStow | None) -> StoreBatch:
    """How the door stores a batch: with the Orthanc edge by ``archive_stow`` (Orthanc's own
    STOW-RS, no spool), else instance by instance through ``intake`` into the spool
    (:func:`dicom_gateway.stow.store_instance`), as the internal endpoint does."""
    if archive_stow is not None:
        orthanc = archive_stow

        def to_orthanc(parts: list[bytes], study: str | None, hospital: str) -> list[StoreAnswer]:
            return orthanc.store_batch(parts, study_instance_uid=study, hospital=hospital)

        return to_orthanc

    def to_spool(parts: list[bytes], study: str | None, hospital: str) -> list[StoreAnswer]:
        return [
            store_instance(intake, data, study_instance_uid=study, hospital=hospital)
            for data in parts
        ]

    return to_spool
