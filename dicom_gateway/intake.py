"""The one path every incoming instance takes, whether it came by DIMSE or STOW-RS:
size limit (a deflated data set counted inflated, :mod:`core.inflation`), validation, the
study's owner and patient (:mod:`dicom_gateway.ownership`; refusals of both are quarantined
while the quarantine is within its quota), then the durable spool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from core.inflation import CorruptCompressedDataError, InflationLimitError, check_part10_inflation
from dicom_gateway import metrics
from dicom_gateway.exceptions import (
    InflationTooLargeError,
    InstanceRejectedError,
    InstanceTooLargeError,
    QuarantineFullError,
    SpoolFullError,
    UnreadableInstanceError,
)
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.spool import Spool, SpoolEntry
from dicom_gateway.validation import InstanceInfo, inspect_header, inspect_instance

__all__ = ["Intake", "quarantine_refused"]

logger = logging.getLogger(__name__)


def quarantine_refused(
    quarantine: Quarantine,
    data: bytes,
    exc: InstanceRejectedError,
    *,
    sender_ae_title: str | None,
    hospital: str | None,
    source: str,
) -> InstanceRejectedError:
    """Keep a refused instance in ``quarantine`` (within its quota) and count the refusal; both
    DICOM edges and STOW-RS refuse this way.

    Returns
    -------
    InstanceRejectedError
        ``exc``, or when the quarantine is full the same kind of error whose reason starts
        "not kept, quarantine full": the one to raise.
    """
    sender = sender_ae_title or "-"
    metrics.INSTANCES_FAILED.labels(sender, source, type(exc).__name__).inc()
    try:
        quarantine.add(
            data,
            reason=exc.reason,
            error=type(exc).__name__,
            source=source,
            sender_ae_title=sender_ae_title,
            hospital=hospital,
            within_quota=True,
        )
    except QuarantineFullError as full:
        logger.warning("refused instance from %s not kept: %s", sender, full)
        metrics.INSTANCES_FAILED.labels(sender, source, "quarantine_full").inc()
        return type(exc)(f"not kept, quarantine full: {exc.reason}")
    return exc


class Intake:
    """Accept instances into the spool, or refuse them with a reason.

    Parameters
    ----------
    spool, quarantine
        Where accepted and refused instances go.
    max_instance_bytes
        Larger instances are refused (and not quarantined).
    ownership
        Decides whether an instance may join its study (claiming a new one for its hospital).
    """

    def __init__(
        self,
        spool: Spool,
        quarantine: Quarantine,
        max_instance_bytes: int,
        ownership: StudyOwnership,
    ) -> None:
        self.spool = spool
        self.quarantine = quarantine
        self.max_instance_bytes = max_instance_bytes
        self.ownership = ownership

    def accept(
        self, data: bytes, *, sender_ae_title: str | None, hospital: str | None, source: str
    ) -> SpoolEntry:
        """Validate and durably spool one DICOM Part 10 file.

        Parameters
        ----------
        data
            The whole file.
        sender_ae_title, hospital
            Who sent it (recorded with the study).
        source
            ``dimse`` or ``stow``.

        Returns
        -------
        SpoolEntry
            The spooled instance: it may now be acknowledged.

        Raises
        ------
        InstanceTooLargeError
            Larger than the limit, or (``InflationTooLargeError``) a deflated data set that
            inflates beyond it; not quarantined.
        InstanceRejectedError
            Unreadable or non-conformant, or of a study of another hospital or patient
            (:class:`StudyCollisionError`); the bytes are in quarantine, unless it is full (the
            reason then starts "not kept, quarantine full" and nothing is kept).
        SpoolFullError
            No room in the spool.
        """
        info, stored = self._admit(
            data,
            inspect_instance,
            sender_ae_title=sender_ae_title,
            hospital=hospital,
            source=source,
        )
        sender = sender_ae_title or "-"
        try:
            entry = self.spool.put(stored, info, sender_ae_title=sender_ae_title, hospital=hospital)
        except SpoolFullError:
            metrics.INSTANCES_FAILED.labels(sender, source, "spool_full").inc()
            raise
        metrics.INSTANCES_RECEIVED.labels(sender, source).inc()
        metrics.INSTANCE_BYTES_RECEIVED.labels(sender, source).inc(len(data))
        return entry

    def admit(
        self,
        data: bytes,
        *,
        sender_ae_title: str | None,
        hospital: str | None,
        source: str,
        archive_id: Callable[[InstanceInfo], str] | None = None,
    ) -> InstanceInfo:
        """The checks of :meth:`accept` for a store that parses every value itself as it
        stores (Orthanc, for the Orthanc edge's STOW-RS): the size and inflation limits, the
        header's checks (:func:`~dicom_gateway.validation.inspect_header`) and the study's
        owner and patient; nothing is spooled, and nothing is counted as received.
        ``archive_id``: the archive's key of an instance's study, known before it is stored (a
        new study is claimed with it, in the same transaction).

        Returns
        -------
        InstanceInfo
            What the instance is: it may now be stored (with its preamble zeroed).

        Raises
        ------
        InstanceTooLargeError, InstanceRejectedError
            As :meth:`accept` (refusals of the checks quarantined).
        """
        info, _ = self._admit(
            data,
            lambda whole: (inspect_header(whole), whole),
            sender_ae_title=sender_ae_title,
            hospital=hospital,
            source=source,
            archive_id=archive_id,
        )
        return info

    def _admit(
        self,
        data: bytes,
        inspect: Callable[[bytes], tuple[InstanceInfo, bytes]],
        *,
        sender_ae_title: str | None,
        hospital: str | None,
        source: str,
        archive_id: Callable[[InstanceInfo], str] | None = None,
    ) -> tuple[InstanceInfo, bytes]:
        """Size, inflation, ``inspect`` and ownership, refusals quarantined; ``inspect``'s
        answer."""
        sender = sender_ae_title or "-"
        if len(data) > self.max_instance_bytes:
            metrics.INSTANCES_FAILED.labels(sender, source, "too_large").inc()
            raise InstanceTooLargeError(len(data), self.max_instance_bytes)
        try:
            self.check_inflation(data)
            info, stored = inspect(data)
            self.ownership.admit(
                info,
                hospital,
                sender=sender,
                source=source,
                archive_id=archive_id(info) if archive_id is not None else None,
            )
        except InflationTooLargeError:
            metrics.INSTANCES_FAILED.labels(sender, source, "inflation_too_large").inc()
            raise
        except InstanceRejectedError as exc:
            refusal = quarantine_refused(
                self.quarantine,
                data,
                exc,
                sender_ae_title=sender_ae_title,
                hospital=hospital,
                source=source,
            )
            if refusal is exc:
                raise
            raise refusal from exc
        return info, stored

    def check_inflation(self, data: bytes) -> None:
        """Refuse a deflated data set that inflates beyond the instance limit, counting it in
        steps and keeping nothing (pydicom would inflate it whole).

        Raises
        ------
        InflationTooLargeError
            It inflates beyond the limit.
        UnreadableInstanceError
            Its deflate stream is corrupt.
        """
        try:
            check_part10_inflation(data, self.max_instance_bytes)
        except InflationLimitError as exc:
            raise InflationTooLargeError(len(data), self.max_instance_bytes) from exc
        except CorruptCompressedDataError as exc:
            raise UnreadableInstanceError(str(exc)) from exc
