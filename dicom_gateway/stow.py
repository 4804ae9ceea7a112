"""STOW-RS ingest in the gateway process (PS3.18 10.5), so that the gateway is the spool's only
writer whichever door an instance came through.

The API process (``serving.api.routes.dicomweb``) authenticates and authorises the user, splits
the ``multipart/related`` body as it arrives, and hands each instance to the gateway over an
internal HTTP endpoint on the gateway's health/metrics listener (``bind_host:
gateway_metrics_port``); the gateway validates it, quarantines a refusal and fsyncs it to the
spool through the same :class:`~dicom_gateway.intake.Intake` as a DIMSE C-STORE, and answers
once the instance is durable. The API turns the answers into the Store Instances Response and
writes the audit record (it knows the user; the gateway does not).

The internal protocol (one instance per request; the connection is kept alive)::

    POST /internal/stow/instances[?study=<Study Instance UID of the request's URL>]
    Authorization: Bearer <secrets.json gateway_ingest_key>
    Content-Type: application/dicom
    Content-Length: <bytes, at most RADCLOUD_GATEWAY_MAX_INSTANCE_MIB>

    200 application/json  {"status": 0 or a Failure Reason, "reason": text or null,
                           "retry": bool, "sop_class_uid", "sop_instance_uid",
                           "study_instance_uid", "series_instance_uid", "patient_id"}
    400 no Content-Length or a malformed study; 401 no or another key; 413 over the limit

Failure Reason (0008,1197) values of an answer (PS3.18 Table I.2-2; the first three are the
C-STORE statuses of the same failures, PS3.4 B.2.3)::

    0xC000  cannot understand         not DICOM, or unparseable              (quarantined)
    0xA900  does not match SOP class  parses, but lacks a UID, transfer syntax or whole
                                      pixel data                             (quarantined)
    0xA700  out of resources          larger than the instance limit, or the spool is full
                                      (``retry``: the spool is full, send it again later)
    0xC409  study mismatch            of another study than ``study`` (implementation
                                      specific, as dcm4chee-arc); neither spooled nor
                                      quarantined
    0x0110  processing failure        the spool could not be written (``retry``)

``retry`` marks failures for want of resources here, worth sending again unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

from dicom_gateway.exceptions import (
    GatewayError,
    InstanceRejectedError,
    InstanceTooLargeError,
    SpoolFullError,
    UnreadableInstanceError,
)
from dicom_gateway.intake import Intake
from dicom_gateway.validation import peek_uids

__all__ = ["STOW_PATH", "FailureReason", "StoreAnswer", "store_instance"]

logger = logging.getLogger(__name__)

STOW_PATH = "/internal/stow/instances"


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values the gateway answers (see the module docstring)."""

    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    STUDY_MISMATCH = 0xC409


@dataclass(frozen=True)
class StoreAnswer:
    """The gateway's answer for one instance: stored when ``status`` is 0."""

    status: int
    reason: str | None = None
    retry: bool = False
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The answer's JSON object (the internal protocol of the module docstring)."""
        return asdict(self)


def _failed(
    data: bytes, failure: FailureReason, reason: str, *, retry: bool = False
) -> StoreAnswer:
    sop_class, sop_instance, study = peek_uids(data)
    return StoreAnswer(int(failure), reason, retry, sop_class, sop_instance, study)


def _refused(data: bytes, exc: GatewayError) -> StoreAnswer:
    """The answer for an error of :meth:`Intake.accept` (the protocol edge's mapping)."""
    if isinstance(exc, UnreadableInstanceError):
        return _failed(data, FailureReason.CANNOT_UNDERSTAND, exc.reason)
    if isinstance(exc, InstanceRejectedError):
        return _failed(data, FailureReason.DOES_NOT_MATCH_SOP_CLASS, exc.reason)
    if isinstance(exc, InstanceTooLargeError):
        return _failed(data, FailureReason.OUT_OF_RESOURCES, str(exc))
    if isinstance(exc, SpoolFullError):
        logger.warning("refused a STOW-RS instance: %s", exc)
        return _failed(data, FailureReason.OUT_OF_RESOURCES, str(exc), retry=True)
    logger.error("STOW-RS instance not spooled: %s", exc)
    return _failed(data, FailureReason.PROCESSING_FAILURE, str(exc), retry=True)


def store_instance(intake: Intake, data: bytes, *, study_instance_uid: str | None) -> StoreAnswer:
    """Spool one instance received by STOW-RS, or say why not (blocking: the spool fsyncs).

    Parameters
    ----------
    intake
        The gateway's intake: validation, quarantine of refusals, durable spool.
    data
        The DICOM Part 10 file, as the part of the STOW-RS request held it.
    study_instance_uid
        The Study Instance UID of the request's URL (``POST /studies/{study}``), if any; an
        instance of another study is refused without being spooled or quarantined.

    Returns
    -------
    StoreAnswer
        Stored (with the instance's UIDs and patient ID), or failed with a reason.
    """
    if study_instance_uid is not None:
        sop_class, sop_instance, study = peek_uids(data)
        if study is not None and study != study_instance_uid:
            reason = f'instance of study "{study}" posted to study "{study_instance_uid}"'
            status = int(FailureReason.STUDY_MISMATCH)
            return StoreAnswer(status, reason, False, sop_class, sop_instance, study)
    try:
        entry = intake.accept(data, sender_ae_title=None, hospital=None, source="stow")
    except GatewayError as exc:
        return _refused(data, exc)
    info = entry.info
    return StoreAnswer(
        0,
        sop_class_uid=info.sop_class_uid,
        sop_instance_uid=info.sop_instance_uid,
        study_instance_uid=info.study_instance_uid,
        series_instance_uid=info.series_instance_uid,
        patient_id=info.patient_id,
    )
