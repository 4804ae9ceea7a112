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

With the Orthanc edge (``RADCLOUD_GATEWAY_EDGE=orthanc``) there is no spool for STOW-RS either:
the API hands the parts over in batches, and :class:`ArchiveStow` checks each one (the intake's
checks, the header only: Orthanc parses every value as it stores), admits it to its study, and
stores the accepted ones with one STOW-RS request to Orthanc, answering once Orthanc has stored
them.

This module is the protocol edge of the gateway's errors for STOW-RS (as :mod:`dicom_gateway.scp`
is for DIMSE): ``UnreadableInstanceError`` → 0xC000, ``NonConformantInstanceError`` → 0xA900
(both quarantined), ``StudyCollisionError`` → 0xC409 (quarantined: the study is another
hospital's or another patient's, :mod:`dicom_gateway.ownership`),
``InstanceTooLargeError`` → 0xA700, ``SpoolFullError`` → 0xA700 with ``retry``, any other
``GatewayError`` → 0x0110 with ``retry``; an instance of another study than the request's URL
names → 0xC409, neither spooled nor quarantined.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

from core.archive import (
    ArchiveError,
    ArchiveId,
    ArchiveUnavailableError,
    DicomwebArchive,
    StoredInstance,
)
from core.archive.orthanc_archive import orthanc_instance_id, orthanc_series_id, orthanc_study_id
from core.ingest import FailureReason, StoreAnswer, peek_uids
from dicom_gateway import metrics
from dicom_gateway.exceptions import (
    GatewayError,
    InstanceRejectedError,
    InstanceTooLargeError,
    SpoolFullError,
    StudyCollisionError,
    UnreadableInstanceError,
)
from dicom_gateway.intake import Intake, quarantine_refused
from dicom_gateway.validation import InstanceInfo, zero_preamble

__all__ = ["ArchiveStow", "orthanc_keys", "store_instance"]

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


def _study_mismatch(intake: Intake, data: bytes, study_instance_uid: str) -> StoreAnswer | None:
    """The refusal of an instance of another study than the request's URL names, or ``None``."""
    try:
        intake.check_inflation(data)  # before peek_uids reads the data set
    except GatewayError as exc:
        return _refused(data, exc)
    sop_class, sop_instance, study = peek_uids(data, intake.max_instance_bytes)
    if study is not None and study != study_instance_uid:
        reason = f'instance of study "{study}" posted to study "{study_instance_uid}"'
        mismatch = int(FailureReason.STUDY_MISMATCH)
        return StoreAnswer(mismatch, reason, False, sop_class, sop_instance, study)
    return None


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
        mismatch = _study_mismatch(intake, data, study_instance_uid)
        if mismatch is not None:
            return mismatch
    try:
        entry = intake.accept(data, sender_ae_title=None, hospital=hospital, source="stow")
    except GatewayError as exc:
        return _refused(data, exc)
    return _stored(entry.info)


def _stored(info: InstanceInfo) -> StoreAnswer:
    return StoreAnswer(
        0,
        sop_class_uid=info.sop_class_uid,
        sop_instance_uid=info.sop_instance_uid,
        study_instance_uid=info.study_instance_uid,
        series_instance_uid=info.series_instance_uid,
        patient_id=info.patient_id,
    )


def _unanswered(outcome: StoredInstance | ArchiveError | None) -> bool:
    """Whether the archive gave no answer for an instance (it may go to another node)."""
    return isinstance(outcome, ArchiveUnavailableError) and outcome.status_code is None


class ArchiveStow:
    """STOW-RS with the Orthanc edge (``RADCLOUD_GATEWAY_EDGE=orthanc``): a batch of parts
    checked here and stored in Orthanc by its own STOW-RS, no spool.

    Each part passes the intake's checks without the spool (:meth:`Intake.admit`: size and
    inflation limits, the header's checks, the study's owner and patient, refusals
    quarantined), then every accepted part, its preamble zeroed (Orthanc keeps the one it is
    given on STOW-RS), goes to Orthanc in one STOW-RS request (:class:`DicomwebArchive`, the
    archive seam). An instance is answered stored only when Orthanc's answer references it:
    Orthanc answers after writing the file (``SyncStorageArea``) and committing its index.
    An instance Orthanc refuses (it parses every value, this side only the header) is
    quarantined and answered 0xC000; Orthanc unreachable or failing, 0x0110 with ``retry``
    (nothing is kept: the sender sends again, as a DICOM sender does when the Orthanc edge
    refuses an association).

    With several archive nodes (``orthanc_nodes``) each batch goes to the next node in turn,
    and the instances a node gave no answer for (``ArchiveUnavailableError`` without a status:
    refused, reset, timed out) are sent to the next node: a second store of an instance is
    harmless (Orthanc keys it by its SOP Instance UID and keeps the first).

    Parameters
    ----------
    intake
        The gateway's checks, quarantine and ownership (its spool is not used).
    archive
        radcloud's Orthanc through its DICOMweb plugin (:func:`core.archive.open_local_dicomweb`),
        or one per archive node.
    stored
        Told the Orthanc keys ``(instance, series)`` of the instances each batch stored
        (the study tracker's :meth:`~dicom_gateway.completeness.StudyTracker.expect`, so that
        it need not read them back when the change feed names them).
    """

    def __init__(
        self,
        intake: Intake,
        archive: DicomwebArchive | Sequence[DicomwebArchive],
        *,
        stored: Callable[[list[tuple[ArchiveId, ArchiveId]]], None] | None = None,
    ) -> None:
        self._intake = intake
        self._on_stored = stored
        self._archives = [archive] if isinstance(archive, DicomwebArchive) else list(archive)
        self._turns = itertools.count()

    def _store(
        self, instances: list[bytes], uids: list[tuple[str, str, str]]
    ) -> list[StoredInstance | ArchiveError]:
        """Store on the nodes in turn; what got no answer goes to the next node."""
        outcomes: list[StoredInstance | ArchiveError | None] = [None] * len(instances)
        waiting = list(range(len(instances)))
        first = next(self._turns)
        for turn in range(len(self._archives)):
            archive = self._archives[(first + turn) % len(self._archives)]
            answered = archive.store_instances(
                [instances[i] for i in waiting], uids=[uids[i] for i in waiting]
            )
            for index, outcome in zip(waiting, answered, strict=True):
                outcomes[index] = outcome
            waiting = [index for index in waiting if _unanswered(outcomes[index])]
            if not waiting:
                break
            logger.warning("archive node %s gave no answer: next node", archive.name)
        return [o if o is not None else ArchiveError("no outcome") for o in outcomes]

    def store_batch(
        self, parts: list[bytes], *, study_instance_uid: str | None, hospital: str
    ) -> list[StoreAnswer]:
        """Check ``parts`` and store the accepted ones in Orthanc; one answer per part, in
        order (blocking until Orthanc has answered).

        Parameters
        ----------
        parts
            DICOM Part 10 files, as the parts of the STOW-RS request held them.
        study_instance_uid
            The Study Instance UID of the request's URL, if any (as :func:`store_instance`).
        hospital
            The studies' owner: the hospital of the API key that sent them.
        """
        answers: list[StoreAnswer | None] = []
        accepted: list[tuple[int, InstanceInfo, bytes]] = []
        for index, data in enumerate(parts):
            try:
                answer, info = self._check(data, study_instance_uid, hospital)
            except Exception:  # one part's surprise fails that part, not the batch
                logger.exception("STOW-RS part %d of a batch failed unexpectedly", index + 1)
                failure, reason = FailureReason.PROCESSING_FAILURE, "internal error: not stored"
                answer, info = StoreAnswer.failed(data, failure, reason), None
            answers.append(answer)
            if info is not None:
                accepted.append((index, info, data))
        if accepted:
            outcomes = self._store(
                [zero_preamble(data) for _, _, data in accepted],
                [
                    (info.study_instance_uid, info.series_instance_uid, info.sop_instance_uid)
                    for _, info, _ in accepted
                ],
            )
            for (index, info, data), outcome in zip(accepted, outcomes, strict=True):
                answers[index] = self._outcome(data, info, outcome, hospital)
            if self._on_stored is not None:
                self._on_stored(
                    [
                        orthanc_keys(info)
                        for (_, info, _), outcome in zip(accepted, outcomes, strict=True)
                        if isinstance(outcome, StoredInstance)
                    ]
                )
        return [answer for answer in answers if answer is not None]

    def _check(
        self, data: bytes, study_instance_uid: str | None, hospital: str
    ) -> tuple[StoreAnswer | None, InstanceInfo | None]:
        """A refusal, or the instance admitted to its study."""
        if study_instance_uid is not None:
            mismatch = _study_mismatch(self._intake, data, study_instance_uid)
            if mismatch is not None:
                return mismatch, None
        try:
            info = self._intake.admit(
                data, sender_ae_title=None, hospital=hospital, source="stow", archive_id=_study_id
            )
            # a study claimed earlier without its key (another path): recorded once
            self._intake.ownership.link_archive(info.study_instance_uid, _study_id(info))
        except GatewayError as exc:
            return _refused(data, exc), None
        return None, info

    def _outcome(
        self,
        data: bytes,
        info: InstanceInfo,
        outcome: StoredInstance | ArchiveError,
        hospital: str,
    ) -> StoreAnswer:
        """The answer for an instance sent to Orthanc."""
        if isinstance(outcome, StoredInstance):
            metrics.INSTANCES_RECEIVED.labels("-", "stow").inc()
            metrics.INSTANCE_BYTES_RECEIVED.labels("-", "stow").inc(len(data))
            return _stored(info)
        if isinstance(outcome, ArchiveUnavailableError):
            logger.error("STOW-RS instance not stored, Orthanc unavailable: %s", outcome)
            metrics.INSTANCES_FAILED.labels("-", "stow", "archive_unavailable").inc()
            reason = f"the archive is unavailable, not stored: {outcome}"
            return _answer(info, FailureReason.PROCESSING_FAILURE, reason, retry=True)
        refusal = quarantine_refused(
            self._intake.quarantine,
            data,
            UnreadableInstanceError(f"the archive refused it: {outcome}"),
            sender_ae_title=None,
            hospital=hospital,
            source="stow",
        )
        logger.warning("STOW-RS instance %s refused: %s", info.sop_instance_uid, refusal.reason)
        return _answer(info, FailureReason.CANNOT_UNDERSTAND, refusal.reason)


def orthanc_keys(info: InstanceInfo) -> tuple[ArchiveId, ArchiveId]:
    """Orthanc's keys of a stored instance and of its series (hashes of the UIDs)."""
    series = (info.patient_id, info.study_instance_uid, info.series_instance_uid)
    return orthanc_instance_id(*series, info.sop_instance_uid), orthanc_series_id(*series)


def _study_id(info: InstanceInfo) -> str:
    """The key Orthanc will file the instance's study under."""
    return orthanc_study_id(info.patient_id, info.study_instance_uid)


def _answer(
    info: InstanceInfo, failure: FailureReason, reason: str, *, retry: bool = False
) -> StoreAnswer:
    """A failure of an instance whose header was read."""
    return StoreAnswer(
        int(failure),
        reason,
        retry,
        info.sop_class_uid,
        info.sop_instance_uid,
        info.study_instance_uid,
    )
