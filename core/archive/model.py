"""What the image archive answers: resources by DICOM level, stored instances, changes.

Resources are named by their DICOM identifiers (``attributes``, keyed by DICOM keyword) and by
an :data:`ArchiveId`, the archive's own key of the resource. An ``ArchiveId`` is opaque outside
the implementation that gave it: Orthanc's is its resource ID (a SHA-1 of the DICOM
identifiers, e.g. ``"8a8cf898-ca27c490-d0c7058c-929d0581-2bbf104d"``); a DICOMweb archive
would use the path of UIDs. Pass it back only to the archive that gave it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NewType

__all__ = [
    "ArchiveId",
    "ArchiveStatistics",
    "ArchivedResource",
    "Change",
    "ChangeFeed",
    "InstanceAttachment",
    "InstanceFormat",
    "RemoteNode",
    "ResourceLevel",
    "StoredInstance",
]

ArchiveId = NewType("ArchiveId", str)
"""The archive's own key of a resource (see the module docstring)."""


class ResourceLevel(StrEnum):
    """The levels of the DICOM information model (PS3.4 C.6.1)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    INSTANCE = "IMAGE"

    def below(self) -> ResourceLevel | None:
        """The next level down; ``None`` below an instance."""
        order = list(ResourceLevel)
        index = order.index(self)
        return order[index + 1] if index + 1 < len(order) else None


@dataclass(frozen=True)
class ArchivedResource:
    """A patient, study, series or instance held by the archive.

    Attributes
    ----------
    level
        Its level.
    archive_id
        The archive's key of it.
    attributes
        Its indexed attributes by DICOM keyword (a study's include its patient's).
    parent
        The archive's key of the resource one level up; ``None`` for a patient.
    children
        The archive's keys of the resources one level down, in no particular order.
    """

    level: ResourceLevel
    archive_id: ArchiveId
    attributes: Mapping[str, str] = field(default_factory=dict)
    parent: ArchiveId | None = None
    children: tuple[ArchiveId, ...] = ()

    def get(self, keyword: str) -> str | None:
        """The attribute's value, ``None`` when absent or empty."""
        return self.attributes.get(keyword) or None

    @property
    def study_instance_uid(self) -> str | None:
        """(0020,000D) Study Instance UID, if indexed at this level."""
        return self.get("StudyInstanceUID")

    @property
    def series_instance_uid(self) -> str | None:
        """(0020,000E) Series Instance UID, if indexed at this level."""
        return self.get("SeriesInstanceUID")

    @property
    def sop_instance_uid(self) -> str | None:
        """(0008,0018) SOP Instance UID, if indexed at this level."""
        return self.get("SOPInstanceUID")

    @property
    def modality(self) -> str | None:
        """(0008,0060) Modality of a series."""
        return self.get("Modality")


@dataclass(frozen=True)
class InstanceAttachment:
    """One instance as the archive keeps it on disk: what tells a backup whether its file
    changed since the last one without reading the file.

    Attributes
    ----------
    archive_id
        The archive's key of the instance.
    attachment_id
        The archive's key of the stored file (Orthanc's ``FileUuid``): a new one whenever the
        instance is stored again.
    size
        The stored file's size in bytes.
    """

    archive_id: ArchiveId
    attachment_id: str
    size: int


@dataclass(frozen=True)
class StoredInstance:
    """The archive's receipt for one stored instance.

    Attributes
    ----------
    archive_id, series_archive_id, study_archive_id
        The archive's keys of the instance, its series and its study.
    already_stored
        The archive had it before (a duplicate: harmless).
    """

    archive_id: ArchiveId
    series_archive_id: ArchiveId
    study_archive_id: ArchiveId
    already_stored: bool = False


@dataclass(frozen=True)
class InstanceFormat:
    """How an instance is stored: its SOP Class and Transfer Syntax UIDs (PS3.10 7.1)."""

    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class ArchiveStatistics:
    """How much the archive, or one resource of it, holds (counts of what lies below)."""

    patients: int | None
    studies: int | None
    series: int | None
    instances: int


@dataclass(frozen=True)
class Change:
    """One entry of the archive's change feed.

    Attributes
    ----------
    seq
        Its position in the feed (increasing).
    change_type
        What happened, in the archive's words (Orthanc: ``NewInstance``, ``StableStudy``, ...).
    level
        The level of the resource concerned.
    archive_id
        The archive's key of the resource.
    date
        When, as the archive wrote it.
    """

    seq: int
    change_type: str
    level: ResourceLevel
    archive_id: ArchiveId
    date: str


@dataclass(frozen=True)
class ChangeFeed:
    """A page of the change feed: ``changes`` after the requested position, ``last`` the
    position to ask from next, ``done`` whether the feed is exhausted for now."""

    changes: tuple[Change, ...]
    last: int
    done: bool


@dataclass(frozen=True)
class RemoteNode:
    """A remote DICOMweb node as registered (``radcloud hospitals add``): no credentials.

    Attributes
    ----------
    name
        Its hospital's name (``hospitals.name``).
    dicomweb_url
        Its DICOMweb service root, e.g. ``https://pacs.example.org/dicom-web``.
    ca_file
        PEM file of the CAs its TLS certificate is verified against (else the system's).
    timeout_s
        Its read timeout, overriding ``RADCLOUD_REMOTE_READ_TIMEOUT_S``.
    auth
        How it is authenticated: ``"basic"``, ``"token"`` or ``"none"``.
    """

    name: str
    dicomweb_url: str
    ca_file: Path | None = None
    timeout_s: float | None = None
    auth: str = "none"
