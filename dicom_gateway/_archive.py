"""The image archive behind the gateway's Query/Retrieve SCP: C-FIND answers and C-MOVE
sub-operations read through the archive seam (:class:`core.archive.ImageArchive`; the translation
rules are in :mod:`dicom_gateway._query`). The seam's errors become the gateway's
:class:`~dicom_gateway.exceptions.ArchiveError`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import evt
from pynetdicom.presentation import build_context

from core import archive as seam
from core.archive import ArchivedResource, ArchiveId, ImageArchive, ResourceLevel
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
from dicom_gateway.exceptions import ArchiveError, QueryTooBroadError

__all__ = ["MoveOperation", "QueryRetrieveArchive", "StudyMoveResult"]

logger = logging.getLogger(__name__)

_LEVELS = {
    QueryRetrieveLevel.PATIENT: ResourceLevel.PATIENT,
    QueryRetrieveLevel.STUDY: ResourceLevel.STUDY,
    QueryRetrieveLevel.SERIES: ResourceLevel.SERIES,
    QueryRetrieveLevel.IMAGE: ResourceLevel.INSTANCE,
}
_COLLECTIONS = {
    "patients": ResourceLevel.PATIENT,
    "studies": ResourceLevel.STUDY,
    "series": ResourceLevel.SERIES,
}
_COUNT_FIELDS = {"CountStudies": "studies", "CountSeries": "series", "CountInstances": "instances"}
_C_STORE_RSP = 0x8001
_STORE_OK = frozenset({0x0000, 0xB000, 0xB006, 0xB007})  # success and warnings (PS3.4 B.2.3)

_Cache = dict[tuple[str, ResourceLevel, ArchiveId], Any]


class QueryRetrieveArchive:
    """The gateway's view of the image archive as a Query/Retrieve archive.

    Parameters
    ----------
    archive
        radcloud's image archive.
    retrieve_ae_title
        Returned as (0008,0054) RetrieveAETitle: the gateway's AE title.
    """

    def __init__(self, archive: ImageArchive, retrieve_ae_title: str) -> None:
        self._archive = archive
        self._retrieve_ae_title = retrieve_ae_title

    # -- the seam ----------------------------------------------------------------------------

    def _cached(
        self,
        cache: _Cache,
        what: str,
        level: ResourceLevel,
        archive_id: ArchiveId,
        read: Callable[[ResourceLevel, ArchiveId], Any],
    ) -> Any:
        key = (what, level, archive_id)
        if key not in cache:
            cache[key] = read(level, archive_id)
        return cache[key]

    def _resource(self, cache: _Cache, level: ResourceLevel, archive_id: ArchiveId) -> Any:
        return self._cached(cache, "resource", level, archive_id, self._archive.get_resource)

    def _find(self, query: Query) -> list[ArchivedResource]:
        search = {
            ResourceLevel.PATIENT: self._archive.search_for_patients,
            ResourceLevel.STUDY: self._archive.search_for_studies,
            ResourceLevel.SERIES: self._archive.search_for_series,
            ResourceLevel.INSTANCE: self._archive.search_for_instances,
        }[_LEVELS[query.level]]
        return search(query.constraints)

    def instance_file(self, archive_id: ArchiveId) -> bytes:
        """The DICOM Part 10 bytes of one instance.

        Raises
        ------
        ArchiveError
            The archive does not have it or cannot be reached.
        """
        try:
            return self._archive.retrieve_instance(archive_id)
        except seam.ArchiveError as exc:
            raise ArchiveError(str(exc)) from exc

    # -- C-FIND ----------------------------------------------------------------------------

    def _in_scope(
        self,
        level: QueryRetrieveLevel,
        resource: ArchivedResource,
        scope: frozenset[str] | None,
        cache: _Cache,
    ) -> bool:
        """Whether ``resource`` belongs to a study in ``scope`` (the archive's study keys;
        ``None``: no restriction). A patient is in scope when any of their studies is (what a
        C-MOVE then sends is limited to those studies; C-FIND answers patients from them
        only, :meth:`_find_patients`)."""
        if scope is None:
            return True
        if level is QueryRetrieveLevel.PATIENT:
            return any(study in scope for study in resource.children)
        if level is QueryRetrieveLevel.STUDY:
            return resource.archive_id in scope
        if level is QueryRetrieveLevel.SERIES:
            return resource.parent in scope
        assert resource.parent is not None  # noqa: S101 - an instance has a series
        series = self._resource(cache, ResourceLevel.SERIES, resource.parent)
        return series.parent in scope

    def find(self, query: Query, scope: frozenset[str] | None = None) -> Iterator[Dataset]:
        """The C-FIND answers to ``query``, one identifier per match (PS3.4 C.4.1.3).

        The search runs when iteration starts; further requests (parent resources, counts)
        run per answer, so a caller that stops iterating (C-CANCEL) saves them.

        Raises
        ------
        QueryTooBroadError
            The query matches more than the archive's maximum (before the scope is applied).
        ArchiveError
            The archive failed.
        """
        cache: _Cache = {}
        try:
            if query.level is QueryRetrieveLevel.PATIENT and scope is not None:
                yield from self._find_patients(query, scope, cache)
                return
            for resource in self._find(query):
                if self._in_scope(query.level, resource, scope, cache):
                    yield self._answer(query, resource, cache)
        except seam.ArchiveQueryTooBroadError as exc:
            raise QueryTooBroadError(str(exc)) from exc
        except seam.ArchiveError as exc:
            raise ArchiveError(str(exc)) from exc

    def _find_patients(
        self, query: Query, scope: frozenset[str], cache: _Cache
    ) -> Iterator[Dataset]:
        """Patient-level answers made of the in-scope studies only.

        The archive merges patients by Patient ID across hospitals, so its patient resource
        (attributes, counts) may be another hospital's. Here the matching runs on studies
        (the archive matches patient keys at study level, on the patient attributes each study
        was stored with), the studies outside ``scope`` are dropped, and each patient's answer
        is built from the remaining studies: their patient attributes and their counts
        (NumberOfPatientRelated*, PS3.4 C.6.1.1.5), never the merged patient's.
        """
        by_patient: dict[ArchiveId, list[ArchivedResource]] = {}
        for study in self._archive.search_for_studies(query.constraints):
            if study.archive_id in scope and study.parent is not None:
                by_patient.setdefault(study.parent, []).append(study)
        wanted = {key.keyword for key in query.return_keys if key.keyword}
        for studies in by_patient.values():
            tags: dict[str, Any] = dict(studies[0].attributes)
            if "NumberOfPatientRelatedStudies" in wanted:
                tags["NumberOfPatientRelatedStudies"] = str(len(studies))
            for keyword, field_name in (
                ("NumberOfPatientRelatedSeries", "series"),
                ("NumberOfPatientRelatedInstances", "instances"),
            ):
                if keyword in wanted:
                    counts = [
                        getattr(
                            self._cached(
                                cache,
                                "statistics",
                                ResourceLevel.STUDY,
                                study.archive_id,
                                self._archive.get_statistics,
                            ),
                            field_name,
                        )
                        for study in studies
                    ]
                    tags[keyword] = "" if None in counts else str(sum(counts))
            yield self._dataset(query, tags)

    def _answer(self, query: Query, resource: ArchivedResource, cache: _Cache) -> Dataset:
        tags: dict[str, Any] = dict(resource.attributes)
        wanted = {key.keyword for key in query.return_keys if key.keyword}
        need_parents = bool(wanted - tags.keys() - _RETURN_ONLY) or bool(
            wanted & {*_COUNTS, "ModalitiesInStudy"}
        )
        ids = self._resource_ids(query.level, resource, cache, tags, need_parents=need_parents)
        for keyword in wanted & _COUNTS.keys():
            collection, field_name = _COUNTS[keyword]
            level = _COLLECTIONS[collection]
            if level in ids:
                stats = self._cached(
                    cache, "statistics", level, ids[level], self._archive.get_statistics
                )
                value = getattr(stats, _COUNT_FIELDS[field_name])
                tags[keyword] = "" if value is None else str(value)
        study = ids.get(ResourceLevel.STUDY)
        if "ModalitiesInStudy" in wanted and "ModalitiesInStudy" not in tags and study:
            series = self._cached(
                cache,
                "series",
                ResourceLevel.STUDY,
                study,
                lambda _, key: self._archive.get_study_series(key),
            )
            modalities = sorted({s.modality or "" for s in series} - {""})
            tags["ModalitiesInStudy"] = "\\".join(modalities)
        unknown = wanted - _RETURN_ONLY - {"ModalitiesInStudy"}
        if query.level is QueryRetrieveLevel.IMAGE and unknown - tags.keys():
            stored = self._archive.get_instance_format(resource.archive_id)
            tags.setdefault("SOPClassUID", stored.sop_class_uid)
            if unknown - tags.keys():  # not indexed by the archive: read from the file
                metadata = self._archive.get_instance_metadata(resource.archive_id)
                for name, value in metadata.items():
                    if isinstance(value, str):
                        tags.setdefault(name, value)
        return self._dataset(query, tags)

    def _dataset(self, query: Query, tags: dict[str, Any]) -> Dataset:
        """The answer's identifier: the query's return keys, valued from ``tags``."""
        tags["RetrieveAETitle"] = self._retrieve_ae_title
        tags["InstanceAvailability"] = "ONLINE"
        answer = Dataset()
        answer.QueryRetrieveLevel = query.level.value
        for key in query.return_keys:
            value = tags.get(key.keyword) if key.keyword else None
            answer.add(_element(key, value if isinstance(value, str) else None))
        if any(not str(value).isascii() for value in tags.values()):
            answer.SpecificCharacterSet = "ISO_IR 192"  # the archive answers UTF-8
        return answer

    def _resource_ids(
        self,
        level: QueryRetrieveLevel,
        resource: ArchivedResource,
        cache: _Cache,
        tags: dict[str, Any],
        *,
        need_parents: bool,
    ) -> dict[ResourceLevel, ArchiveId]:
        """The archive's keys of ``resource`` and its ancestors, by level. With
        ``need_parents``, the parents are fetched (once per request) and their tags added to
        ``tags`` where the resource has none of its own."""
        ids: dict[ResourceLevel, ArchiveId] = {}
        if level is QueryRetrieveLevel.PATIENT:
            ids[ResourceLevel.PATIENT] = resource.archive_id
            return ids
        if level is QueryRetrieveLevel.STUDY:
            ids[ResourceLevel.STUDY] = resource.archive_id
            if resource.parent is not None:
                ids[ResourceLevel.PATIENT] = resource.parent
            return ids
        if level is QueryRetrieveLevel.IMAGE:
            assert resource.parent is not None  # noqa: S101 - an instance has a series
            ids[ResourceLevel.SERIES] = resource.parent
            if not need_parents:
                return ids
            series = self._resource(cache, ResourceLevel.SERIES, resource.parent)
            for name, value in series.attributes.items():
                tags.setdefault(name, value)
            ids[ResourceLevel.STUDY] = series.parent
        else:
            assert resource.parent is not None  # noqa: S101 - a series has a study
            ids[ResourceLevel.SERIES], ids[ResourceLevel.STUDY] = (
                resource.archive_id,
                resource.parent,
            )
            if not need_parents:
                return ids
        study = self._resource(cache, ResourceLevel.STUDY, ids[ResourceLevel.STUDY])
        for name, value in study.attributes.items():
            tags.setdefault(name, value)
        if study.parent is not None:
            ids[ResourceLevel.PATIENT] = study.parent
        return ids

    # -- C-MOVE ----------------------------------------------------------------------------

    def move_items(self, query: Query, scope: frozenset[str] | None = None) -> list[MoveItem]:
        """Every instance a C-MOVE of ``query`` sends, grouped by study (PS3.4 C.4.2.2).

        Raises
        ------
        InvalidIdentifierError
            ``query`` lacks the unique key of its level (:meth:`Query.check_retrieve_keys`).
        ArchiveError
            The archive failed.
        """
        query.check_retrieve_keys()
        try:
            return self._move_items(query, scope)
        except seam.ArchiveError as exc:
            raise ArchiveError(str(exc)) from exc

    def _move_items(self, query: Query, scope: frozenset[str] | None) -> list[MoveItem]:
        cache: _Cache = {}
        studies: list[tuple[ArchivedResource, list[ArchivedResource]]] = []
        for resource in self._find(query):
            if not self._in_scope(query.level, resource, scope, cache):
                continue
            if query.level is QueryRetrieveLevel.PATIENT:
                for study in self._archive.get_patient_studies(resource.archive_id):
                    if scope is not None and study.archive_id not in scope:
                        continue
                    studies.append((study, self._archive.get_study_instances(study.archive_id)))
            elif query.level is QueryRetrieveLevel.STUDY:
                studies.append((resource, self._archive.get_study_instances(resource.archive_id)))
            elif query.level is QueryRetrieveLevel.SERIES:
                assert resource.parent is not None  # noqa: S101 - a series has a study
                study = self._resource(cache, ResourceLevel.STUDY, resource.parent)
                studies.append((study, self._archive.get_series_instances(resource.archive_id)))
            else:
                assert resource.parent is not None  # noqa: S101 - an instance has a series
                series = self._resource(cache, ResourceLevel.SERIES, resource.parent)
                study = self._resource(cache, ResourceLevel.STUDY, series.parent)
                studies.append((study, [resource]))
        items: list[MoveItem] = []
        seen: set[str] = set()
        for study, instances in studies:
            study_uid = study.study_instance_uid or ""
            patient_id = study.get("PatientID")
            for instance in instances:
                if instance.archive_id in seen:
                    continue
                seen.add(instance.archive_id)
                stored = self._archive.get_instance_format(instance.archive_id)
                items.append(
                    MoveItem(
                        archive_id=instance.archive_id,
                        sop_instance_uid=instance.sop_instance_uid or "",
                        sop_class_uid=stored.sop_class_uid,
                        transfer_syntax_uid=stored.transfer_syntax_uid,
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

    def __init__(self, archive: QueryRetrieveArchive, items: list[MoveItem]) -> None:
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
        """The instance to send. When the archive cannot give it: a stub that pynetdicom fails to
        send, so that it counts as a failed sub-operation and is listed in (0008,0058) Failed
        SOP Instance UID List (PS3.4 C.4.2.1.4.2)."""
        self._attempted.add(item.sop_instance_uid)
        try:
            return pydicom.dcmread(
                io.BytesIO(self._archive.instance_file(ArchiveId(item.archive_id)))
            )
        except (ArchiveError, InvalidDicomError, EOFError, ValueError, OSError) as exc:
            logger.error("C-MOVE cannot read instance %s: %s", item.archive_id, exc)
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
