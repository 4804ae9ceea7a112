"""The Orthanc edge's C-STORE filter: radcloud's policy for each instance Orthanc received by
DIMSE, decided before Orthanc writes it (orthanc-python's
``RegisterIncomingCStoreInstanceFilter``).

The filter answers a DIMSE status: 0 stores the instance; any other value discards it and is
the C-STORE response's status (Orthanc 1.10 sends no Error Comment with it, and a warning status
would discard too, so only failures are answered). The checks, in order, and their statuses
(the pynetdicom service's, :mod:`dicom_gateway._store_status`):

1. the calling AE title is a registered sender (Orthanc already checked it and its host at
   association; a sender removed since then is refused here): else 0xC001;
2. the size limit (``RADCLOUD_GATEWAY_MAX_INSTANCE_MIB``): 0xA700, not quarantined. Orthanc
   has buffered the data set by then; deflated data sets are refused at negotiation
   (``DeflatedTransferSyntaxAccepted`` off), so nothing inflates;
3. the Study, Series and SOP Instance UIDs are present and safe, and native pixel data is not
   shorter than the image attributes need (the shared checks of
   :mod:`dicom_gateway.validation`, read from Orthanc's own parse, its "simplified JSON", not
   parsed again): 0xA900;
4. the study's owner and patient (:meth:`StudyOwnership.admit`, which remembers the studies
   already admitted: most instances cost no database round trip): 0xC409.

Refusals of 3 and 4 are quarantined with the bytes Orthanc received (for DIMSE, exactly those it
would have stored: DCMTK writes a zero preamble and its own file meta). Unreadable data never
reaches the filter: DCMTK refuses it while receiving. Counters go to the gateway's metrics
(:mod:`dicom_gateway.metrics`, in Orthanc's process: :mod:`dicom_gateway.edge.runtime` serves
them); each stored study is audited (110104, C) once its sender has been quiet for a while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.uid import UID

from core.archive.orthanc_archive import orthanc_study_id
from core.audit import AuditAction, AuditEventCode, AuditOutcome
from dicom_gateway import metrics
from dicom_gateway._retrieve import QueryRetrievePolicy
from dicom_gateway._store_status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, store_failure
from dicom_gateway.edge.peers import PeerTable
from dicom_gateway.exceptions import InstanceRejectedError
from dicom_gateway.intake import quarantine_refused
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.senders import SenderInfo
from dicom_gateway.validation import (
    InstanceInfo,
    check_pixel_length,
    check_required_uids,
    uid_oddities,
)

__all__ = ["ReceivedInstance", "StorePolicy", "StoredStudies", "instance_info"]

logger = logging.getLogger(__name__)

_SOURCE = "dimse"
_ROLE = "pacs"
_STORE = 0


class ReceivedInstance(Protocol):
    """What the filter reads of an instance (the plugin adapts Orthanc's ``DicomInstance``)."""

    @property
    def calling_ae_title(self) -> str:
        """The association's calling AE title."""
        ...

    @property
    def size(self) -> int:
        """Bytes of the Part 10 file Orthanc built."""
        ...

    @property
    def transfer_syntax_uid(self) -> str:
        """Its transfer syntax."""
        ...

    @property
    def has_pixel_data(self) -> bool:
        """Whether the data set has (7FE0,0010) Pixel Data."""
        ...

    def tags(self) -> Mapping[str, Any]:
        """Orthanc's "simplified JSON" of the data set (keyword: value)."""
        ...

    def data(self) -> bytes:
        """The Part 10 bytes (read only to quarantine a refusal)."""
        ...


def _text(tags: Mapping[str, Any], keyword: str) -> str | None:
    value = tags.get(keyword)
    if value is None or isinstance(value, list | dict):
        return None
    return str(value).strip() or None


def _other_patient_ids(tags: Mapping[str, Any]) -> tuple[tuple[str, str | None], ...]:
    found: list[tuple[str, str | None]] = []
    items = tags.get("OtherPatientIDsSequence")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            patient_id = _text(item, "PatientID")
            if patient_id and len(patient_id) <= 64:
                found.append((patient_id, _text(item, "IssuerOfPatientID")))
    return tuple(dict.fromkeys(found))


def instance_info(
    tags: Mapping[str, Any], transfer_syntax_uid: str, size: int, *, has_pixel_data: bool
) -> InstanceInfo:
    """What the gateway records of an instance, from Orthanc's simplified JSON (``size``: of
    the whole file; ``has_pixel_data``: whether it has Pixel Data).

    Raises
    ------
    NonConformantInstanceError
        A required UID is missing or not safe, or the pixel data is short (module docstring).
    """
    uids = {
        keyword: _text(tags, keyword)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    }
    check_required_uids(uids)
    if has_pixel_data:  # the whole file is at most as long as its pixel data
        check_pixel_length(tags, UID(transfer_syntax_uid), size, "the whole file has")
    oddities = uid_oddities(uids)
    info = InstanceInfo(
        sop_class_uid=uids["SOPClassUID"] or "",
        sop_instance_uid=str(uids["SOPInstanceUID"]),
        study_instance_uid=str(uids["StudyInstanceUID"]),
        series_instance_uid=str(uids["SeriesInstanceUID"]),
        transfer_syntax_uid=transfer_syntax_uid,
        modality=_text(tags, "Modality"),
        patient_id=_text(tags, "PatientID"),
        patient_name=_text(tags, "PatientName"),
        issuer_of_patient_id=_text(tags, "IssuerOfPatientID"),
        patient_birth_date=_text(tags, "PatientBirthDate"),
        accession_number=_text(tags, "AccessionNumber"),
        study_date=_text(tags, "StudyDate"),
        study_description=_text(tags, "StudyDescription"),
        body_part_examined=_text(tags, "BodyPartExamined"),
        warnings=tuple(oddities),
        other_patient_ids=_other_patient_ids(tags),
    )
    if oddities:
        logger.warning(
            "instance %s stored with oddities: %s", info.sop_instance_uid, "; ".join(oddities)
        )
    return info


@dataclass
class _Tally:
    sender: SenderInfo
    patient_id: str | None
    instances: int = 0
    last: float = 0.0


class StoredStudies:
    """The Instances Transferred (110104, C) records of the Orthanc edge: one per sender and
    study, written once the sender has sent nothing more of the study for ``quiet_s`` (the
    pynetdicom service writes one per association at release; Orthanc tells a plugin nothing
    of associations).

    Parameters
    ----------
    retrieve
        Writes the records (failures logged, never raised).
    quiet_s
        How long a study's sender must be quiet.
    """

    def __init__(self, retrieve: QueryRetrievePolicy, quiet_s: float = 5.0) -> None:
        self._retrieve = retrieve
        self._quiet_s = quiet_s
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, str], _Tally] = {}

    def add(self, sender: SenderInfo, info: InstanceInfo) -> None:
        """Count one stored instance."""
        key = (sender.ae_title, info.study_instance_uid)
        with self._lock:
            tally = self._tallies.setdefault(key, _Tally(sender, info.patient_id))
            tally.instances += 1
            tally.last = time.monotonic()

    def flush(self, *, everything: bool = False) -> int:
        """Write the records of the quiet studies (``everything``: of all); returns how many."""
        now = time.monotonic()
        with self._lock:
            due = [
                key
                for key, tally in self._tallies.items()
                if everything or now - tally.last >= self._quiet_s
            ]
            tallies = [(key[1], self._tallies.pop(key)) for key in due]
        for study_uid, tally in tallies:
            self._retrieve.record(
                AuditEventCode.INSTANCES_TRANSFERRED,
                action=AuditAction.CREATE,
                outcome=AuditOutcome.SUCCESS,
                user_name=tally.sender.ae_title,
                role=_ROLE,
                source_address=tally.sender.host,
                resource_type="study",
                resource_id=study_uid,
                patient_id=tally.patient_id,
                detail={
                    "instances": tally.instances,
                    "hospital": tally.sender.hospital,
                    "edge": "orthanc",
                },
            )
        return len(tallies)


class StorePolicy:
    """The C-STORE filter (the module docstring).

    Parameters
    ----------
    peers
        Which sender an AE title is (from memory).
    ownership
        Admits an instance to its study.
    quarantine
        Where refused instances are kept (within its quota).
    max_instance_bytes
        Larger instances are refused.
    stored
        Counts stored instances for the audit trail.
    """

    def __init__(
        self,
        peers: PeerTable,
        ownership: StudyOwnership,
        quarantine: Quarantine,
        max_instance_bytes: int,
        stored: StoredStudies,
    ) -> None:
        self._peers = peers
        self._ownership = ownership
        self._quarantine = quarantine
        self._max_instance_bytes = max_instance_bytes
        self._stored = stored

    def check(self, instance: ReceivedInstance) -> int:
        """The DIMSE status for ``instance``: 0 to store it, else the failure to answer.

        Never raises: an exception would reach the sender as 0xA700 out of resources.
        """
        calling = instance.calling_ae_title.strip()
        try:
            return self._check(calling, instance)
        except Exception:  # a filter answers every instance; the edge stays up
            logger.exception("C-STORE from %s failed unexpectedly", calling)
            metrics.INSTANCES_FAILED.labels(calling, _SOURCE, "internal_error").inc()
            return CANNOT_UNDERSTAND

    def _check(self, calling: str, instance: ReceivedInstance) -> int:
        sender = self._peers.sender(calling)
        if sender is None:
            logger.warning("C-STORE from %s refused: not a registered sender (any more)", calling)
            metrics.INSTANCES_FAILED.labels(calling, _SOURCE, "unknown_sender").inc()
            return CANNOT_UNDERSTAND
        size = instance.size
        if size > self._max_instance_bytes:
            logger.warning(
                "refused instance from %s: %d bytes, over the limit of %d",
                calling,
                size,
                self._max_instance_bytes,
            )
            metrics.INSTANCES_FAILED.labels(calling, _SOURCE, "too_large").inc()
            return OUT_OF_RESOURCES
        try:
            info = instance_info(
                instance.tags(),
                instance.transfer_syntax_uid,
                size,
                has_pixel_data=instance.has_pixel_data,
            )
            archive_id = orthanc_study_id(info.patient_id, info.study_instance_uid)
            self._ownership.admit(
                info, sender.hospital, sender=calling, source=_SOURCE, archive_id=archive_id
            )
            self._ownership.link_archive(info.study_instance_uid, archive_id)  # claimed earlier
        except InstanceRejectedError as exc:
            refusal = quarantine_refused(
                self._quarantine,
                instance.data(),
                exc,
                sender_ae_title=calling,
                hospital=sender.hospital,
                source=_SOURCE,
            )
            logger.warning("refused instance from %s: %s", calling, refusal.reason)
            failure = store_failure(refusal)
            return failure[0] if failure else CANNOT_UNDERSTAND
        metrics.INSTANCES_RECEIVED.labels(calling, _SOURCE).inc()
        metrics.INSTANCE_BYTES_RECEIVED.labels(calling, _SOURCE).inc(size)
        self._stored.add(sender, info)
        return _STORE
