"""Which studies the archive's new instances belong to (private to
:mod:`dicom_gateway.completeness`).

The change feed names a new instance by its archive key only. One page of the feed is resolved
in bulk: its instances in one :meth:`~core.archive.ImageArchive.get_resources` call (each
names its series), then the series and studies not met before in one call each. Series and
studies are cached (an archive key names the same resource for ever: Orthanc's is a hash of
its UIDs), so a study arriving slice by slice costs one bulk read of its instances per page and
nothing more. Instances the archive no longer has (deleted since) are left out.

A writer in this process that knows where an instance went before the feed names it (the
gateway's STOW-RS door stores with the Orthanc edge, and Orthanc's key of an instance and of its
series are hashes of its UIDs) says so with :meth:`InstanceResolver.expect`: such an instance is
resolved without reading it back (the door's instances were the tracker's largest bulk reads,
both in the gateway's CPU and in Orthanc's). An expectation the feed never meets (the key
computed differs, the store failed) only ages out of a bounded table.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from core.archive import ArchivedResource, ArchiveId, ImageArchive, ResourceLevel
from core.events import is_derived_series

_K = TypeVar("_K")
_V = TypeVar("_V")
_CACHE_SIZE = 4096
_EXPECTED_SIZE = 65536  # instances announced by expect() and not yet met in the feed


class _Lru(Generic[_K, _V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[_K, _V] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class SeriesFacts:
    """What the tracker needs of a series: its study, modality, and whether radcloud wrote it."""

    study: ArchiveId
    modality: str | None
    derived: bool


@dataclass(frozen=True)
class StudyFacts:
    """A study as the archive indexes it."""

    archive_id: ArchiveId
    study_instance_uid: str
    attributes: dict[str, str]


@dataclass
class Arrivals:
    """New instances of one study in one page of the feed."""

    study: StudyFacts
    instances: int = 0
    modalities: set[str] = field(default_factory=set)


@dataclass
class Resolved:
    """A page of new instances sorted out: arrivals by Study Instance UID, and the instances
    that are no arrival (``derived``: series radcloud wrote itself; ``gone``: deleted since)."""

    arrivals: dict[str, Arrivals] = field(default_factory=dict)
    derived: int = 0
    gone: int = 0


class InstanceResolver:
    """Maps new instances to their studies, in bulk and cached.

    Parameters
    ----------
    archive
        The image archive whose change feed is followed.
    """

    def __init__(self, archive: ImageArchive) -> None:
        self._archive = archive
        self._series: _Lru[ArchiveId, SeriesFacts] = _Lru(_CACHE_SIZE)
        self._studies: _Lru[ArchiveId, StudyFacts] = _Lru(_CACHE_SIZE)
        self._expected: OrderedDict[ArchiveId, ArchiveId] = OrderedDict()
        self._expected_lock = threading.Lock()

    def expect(self, instances: Iterable[tuple[ArchiveId, ArchiveId]]) -> None:
        """Note that each ``(instance, series)`` was just stored (thread-safe): when the feed
        names the instance, its series is taken from here rather than read from the archive."""
        with self._expected_lock:
            for instance, series in instances:
                self._expected[instance] = series
            while len(self._expected) > _EXPECTED_SIZE:
                self._expected.popitem(last=False)

    def _parents(self, instances: Sequence[ArchiveId]) -> tuple[list[ArchiveId | None], int]:
        """Each instance's series (from :meth:`expect`, else read in bulk), and how many of
        the instances the archive no longer has."""
        with self._expected_lock:
            known = {i: s for i in instances if (s := self._expected.pop(i, None)) is not None}
        unknown = [i for i in instances if i not in known]
        found = self._archive.get_resources(ResourceLevel.INSTANCE, unknown) if unknown else []
        gone = len(set(unknown)) - len(found)
        return [*known.values(), *(item.parent for item in found)], gone

    def resolve(self, instances: Sequence[ArchiveId]) -> Resolved:
        """Sort ``instances`` (new since the last page) by study.

        Raises
        ------
        ArchiveUnavailableError
            The archive cannot answer now (the page is read again later).
        """
        resolved = Resolved()
        if not instances:
            return resolved
        parents, resolved.gone = self._parents(instances)
        series = self._series_facts(parent for parent in parents if parent is not None)
        studies = self._study_facts(facts.study for facts in series.values() if not facts.derived)
        for parent in parents:
            facts = series.get(parent) if parent is not None else None
            study = studies.get(facts.study) if facts is not None else None
            if facts is None or study is None:
                resolved.gone += 1
                continue
            if facts.derived:
                resolved.derived += 1
                continue
            arrivals = resolved.arrivals.setdefault(study.study_instance_uid, Arrivals(study))
            arrivals.instances += 1
            if facts.modality:
                arrivals.modalities.add(facts.modality)
        return resolved

    def _series_facts(self, keys: Iterable[ArchiveId]) -> dict[ArchiveId, SeriesFacts]:
        facts: dict[ArchiveId, SeriesFacts] = {}
        missing = []
        for key in dict.fromkeys(keys):
            cached = self._series.get(key)
            if cached is None:
                missing.append(key)
            else:
                facts[key] = cached
        for item in self._read(ResourceLevel.SERIES, missing):
            if item.parent is None:
                continue
            read = SeriesFacts(
                study=item.parent,
                modality=item.modality,
                derived=is_derived_series(item.modality, item.get("Manufacturer")),
            )
            self._series.put(item.archive_id, read)
            facts[item.archive_id] = read
        return facts

    def _study_facts(self, keys: Iterable[ArchiveId]) -> dict[ArchiveId, StudyFacts]:
        facts: dict[ArchiveId, StudyFacts] = {}
        missing = []
        for key in dict.fromkeys(keys):
            cached = self._studies.get(key)
            if cached is None:
                missing.append(key)
            else:
                facts[key] = cached
        for item in self._read(ResourceLevel.STUDY, missing):
            if item.study_instance_uid is None:
                continue
            read = StudyFacts(item.archive_id, item.study_instance_uid, dict(item.attributes))
            self._studies.put(item.archive_id, read)
            facts[item.archive_id] = read
        return facts

    def _read(self, level: ResourceLevel, keys: list[ArchiveId]) -> list[ArchivedResource]:
        return self._archive.get_resources(level, keys) if keys else []
