"""Orthanc behind the gateway's Query/Retrieve SCP: C-FIND answers and C-MOVE sub-operations
read through Orthanc's REST API (the translation rules are in :mod:`dicom_gateway._query`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import evt
from pynetdicom.presentation import build_context

from dicom_gateway._query import (
    _COUNTS,
    _RETURN_ONLY,
    VERIFICATION,
    MoveItem,
    Query,
    QueryRetrieveLevel,
    _element,
    move_contexts,
)
from dicom_gateway._transport import set_tcp_nodelay
from dicom_gateway.exceptions import ArchiveError

if TYPE_CHECKING:
    import pyorthanc

__all__ = ["MoveOperation", "OrthancArchive", "StudyMoveResult"]

logger = logging.getLogger(__name__)

_ORTHANC_LEVELS = {
    QueryRetrieveLevel.PATIENT: "Patient",
    QueryRetrieveLevel.STUDY: "Study",
    QueryRetrieveLevel.SERIES: "Series",
    QueryRetrieveLevel.IMAGE: "Instance",
}
_C_STORE_RSP = 0x8001
_STORE_OK = frozenset({0x0000, 0xB000, 0xB006, 0xB007})  # success and warnings (PS3.4 B.2.3)


class OrthancArchive:
    """The gateway's view of Orthanc as a Query/Retrieve archive.

    Parameters
    ----------
    client
        radcloud's Orthanc client.
    retrieve_ae_title
        Returned as (0008,0054) RetrieveAETitle: the gateway's AE title.
    """

    def __init__(self, client: pyorthanc.Orthanc, retrieve_ae_title: str) -> None:
        self._client = client
        self._retrieve_ae_title = retrieve_ae_title

    # -- REST ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            response: httpx.Response = self._client.request(
                method, f"{self._client.url}{path}", json=body
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ArchiveError(f"Orthanc {method} {path} failed: {exc}") from exc
        return response

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        response = self._request(method, path, body)
        try:
            return response.json()
        except ValueError as exc:
            raise ArchiveError(f"Orthanc {method} {path} did not answer JSON: {exc}") from exc

    def _cached(self, cache: dict[str, Any], path: str) -> Any:
        if path not in cache:
            cache[path] = self._json("GET", path)
        return cache[path]

    def _find(self, query: Query) -> list[dict[str, Any]]:
        answer = self._json(
            "POST",
            "/tools/find",
            {"Level": _ORTHANC_LEVELS[query.level], "Query": query.constraints, "Expand": True},
        )
        if not isinstance(answer, list):
            raise ArchiveError(f"Orthanc /tools/find answered {type(answer).__name__}, not a list")
        return answer

    def instance_file(self, orthanc_id: str) -> bytes:
        """The DICOM Part 10 bytes of one instance.

        Raises
        ------
        ArchiveError
            Orthanc does not have it or cannot be reached.
        """
        return self._request("GET", f"/instances/{orthanc_id}/file").content

    # -- C-FIND ----------------------------------------------------------------------------

    def _in_scope(
        self,
        level: QueryRetrieveLevel,
        resource: dict[str, Any],
        scope: frozenset[str] | None,
        cache: dict[str, Any],
    ) -> bool:
        """Whether ``resource`` belongs to a study in ``scope`` (Orthanc study IDs; ``None``:
        no restriction). A patient is in scope when any of their studies is."""
        if scope is None:
            return True
        if level is QueryRetrieveLevel.PATIENT:
            return any(study in scope for study in resource.get("Studies", []))
        if level is QueryRetrieveLevel.STUDY:
            return bool(resource["ID"] in scope)
        if level is QueryRetrieveLevel.SERIES:
            return bool(resource["ParentStudy"] in scope)
        series = self._cached(cache, f"/series/{resource['ParentSeries']}")
        return bool(series["ParentStudy"] in scope)

    def find(self, query: Query, scope: frozenset[str] | None = None) -> Iterator[Dataset]:
        """The C-FIND answers to ``query``, one identifier per match (PS3.4 C.4.1.3).

        The search runs when iteration starts; further requests (parent resources, counts)
        run per answer, so a caller that stops iterating (C-CANCEL) saves them.

        Raises
        ------
        ArchiveError
            Orthanc failed.
        """
        cache: dict[str, Any] = {}
        for resource in self._find(query):
            if self._in_scope(query.level, resource, scope, cache):
                yield self._answer(query, resource, cache)

    def _answer(self, query: Query, resource: dict[str, Any], cache: dict[str, Any]) -> Dataset:
        tags: dict[str, Any] = {}
        tags.update(resource.get("MainDicomTags") or {})
        tags.update(resource.get("PatientMainDicomTags") or {})
        wanted = {key.keyword for key in query.return_keys if key.keyword}
        need_parents = bool(wanted - tags.keys() - _RETURN_ONLY) or bool(
            wanted & {*_COUNTS, "ModalitiesInStudy"}
        )
        ids = self._resource_ids(query.level, resource, cache, tags, need_parents=need_parents)
        for keyword in wanted & _COUNTS.keys():
            collection, field_name = _COUNTS[keyword]
            if collection in ids:
                stats = self._cached(cache, f"/{collection}/{ids[collection]}/statistics")
                tags[keyword] = str(stats.get(field_name, ""))
        if "ModalitiesInStudy" in wanted and "ModalitiesInStudy" not in tags and "studies" in ids:
            series = self._cached(cache, f"/studies/{ids['studies']}/series")
            modalities = sorted({s["MainDicomTags"].get("Modality", "") for s in series} - {""})
            tags["ModalitiesInStudy"] = "\\".join(modalities)
        tags["RetrieveAETitle"] = self._retrieve_ae_title
        tags["InstanceAvailability"] = "ONLINE"
        unknown = wanted - _RETURN_ONLY - {"ModalitiesInStudy"}
        if query.level is QueryRetrieveLevel.IMAGE and unknown - tags.keys():
            metadata = self._cached(cache, f"/instances/{resource['ID']}/metadata?expand")
            tags.setdefault("SOPClassUID", metadata.get("SopClassUid", ""))
            if unknown - tags.keys():  # not indexed by Orthanc: read from the file
                for name, value in self._json(
                    "GET", f"/instances/{resource['ID']}/simplified-tags"
                ).items():
                    if isinstance(value, str):
                        tags.setdefault(name, value)
        answer = Dataset()
        answer.QueryRetrieveLevel = query.level.value
        for key in query.return_keys:
            value = tags.get(key.keyword) if key.keyword else None
            answer.add(_element(key, value if isinstance(value, str) else None))
        if any(not str(value).isascii() for value in tags.values()):
            answer.SpecificCharacterSet = "ISO_IR 192"  # Orthanc answers UTF-8
        return answer

    def _resource_ids(
        self,
        level: QueryRetrieveLevel,
        resource: dict[str, Any],
        cache: dict[str, Any],
        tags: dict[str, Any],
        *,
        need_parents: bool,
    ) -> dict[str, str]:
        """Orthanc IDs of ``resource`` and its ancestors, by collection. With
        ``need_parents``, the parents are fetched (once per request) and their tags added to
        ``tags`` where the resource has none of its own."""
        ids: dict[str, str] = {}
        if level is QueryRetrieveLevel.PATIENT:
            ids["patients"] = resource["ID"]
            return ids
        if level is QueryRetrieveLevel.STUDY:
            ids["studies"], ids["patients"] = resource["ID"], resource["ParentPatient"]
            return ids
        if level is QueryRetrieveLevel.IMAGE:
            ids["series"] = resource["ParentSeries"]
            if not need_parents:
                return ids
            series = self._cached(cache, f"/series/{ids['series']}")
            for name, value in (series.get("MainDicomTags") or {}).items():
                tags.setdefault(name, value)
            ids["studies"] = series["ParentStudy"]
        else:
            ids["series"], ids["studies"] = resource["ID"], resource["ParentStudy"]
            if not need_parents:
                return ids
        study = self._cached(cache, f"/studies/{ids['studies']}")
        for section in ("MainDicomTags", "PatientMainDicomTags"):
            for name, value in (study.get(section) or {}).items():
                tags.setdefault(name, value)
        ids["patients"] = study["ParentPatient"]
        return ids

    # -- C-MOVE ----------------------------------------------------------------------------

    def move_items(self, query: Query, scope: frozenset[str] | None = None) -> list[MoveItem]:
        """Every instance a C-MOVE of ``query`` sends, grouped by study (PS3.4 C.4.2.2).

        Raises
        ------
        InvalidIdentifierError
            ``query`` lacks the unique key of its level (:meth:`Query.check_retrieve_keys`).
        ArchiveError
            Orthanc failed.
        """
        query.check_retrieve_keys()
        cache: dict[str, Any] = {}
        studies: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for resource in self._find(query):
            if not self._in_scope(query.level, resource, scope, cache):
                continue
            if query.level is QueryRetrieveLevel.PATIENT:
                for study in self._json("GET", f"/patients/{resource['ID']}/studies"):
                    if scope is not None and study["ID"] not in scope:
                        continue
                    studies.append((study, self._json("GET", f"/studies/{study['ID']}/instances")))
            elif query.level is QueryRetrieveLevel.STUDY:
                studies.append(
                    (resource, self._json("GET", f"/studies/{resource['ID']}/instances"))
                )
            elif query.level is QueryRetrieveLevel.SERIES:
                study = self._cached(cache, f"/studies/{resource['ParentStudy']}")
                studies.append((study, self._json("GET", f"/series/{resource['ID']}/instances")))
            else:
                series = self._cached(cache, f"/series/{resource['ParentSeries']}")
                study = self._cached(cache, f"/studies/{series['ParentStudy']}")
                studies.append((study, [resource]))
        items: list[MoveItem] = []
        seen: set[str] = set()
        for study, instances in studies:
            study_uid = str(study["MainDicomTags"].get("StudyInstanceUID", ""))
            patient_id = (study.get("PatientMainDicomTags") or {}).get("PatientID") or None
            for instance in instances:
                if instance["ID"] in seen:
                    continue
                seen.add(instance["ID"])
                metadata = self._json("GET", f"/instances/{instance['ID']}/metadata?expand")
                items.append(
                    MoveItem(
                        orthanc_id=instance["ID"],
                        sop_instance_uid=str(instance["MainDicomTags"].get("SOPInstanceUID", "")),
                        sop_class_uid=str(metadata.get("SopClassUid", "")),
                        transfer_syntax_uid=str(metadata.get("TransferSyntax", "")),
                        study_instance_uid=study_uid,
                        patient_id=patient_id,
                    )
                )
        return items


@dataclass(frozen=True)
class StudyMoveResult:
    """How the sub-operations of one study of a C-MOVE went."""

    study_instance_uid: str
    patient_id: str | None
    instances: int
    completed: int  # success or warning
    failed: int  # sent, or tried to, without success (not counting those never tried)


class MoveOperation:
    """The C-STORE sub-operations of one C-MOVE (PS3.4 C.4.2.3.1).

    pynetdicom associates with the destination, sends each dataset and counts the results;
    this object supplies the presentation contexts and datasets, and hears the destination's
    C-STORE responses to tell the audit trail what each study's sub-operations achieved.

    Parameters
    ----------
    archive
        Where the instances come from.
    items
        The instances to send.
    """

    def __init__(self, archive: OrthancArchive, items: list[MoveItem]) -> None:
        self._archive = archive
        self.items = items
        self._statuses: dict[str, int] = {}
        self._attempted: set[str] = set()

    def association_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``AE.associate`` for the association with the destination."""
        return {
            "contexts": move_contexts(self.items) or [build_context(VERIFICATION)],
            "evt_handlers": [
                (evt.EVT_CONN_OPEN, self._on_connected),
                (evt.EVT_DIMSE_RECV, self._on_response),
            ],
        }

    @staticmethod
    def _on_connected(event: Any) -> None:
        set_tcp_nodelay(event.assoc.dul.socket.socket)

    def _on_response(self, event: Any) -> None:
        command = event.message.command_set
        if command.get("CommandField") == _C_STORE_RSP:
            uid = str(command.get("AffectedSOPInstanceUID", ""))
            self._statuses[uid] = int(command.Status)

    def dataset(self, item: MoveItem) -> Dataset:
        """The instance to send. When Orthanc cannot give it: a stub that pynetdicom fails to
        send, so that it counts as a failed sub-operation and is listed in (0008,0058) Failed
        SOP Instance UID List (PS3.4 C.4.2.1.4.2)."""
        self._attempted.add(item.sop_instance_uid)
        try:
            return pydicom.dcmread(io.BytesIO(self._archive.instance_file(item.orthanc_id)))
        except (ArchiveError, InvalidDicomError, EOFError, ValueError, OSError) as exc:
            logger.error("C-MOVE cannot read instance %s: %s", item.orthanc_id, exc)
            stub = Dataset()
            stub.SOPInstanceUID = item.sop_instance_uid
            return stub

    def study_results(self) -> list[StudyMoveResult]:
        """Per study, in the order moved: instances, and how many were stored or failed."""
        studies: dict[str, list[MoveItem]] = {}
        for item in self.items:
            studies.setdefault(item.study_instance_uid, []).append(item)
        results = []
        for study_uid, items in studies.items():
            uids = [item.sop_instance_uid for item in items]
            completed = sum(self._statuses.get(uid) in _STORE_OK for uid in uids)
            failed = sum(uid in self._attempted for uid in uids) - completed
            results.append(
                StudyMoveResult(study_uid, items[0].patient_id, len(items), completed, failed)
            )
        return results
