"""STOW-RS ingest in the gateway process (PS3.18 10.5), so that the gateway is the spool's only
writer whichever door an instance came through.

The API process (``serving.api.routes.stow``) authenticates and authorises the user, splits the
``multipart/related`` body as it arrives, and hands each instance to this process over an
internal HTTP endpoint on its health/metrics listener (:mod:`dicom_gateway._http`); here it
takes the path of a DIMSE C-STORE through the one :class:`~dicom_gateway.intake.Intake`
(validation, quarantine of refusals, fsync to the spool), and the answer, a
:class:`core.ingest.StoreAnswer`, is sent once the instance is durable. The protocol and the
Failure Reasons are in :mod:`core.ingest`, the contract both processes import. The API turns the
answers into the Store Instances Response and writes the audit record (it knows the user).

This module is the protocol edge of the gateway's errors for STOW-RS (as :mod:`dicom_gateway.scp`
is for DIMSE): ``UnreadableInstanceError`` → 0xC000, ``NonConformantInstanceError`` → 0xA900
(both quarantined), ``StudyCollisionError`` → 0xC409 (quarantined: the study is another
hospital's or another patient's, :mod:`dicom_gateway.ownership`),
``InstanceTooLargeError`` → 0xA700, ``SpoolFullError`` → 0xA700 with ``retry``, any other
``GatewayError`` → 0x0110 with ``retry``; an instance of another study than the request's URL
names → 0xC409, neither spooled nor quarantined.
"""

from __future__ import annotations

import logging

from core.ingest import FailureReason, StoreAnswer, peek_uids
from dicom_gateway.exceptions import (
    GatewayError,
    InstanceRejectedError,
    InstanceTooLargeError,
    SpoolFullError,
    StudyCollisionError,
    UnreadableInstanceError,
)
from dicom_gateway.intake import Intake

__all__ = ["store_instance"]

logger = logging.getLogger(__name__)


def _refused(data: bytes, exc: GatewayError) -> StoreAnswer:
    """The answer for an error of :meth:`Intake.accept` (the protocol edge's mapping)."""
    if isinstance(exc, StudyCollisionError):
        return StoreAnswer.failed(data, FailureReason.STUDY_MISMATCH, exc.reason)
    if isinstance(exc, UnreadableInstanceError):
        return StoreAnswer.failed(data, FailureReason.CANNOT_UNDERSTAND, exc.reason)
    if isinstance(exc, InstanceRejectedError):
        return StoreAnswer.failed(data, FailureReason.DOES_NOT_MATCH_SOP_CLASS, exc.reason)
    if isinstance(exc, InstanceTooLargeError):
        return StoreAnswer.failed(data, FailureReason.OUT_OF_RESOURCES, str(exc))
    if isinstance(exc, SpoolFullError):
        logger.warning("refused a STOW-RS instance: %s", exc)
        return StoreAnswer.failed(data, FailureReason.OUT_OF_RESOURCES, str(exc), retry=True)
    logger.error("STOW-RS instance not spooled: %s", exc)
    return StoreAnswer.failed(data, FailureReason.PROCESSING_FAILURE, str(exc), retry=True)


def store_instance(
    intake: Intake, data: bytes, *, study_instance_uid: str | None, hospital: str
) -> StoreAnswer:
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
    hospital
        The study's owner: the hospital of the API key that sent it.

    Returns
    -------
    StoreAnswer
        Stored (with the instance's UIDs and patient ID), or failed with a reason.
    """
    if study_instance_uid is not None:
        try:
            intake.check_inflation(data)  # before peek_uids reads the data set
        except GatewayError as exc:
            return _refused(data, exc)
        sop_class, sop_instance, study = peek_uids(data, intake.max_instance_bytes)
        if study is not None and study != study_instance_uid:
            reason = f'instance of study "{study}" posted to study "{study_instance_uid}"'
            mismatch = int(FailureReason.STUDY_MISMATCH)
            return StoreAnswer(mismatch, reason, False, sop_class, sop_instance, study)
    try:
        entry = intake.accept(data, sender_ae_title=None, hospital=hospital, source="stow")
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
