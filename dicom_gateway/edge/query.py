"""C-FIND and C-MOVE on the Orthanc edge (orthanc-python's ``RegisterFindCallback`` and
``RegisterMoveCallback``, which replace Orthanc's own SCPs), scoped to the caller's hospital
exactly as on the pynetdicom edge: the same identifier parsing (:mod:`dicom_gateway._query`),
matching and scope (:mod:`dicom_gateway._archive`), destinations and audit
(:mod:`dicom_gateway._retrieve`).

What differs is what Orthanc 1.10's plugin API lets an edge answer:

- the callbacks see the calling AE title, not the peer's address (Orthanc checked both at
  association) nor the SOP class: an identifier is read in the Patient Root model, whose
  levels include the Study Root's;
- a refused C-FIND (invalid identifier, too broad, archive down) raises, and Orthanc answers a
  failure status of its own (0xC001-class) rather than 0xA900 / 0xA700;
- a C-MOVE is sent by Orthanc's own C-STORE SCU (``POST /modalities/{name}/store``, the
  destination mirrored into Orthanc's peers by :mod:`dicom_gateway.edge.peers`), one
  synchronous job per study, over HTTP so that the plugin's interpreter is free meanwhile; a
  refused or failed C-MOVE raises, which Orthanc 1.10 answers with a warning (0xB000, "one or
  more failures") rather than 0xA801 / 0xA701.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from core.archive.exceptions import ArchiveError as SeamArchiveError
from core.archive.model import ArchiveId
from core.archive.orthanc_peers import OrthancPeers
from dicom_gateway._archive import QueryRetrieveArchive, StudyMoveResult
from dicom_gateway._query import InformationModel, MoveItem, Query
from dicom_gateway._retrieve import QueryRetrievePolicy
from dicom_gateway.edge.peers import PeerTable, peer_name
from dicom_gateway.exceptions import (
    GatewayError,
    InvalidIdentifierError,
    QueryTooBroadError,
    UnknownSenderError,
)
from dicom_gateway.senders import SenderInfo

__all__ = ["EdgeQueryRetrieve", "MoveRefusedError", "identifier_of"]

logger = logging.getLogger(__name__)

_MODEL = InformationModel.PATIENT_ROOT
_FIND_RESOURCE = "C-FIND"
_MOVE_KEYS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "AccessionNumber",
)
_SUCCESS = 0x0000
_LEVELS = {"INSTANCE": "IMAGE"}  # Orthanc hands a C-MOVE's IMAGE level over by its own name


class MoveRefusedError(GatewayError):
    """A C-MOVE the edge refused or could not complete (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def identifier_of(elements: Iterable[tuple[int, int, str]]) -> Dataset:
    """A C-FIND identifier from ``(group, element, value)`` triples as Orthanc hands them over
    (values as DICOM strings); the VR comes from the data dictionary, ``LO`` when unknown."""
    identifier = Dataset()
    for group, element, value in elements:
        tag = Tag(group, element)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "LO"
        if vr == "SQ":
            identifier.add_new(tag, vr, [])
            continue
        if " or " in vr:
            vr = vr.split(" or ")[0]
        identifier.add_new(tag, vr, value or None)
    return identifier


class EdgeQueryRetrieve:
    """C-FIND answers and C-MOVE sub-operations of the Orthanc edge.

    Parameters
    ----------
    peers
        Which sender an AE title is.
    retrieve
        Scope, destinations and audit (shared with the pynetdicom edge).
    archive
        The archive as a Query/Retrieve archive.
    orthanc_peers
        Orthanc's peer table, whose C-STORE SCU sends a C-MOVE's instances.
    """

    def __init__(
        self,
        peers: PeerTable,
        retrieve: QueryRetrievePolicy,
        archive: QueryRetrieveArchive,
        orthanc_peers: OrthancPeers,
    ) -> None:
        self._peers = peers
        self._retrieve = retrieve
        self._archive = archive
        self._orthanc_peers = orthanc_peers

    def _sender(self, calling: str) -> SenderInfo:
        sender = self._peers.sender(calling)
        if sender is None:  # removed since Orthanc admitted the association
            raise UnknownSenderError(calling, None, "calling AE title is not registered")
        return sender

    def find(self, identifier: Dataset, calling: str) -> list[Dataset]:
        """The answers to a C-FIND of ``calling`` (audited as one Query record).

        Raises
        ------
        UnknownSenderError
            ``calling`` is no sender (any more).
        InvalidIdentifierError, QueryTooBroadError, ArchiveError
            As on the pynetdicom edge (which answers 0xA900, 0xA700, 0xC001).
        """
        sender = self._sender(calling)
        query: Query | None = None
        answers: list[Dataset] = []
        status = 0xC001
        try:
            query = Query.from_identifier(identifier, _MODEL)
            answers = list(self._archive.find(query, self._retrieve.scope(sender)))
            status = _SUCCESS
        except InvalidIdentifierError:
            status = 0xA900
            raise
        except QueryTooBroadError:
            status = 0xA700
            raise
        finally:
            self._retrieve.audit_query(
                sender, sender.host, _FIND_RESOURCE, query, status=status, matches=len(answers)
            )
        return answers

    def move(self, request: Mapping[str, Any]) -> list[StudyMoveResult]:
        """Send what a C-MOVE asks for (orthanc-python's keyword arguments: ``Level``, the
        keys, ``OriginatorAET``, ``TargetAET``) to its destination, one job per study.

        Returns
        -------
        list[StudyMoveResult]
            How each study went (also audited).

        Raises
        ------
        UnknownSenderError
            The caller is no sender (any more).
        MoveRefusedError
            The destination is not registered, or is another hospital's; or an instance
            could not be sent.
        InvalidIdentifierError, ArchiveError
            The request lacks the unique key of its level; the archive failed.
        """
        sender = self._sender(str(request.get("OriginatorAET") or ""))
        target = str(request.get("TargetAET") or "").strip()
        destination = self._retrieve.destination(sender, sender.host, target)
        if destination is None:
            raise MoveRefusedError(f"C-MOVE destination {target!r} is not one of this sender's")
        identifier = Dataset()
        level = str(request.get("Level") or "").strip().upper()
        identifier.QueryRetrieveLevel = _LEVELS.get(level, level)
        for keyword in _MOVE_KEYS:
            value = str(request.get(keyword) or "").strip()
            if value:
                setattr(identifier, keyword, value)
        query = Query.from_identifier(identifier, _MODEL)
        items = self._archive.move_items(query, self._retrieve.scope(sender))
        results = [
            self._send_study(peer_name(destination.ae_title), study) for study in _by_study(items)
        ]
        self._retrieve.audit_moved(sender, sender.host, destination, results, cancelled=False)
        failed = sum(result.failed for result in results)
        if failed:
            raise MoveRefusedError(f"{failed} of {len(items)} instances could not be sent")
        return results

    def _send_study(self, peer: str, items: list[MoveItem]) -> StudyMoveResult:
        first = items[0]
        try:
            answer = self._orthanc_peers.store(peer, [ArchiveId(item.archive_id) for item in items])
        except SeamArchiveError as exc:
            logger.error("C-MOVE of study %s to %s failed: %s", first.study_instance_uid, peer, exc)
            return StudyMoveResult(
                first.study_instance_uid, first.patient_id, len(items), 0, len(items)
            )
        failed = int(answer.get("FailedInstancesCount") or 0)
        return StudyMoveResult(
            first.study_instance_uid, first.patient_id, len(items), len(items) - failed, failed
        )


def _by_study(items: list[MoveItem]) -> list[list[MoveItem]]:
    studies: dict[str, list[MoveItem]] = {}
    for item in items:
        studies.setdefault(item.study_instance_uid, []).append(item)
    return list(studies.values())
