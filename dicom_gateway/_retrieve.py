"""What both DICOM edges decide and audit for C-FIND and C-MOVE (PS3.4 C.4.1, C.4.2): the
caller's scope (the studies its hospital sent), the C-MOVE destination it may send to (a
registered one of its own hospital, or of none), and the audit records. The pynetdicom service
(:mod:`dicom_gateway.scp`) and the Orthanc edge (:mod:`dicom_gateway.edge`) each map the
outcome to their protocol; the matching itself is :mod:`dicom_gateway._archive`'s.

Audit: one Query (110112) record per C-FIND; one Instances Transferred (110104, R) record per
study moved; a Security Alert (110113) for a C-MOVE to an unregistered destination or to
another hospital's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from dicom_gateway._archive import StudyMoveResult
from dicom_gateway._query import Query
from dicom_gateway.senders import DestinationInfo, SenderInfo, SenderRegistry

__all__ = ["QueryRetrievePolicy"]

logger = logging.getLogger(__name__)

_ROLE = "pacs"
_SUCCESS, _CANCEL = 0x0000, 0xFE00


class QueryRetrievePolicy:
    """Scope, destinations and audit of C-FIND and C-MOVE, whichever edge answers them.

    Parameters
    ----------
    senders
        The sender registry (hospitals, destinations, the studies each hospital sent).
    audit
        The audit trail; a failure to write a record is logged, never raised (the DIMSE
        service keeps answering).
    """

    def __init__(self, senders: SenderRegistry, audit: AuditTrail) -> None:
        self._senders = senders
        self._audit = audit

    def record(self, code: AuditEventCode, **fields: Any) -> None:
        """Write one audit record; an audit failure is logged and does not propagate."""
        try:
            self._audit.record(code, **fields)
        except Exception:  # an audit failure must not take the DIMSE service down
            logger.exception(  # not the fields: they may hold a patient ID
                "cannot write audit record %s (%s)", code.value, fields.get("resource_id")
            )

    def scope(self, sender: SenderInfo) -> frozenset[str]:
        """The archive keys of the studies ``sender``'s hospital sent: all it may see."""
        return self._senders.orthanc_study_ids(sender.hospital)

    def audit_query(
        self,
        sender: SenderInfo,
        address: str | None,
        sop_class_uid: str,
        query: Query | None,
        *,
        status: int,
        matches: int,
    ) -> None:
        """The Query (110112) record of one C-FIND."""
        detail: dict[str, Any] = query.audit_detail() if query else {}
        self.record(
            AuditEventCode.QUERY,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.SUCCESS
            if status in (_SUCCESS, _CANCEL)
            else AuditOutcome.SERIOUS_FAILURE,
            user_name=sender.ae_title,
            role=_ROLE,
            source_address=address,
            resource_type="query",
            resource_id=sop_class_uid,
            patient_id=query.patient_id if query else None,
            detail={**detail, "matches": matches, "status": f"0x{status:04X}"},
        )

    def destination(
        self, sender: SenderInfo, address: str | None, ae_title: str
    ) -> DestinationInfo | None:
        """The registered destination ``ae_title`` if ``sender`` may move to it, else ``None``
        (audited as a Security Alert when it is unregistered or another hospital's)."""
        try:
            destination = self._senders.destination(ae_title)
        except Exception:
            logger.exception("cannot look up C-MOVE destination %s", ae_title)
            return None
        if destination is None:
            logger.warning(
                "C-MOVE from %s to unregistered destination %s", sender.ae_title, ae_title
            )
            self._alert(sender, address, "C-MOVE to an unregistered destination", ae_title)
            return None
        if destination.hospital not in (None, sender.hospital):
            logger.warning(
                "C-MOVE from %s (%s) to %s of %s refused",
                sender.ae_title,
                sender.hospital,
                ae_title,
                destination.hospital,
            )
            self._alert(sender, address, "C-MOVE to another hospital's destination", ae_title)
            return None
        return destination

    def _alert(self, sender: SenderInfo, address: str | None, reason: str, ae_title: str) -> None:
        self.record(
            AuditEventCode.SECURITY_ALERT,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.MINOR_FAILURE,
            user_name=sender.ae_title,
            source_address=address,
            detail={"reason": reason, "destination": ae_title},
        )

    def audit_moved(
        self,
        sender: SenderInfo,
        address: str | None,
        destination: DestinationInfo,
        results: Iterable[StudyMoveResult],
        *,
        cancelled: bool,
    ) -> None:
        """One Instances Transferred (110104, R) record per study of a C-MOVE."""
        for study in results:
            if study.failed == 0:
                outcome = AuditOutcome.SUCCESS
            elif study.completed:
                outcome = AuditOutcome.MINOR_FAILURE
            else:
                outcome = AuditOutcome.SERIOUS_FAILURE
            self.record(
                AuditEventCode.INSTANCES_TRANSFERRED,
                action=AuditAction.READ,
                outcome=outcome,
                user_name=sender.ae_title,
                role=_ROLE,
                source_address=address,
                resource_type="study",
                resource_id=study.study_instance_uid,
                patient_id=study.patient_id,
                detail={
                    "destination": destination.ae_title,
                    "destination_address": f"{destination.host}:{destination.port}",
                    "instances": study.instances,
                    "completed": study.completed,
                    "failed": study.failed,
                    "not_sent": study.instances - study.completed - study.failed,
                    "cancelled": cancelled,
                    "hospital": sender.hospital,
                },
            )
