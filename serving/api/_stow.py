"""STOW-RS mechanics behind the ``/dicom-web`` routes (PS3.18 10.5): each part of a request goes
through the gateway's :class:`~dicom_gateway.intake.Intake`, and the outcomes become the Store
Instances Response Module (PS3.18 Annex I) and the HTTP status (PS3.18 Table 10.5.3-1).

Failure Reason (0008,1197) values (PS3.18 Table I.2-2)::

    0xC000  cannot understand         not DICOM, unparseable, or a part not application/dicom
    0xA900  does not match SOP class  parses, but lacks a UID, transfer syntax or whole pixel data
    0xA700  out of resources          larger than the instance limit, or the spool is full
    0xC409  study mismatch            posted to /studies/{study} but of another study
                                      (implementation specific; dcm4chee-arc uses the same code)
    0x0110  processing failure        the spool could not be written

The reason in words is in Error Comment (0000,0902) of each failed item (LO: 64 characters).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import pydicom

from dicom_gateway.exceptions import (
    GatewayError,
    InstanceRejectedError,
    InstanceTooLargeError,
    SpoolFullError,
    UnreadableInstanceError,
)
from dicom_gateway.intake import Intake
from serving.api._multipart import BodyPart, MultipartError

__all__ = ["FailureReason", "StoreOutcome", "store_part", "store_response"]

logger = logging.getLogger(__name__)

_VALID_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_ERROR_COMMENT_MAX = 64
_PEEKED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values used by radcloud (see the module docstring)."""

    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    STUDY_MISMATCH = 0xC409


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one part of a STOW-RS request: stored when ``failure`` is ``None``.

    ``server_side`` marks failures for want of resources here (spool full, disk error), worth
    retrying later unchanged.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    failure: FailureReason | None = None
    reason: str | None = None
    server_side: bool = False


def _peek_uids(data: bytes) -> tuple[str | None, str | None, str | None]:
    """SOP Class, SOP Instance and Study Instance UIDs of possibly broken data, where readable
    and syntactically valid (only valid UIDs are written back in a response).
    """
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(_PEEKED)
        )
        values = [ds.get(keyword) for keyword in _PEEKED]
    except Exception:  # noqa: BLE001 - best-effort labels for data that may be anything
        return None, None, None
    uids = [str(value).strip() if value else "" for value in values]
    valid = [uid if len(uid) <= 64 and _VALID_UID.match(uid) else None for uid in uids]
    return valid[0], valid[1], valid[2]


def _failed(
    data: bytes, failure: FailureReason, reason: str, *, server_side: bool = False
) -> StoreOutcome:
    sop_class, sop_instance, study = _peek_uids(data)
    return StoreOutcome(sop_class, sop_instance, study, None, None, failure, reason, server_side)


def _refused(data: bytes, exc: GatewayError) -> StoreOutcome:
    """The outcome for an error of :meth:`Intake.accept`."""
    if isinstance(exc, UnreadableInstanceError):
        return _failed(data, FailureReason.CANNOT_UNDERSTAND, exc.reason)
    if isinstance(exc, InstanceRejectedError):
        return _failed(data, FailureReason.DOES_NOT_MATCH_SOP_CLASS, exc.reason)
    if isinstance(exc, InstanceTooLargeError):
        return _failed(data, FailureReason.OUT_OF_RESOURCES, str(exc))
    if isinstance(exc, SpoolFullError):
        return _failed(data, FailureReason.OUT_OF_RESOURCES, str(exc), server_side=True)
    logger.error("STOW-RS instance not spooled: %s", exc)
    return _failed(data, FailureReason.PROCESSING_FAILURE, str(exc), server_side=True)


def _precheck(part: BodyPart, number: int, study: str | None, limit: int) -> StoreOutcome | None:
    """A failure found before the intake sees the part, or ``None``."""
    if part.truncated:
        reason = str(InstanceTooLargeError(part.size, limit))
        return _failed(part.data, FailureReason.OUT_OF_RESOURCES, reason)
    try:
        content_type = part.content_type
    except MultipartError as exc:
        return _failed(part.data, FailureReason.CANNOT_UNDERSTAND, f"part {number}: {exc}")
    if content_type not in (None, "application/dicom"):
        reason = f'part {number} is "{content_type}", expected "application/dicom"'
        return _failed(part.data, FailureReason.CANNOT_UNDERSTAND, reason)
    if study is not None:
        sop_class, sop_instance, part_study = _peek_uids(part.data)
        if part_study is not None and part_study != study:
            reason = f'instance of study "{part_study}" posted to study "{study}"'
            return StoreOutcome(
                sop_class,
                sop_instance,
                part_study,
                failure=FailureReason.STUDY_MISMATCH,
                reason=reason,
            )
    return None


def store_part(intake: Intake, part: BodyPart, number: int, study: str | None) -> StoreOutcome:
    """Spool one part through ``intake`` (blocking: the spool fsyncs), or say why not.

    Parameters
    ----------
    intake
        The gateway's intake: validation, quarantine of refusals, durable spool.
    part
        One part of the request body.
    number
        Its position in the request, from 1 (named in reasons).
    study
        The Study Instance UID of the request's URL (``POST /studies/{study}``), if any; an
        instance of another study is refused without being spooled or quarantined.

    Returns
    -------
    StoreOutcome
        Stored (with the instance's UIDs and patient ID), or failed with a reason.
    """
    early = _precheck(part, number, study, intake.max_instance_bytes)
    if early is not None:
        return early
    try:
        entry = intake.accept(part.data, sender_ae_title=None, hospital=None, source="stow")
    except GatewayError as exc:
        return _refused(part.data, exc)
    info = entry.info
    return StoreOutcome(
        info.sop_class_uid,
        info.sop_instance_uid,
        info.study_instance_uid,
        info.series_instance_uid,
        info.patient_id,
    )


def _element(vr: str, *values: Any) -> dict[str, Any]:
    """A DICOM JSON attribute (PS3.18 F.2); no ``Value`` when there is none."""
    present = [value for value in values if value is not None]
    return {"vr": vr, "Value": present} if present else {"vr": vr}


def _error_comment(reason: str) -> str:
    text = " ".join(reason.split())
    return text if len(text) <= _ERROR_COMMENT_MAX else text[: _ERROR_COMMENT_MAX - 3] + "..."


def _failed_item(outcome: StoreOutcome) -> dict[str, Any]:
    return {
        "00081150": _element("UI", outcome.sop_class_uid),
        "00081155": _element("UI", outcome.sop_instance_uid),
        "00081197": _element("US", int(outcome.failure or FailureReason.PROCESSING_FAILURE)),
        "00000902": _element("LO", _error_comment(outcome.reason or "")),
    }


def _stored_item(outcome: StoreOutcome, retrieve_base: str) -> dict[str, Any]:
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
    outcomes: list[StoreOutcome], retrieve_base: str, study: str | None
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Store Instances Response Module as DICOM JSON.

    Parameters
    ----------
    outcomes
        One per part, in request order (at least one).
    retrieve_base
        Public base URL of WADO-RS, for Retrieve URL (0008,1190).
    study
        The Study Instance UID of the request's URL, if any.

    Returns
    -------
    tuple[int, dict[str, Any]]
        200 all stored; 202 some stored; 503 none stored, all for want of resources here
        (retry later); 409 none stored otherwise (PS3.18 Table 10.5.3-1).
    """
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
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
    return (503 if all(o.server_side for o in failed) else 409), body
