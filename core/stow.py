"""STOW-RS as both of radcloud's doors answer it (PS3.18 10.5): the API's route
(``serving.api.routes.stow``, behind Ray Serve's proxy) and the gateway process's own door
(``dicom_gateway.stow_door``). Both split the ``multipart/related`` body with
:mod:`core.multipart`, check each part here before storing it (:func:`precheck`), gather parts
in batches (:class:`PartBatch`), answer with :func:`store_response` and write one 110104
Instances Transferred record per request with :func:`audit_stow`; what they store with and how
is theirs (:mod:`core.ingest` is the API's hand-over to the gateway).

Two failures are found here, in the part itself, before anything is stored: a part longer than
the instance limit (0xA700 out of resources) and a part not ``application/dicom`` (0xC000
cannot understand). The reason in words is in Error Comment (0000,0902) of each failed item
(LO: 64 characters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.ingest import BATCH_MAX_BYTES, BATCH_MAX_PARTS, FailureReason, StoreAnswer
from core.multipart import BodyPart, MultipartError, parse_media_type
from core.security.principal import Principal

__all__ = [
    "DICOM",
    "PartBatch",
    "audit_stow",
    "no_single_hospital",
    "precheck",
    "store_checked",
    "store_response",
    "stow_boundary",
    "too_many_parts",
    "unsupported_media_type",
]

logger = logging.getLogger(__name__)

DICOM = "application/dicom"
_ERROR_COMMENT_MAX = 64
_AUDITED_MAX = 20  # studies and failures named in an audit record


def stow_boundary(content_type: str) -> str | None:
    """The ``boundary`` of a STOW-RS request's media type (``""`` when it names none), or
    ``None`` when the media type is not ``multipart/related; type="application/dicom"``
    (PS3.18 10.5.1.1; HTTP 415)."""
    try:
        media_type, params = parse_media_type(content_type)
    except MultipartError:
        return None
    if media_type != "multipart/related" or params.get("type", DICOM).lower() != DICOM:
        return None
    return params.get("boundary", "")


def unsupported_media_type(content_type: str) -> str:
    """The detail of a 415 answer."""
    return (
        f'Content-Type "{content_type}" is not supported; '
        'expected multipart/related; type="application/dicom"'
    )


def no_single_hospital(principal: Principal) -> str:
    """The detail of the 403 answer to a credential not assigned exactly one hospital."""
    return (
        f'"{principal.name}" stores for no single hospital ({principal.scope.describe()}): '
        "STOW-RS needs a credential assigned exactly one hospital, the studies' owner"
    )


def too_many_parts(outcomes: Sequence[StoreAnswer], setting: str) -> str:
    """The detail of the 413 answer once ``outcomes`` were handled and reading stopped."""
    stored = sum(1 for o in outcomes if o.stored)
    return (
        f"more than {len(outcomes)} parts in one request ({setting}): "
        f"the first {len(outcomes)} were handled ({stored} stored), the rest was not read; "
        "send it in further requests (storing an instance again is harmless)"
    )


def precheck(part: BodyPart, number: int, limit: int) -> StoreAnswer | None:
    """A failure found in the part itself before it is stored, or ``None``.

    Parameters
    ----------
    part
        One part of the request body (truncated by the reader beyond ``limit``).
    number
        Its position in the request, from 1 (named in reasons).
    limit
        The instance limit in bytes (``RADCLOUD_GATEWAY_MAX_INSTANCE_MIB``).
    """
    if part.truncated:
        reason = (
            f"instance of {part.size} bytes exceeds the limit of {limit} bytes "
            "(RADCLOUD_GATEWAY_MAX_INSTANCE_MIB)"
        )
        return StoreAnswer.failed(part.data, FailureReason.OUT_OF_RESOURCES, reason)
    try:
        content_type = part.content_type
    except MultipartError as exc:
        return StoreAnswer.failed(
            part.data, FailureReason.CANNOT_UNDERSTAND, f"part {number}: {exc}"
        )
    if content_type not in (None, DICOM):
        reason = f'part {number} is "{content_type}", expected "{DICOM}"'
        return StoreAnswer.failed(part.data, FailureReason.CANNOT_UNDERSTAND, reason)
    return None


def store_checked(
    store: Callable[[list[bytes]], list[StoreAnswer]],
    parts: Sequence[tuple[BodyPart, int]],
    limit: int,
) -> list[StoreAnswer]:
    """Store the ``(part, number)`` that pass :func:`precheck` with one call of ``store``
    (an answer per instance, in order); an answer per part, in order.

    Raises
    ------
    Exception
        Whatever ``store`` raises (nothing is then known to be stored).
    """
    answers = [precheck(part, number, limit) for part, number in parts]
    sent = [part.data for (part, _), early in zip(parts, answers, strict=True) if early is None]
    stored = iter(store(sent) if sent else [])
    return [early if early is not None else next(stored) for early in answers]


class PartBatch:
    """Parts read but not yet stored: a door stores them in batches of at most
    ``BATCH_MAX_PARTS`` parts and ``BATCH_MAX_BYTES`` bytes (:mod:`core.ingest`)."""

    def __init__(self) -> None:
        self.parts: list[tuple[BodyPart, int]] = []
        self._bytes = 0

    def fits(self, part: BodyPart) -> bool:
        """Whether ``part`` may join this batch (an empty batch takes any part)."""
        return not self.parts or (
            len(self.parts) < BATCH_MAX_PARTS and self._bytes + len(part.data) <= BATCH_MAX_BYTES
        )

    def add(self, part: BodyPart, number: int) -> None:
        """Add ``part``, the ``number``-th of its request."""
        self.parts.append((part, number))
        self._bytes += len(part.data)

    def take(self) -> list[tuple[BodyPart, int]]:
        """The parts, leaving the batch empty."""
        parts, self.parts, self._bytes = self.parts, [], 0
        return parts


def _element(vr: str, *values: Any) -> dict[str, Any]:
    """A DICOM JSON attribute (PS3.18 F.2); no ``Value`` when there is none."""
    present = [value for value in values if value is not None]
    return {"vr": vr, "Value": present} if present else {"vr": vr}


def _error_comment(reason: str) -> str:
    text = " ".join(reason.split())
    return text if len(text) <= _ERROR_COMMENT_MAX else text[: _ERROR_COMMENT_MAX - 3] + "..."


def _failed_item(outcome: StoreAnswer) -> dict[str, Any]:
    return {
        "00081150": _element("UI", outcome.sop_class_uid),
        "00081155": _element("UI", outcome.sop_instance_uid),
        "00081197": _element("US", outcome.status),
        "00000902": _element("LO", _error_comment(outcome.reason or "")),
    }


def _stored_item(outcome: StoreAnswer, retrieve_base: str) -> dict[str, Any]:
    url = (
        f"{retrieve_base}/studies/{outcome.study_instance_uid}"
        f"/series/{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
    )
    return {
        "00081150": _element("UI", outcome.sop_class_uid),
        "00081155": _element("UI", outcome.sop_instance_uid),
        "00081190": _element("UR", url),
    }


def store_response(
    outcomes: Sequence[StoreAnswer], retrieve_base: str, study: str | None
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Store Instances Response Module as DICOM JSON (PS3.18 Annex I).

    Parameters
    ----------
    outcomes
        One per part, in request order (at least one).
    retrieve_base
        Public base URL of WADO-RS (the API's ``.../dicom-web``), for Retrieve URL (0008,1190).
    study
        The Study Instance UID of the request's URL, if any.

    Returns
    -------
    tuple[int, dict[str, Any]]
        200 all stored; 202 some stored; 503 none stored, all for want of resources here
        (retry later); 409 none stored otherwise (PS3.18 Table 10.5.3-1).
    """
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    studies = {o.study_instance_uid for o in stored}
    retrieve_study = study or (next(iter(studies)) if len(studies) == 1 else None)
    study_url = f"{retrieve_base}/studies/{retrieve_study}" if retrieve_study and stored else None
    body: dict[str, Any] = {"00081190": _element("UR", study_url)}
    if failed:
        body["00081198"] = _element("SQ", *(_failed_item(o) for o in failed))
    if stored:
        body["00081199"] = _element("SQ", *(_stored_item(o, retrieve_base) for o in stored))
    if not failed:
        return 200, body
    if stored:
        return 202, body
    return (503 if all(o.retry for o in failed) else 409), body


def _unique(values: set[str | None]) -> str | None:
    known = {value for value in values if value}
    return known.pop() if len(known) == 1 else None


def _outcome(status: int | None) -> AuditOutcome:
    """A request's audit outcome: success below 400 (202: some failed, minor), minor failure
    for 4xx or a client that left (``None``), serious for 5xx."""
    if status is None or status == 202 or 400 <= status < 500:
        return AuditOutcome.MINOR_FAILURE
    return AuditOutcome.SUCCESS if status < 400 else AuditOutcome.SERIOUS_FAILURE


def audit_stow(
    audit: AuditTrail,
    *,
    source: str,
    principal: Principal,
    address: str | None,
    study: str | None,
    outcomes: Sequence[StoreAnswer],
    status: int | None,
) -> int:
    """Write the one 110104 Instances Transferred record (action C) of a STOW-RS request.

    Parameters
    ----------
    audit
        The audit trail.
    source
        The door: ``"stow"`` (the API's route) or ``"stow-gateway"`` (the gateway's door).
    principal
        The sender; its sole hospital owns what was stored.
    address
        The client's network address.
    study
        The Study Instance UID of the request's URL, if any.
    outcomes
        What became of each part handled, in order.
    status
        The HTTP status answered; ``None``: the client left before its answer.

    Returns
    -------
    int
        The record's sequence number.
    """
    failed = [o for o in outcomes if not o.stored]
    studies = {o.study_instance_uid for o in outcomes}
    detail = {
        "source": source,
        "hospital": principal.scope.sole_hospital,  # the owner of what was stored
        "status": status,
        "stored": len(outcomes) - len(failed),
        "failed": len(failed),
        "studies": sorted(s for s in studies if s)[:_AUDITED_MAX],
        "failures": [
            {
                "sop_instance_uid": o.sop_instance_uid,
                "reason": f"{o.status:04X}",
                "detail": o.reason,
            }
            for o in failed[:_AUDITED_MAX]
        ],
    }
    logger.info(
        "STOW-RS (%s) by %s: %d stored, %d failed (HTTP %s)",
        source,
        principal.name,
        detail["stored"],
        len(failed),
        status or "none: client disconnected",
    )
    resource = study or _unique(studies)
    return audit.record(
        AuditEventCode.INSTANCES_TRANSFERRED,
        action=AuditAction.CREATE,
        outcome=_outcome(status),
        user_name=principal.name,
        role=principal.role,
        source_address=address,
        resource_type="study" if resource else None,
        resource_id=resource,
        patient_id=_unique({o.patient_id for o in outcomes}),
        detail=detail,
    )
