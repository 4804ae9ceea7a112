"""Which studies the archive's new instances belong to (private to
:mod:`dicom_gateway.completeness`).

The change feed names a new instance by its archive key only. One page of the feed is resolved
in bulk: its instances in one :meth:`~core.archive.ImageArchive.get_resources` call (each
names its series), then the series and studies not met before in one call each. Series and
studies are cached (an archive key names the same resource for ever: Orthanc's is a hash of
its UIDs), so a study arriving slice by slice costs one bulk read of its instances per page and
nothing more. Instances the archive no longer has (deleted since) are left out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from core.archive import ArchivedResource, ArchiveId, ImageArchive, ResourceLevel
from core.events import is_derived_series

_K = TypeVar("_K")
_V = TypeVar("_V")
_CACHE_SIZE = 4096


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
        found = self._archive.get_resources(ResourceLevel.INSTANCE, instances)
        resolved.gone = len(set(instances)) - len(found)
        series = self._series_facts(item.parent for item in found if item.parent is not None)
        studies = self._study_facts(facts.study for facts in series.values() if not facts.derived)
        for item in found:
            facts = series.get(item.parent) if item.parent is not None else None
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
