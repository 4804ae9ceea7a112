"""The image archive as radcloud needs it, independent of the server behind it.

:class:`ImageArchive` is the protocol every product module programs against (as
dicomweb-client's ``DICOMwebClient`` and ``DICOMfileClient`` share one interface); its
implementations are the transports. Today there is one, :class:`~core.archive.OrthancArchive`
over Orthanc's REST API; a DICOMweb one (QIDO-RS, WADO-RS, STOW-RS) can be added beside it.
Verbs follow DICOMweb (PS3.18 10): store, search, retrieve; resources returned by a search are
named again by their :data:`~core.archive.model.ArchiveId` in the calls that follow.

:class:`AnonymizingArchive` adds what only some archives offer: de-identifying an instance on
the server (Orthanc's ``/instances/{id}/anonymize``).

Errors: only those of :mod:`core.archive.exceptions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from core.archive.exceptions import ArchiveError
from core.archive.model import (
    ArchivedResource,
    ArchiveId,
    ArchiveStatistics,
    ChangeFeed,
    InstanceFormat,
    ResourceLevel,
    StoredInstance,
)

__all__ = ["AnonymizingArchive", "ImageArchive"]


class ImageArchive(Protocol):
    """What radcloud needs of an image archive.

    Every method raises :class:`~core.archive.ArchiveUnavailableError` when the archive cannot
    answer now (unreachable, timeout, 5xx), :class:`~core.archive.ArchiveNotFoundError` for an
    unknown resource and :class:`~core.archive.ArchiveRejectedError` when it refuses a request.
    """

    @property
    def url(self) -> str:
        """Where the archive is (for messages)."""
        ...

    # -- store (STOW) -----------------------------------------------------------------------

    def store_instance(self, data: bytes) -> StoredInstance:
        """Store one DICOM Part 10 file; storing one the archive has is harmless."""
        ...

    def store_instances(self, instances: Sequence[bytes]) -> list[StoredInstance | ArchiveError]:
        """Store DICOM Part 10 files, as few requests as the archive allows.

        Never raises for a failure of the archive: one outcome per instance, in order, either
        its receipt or the error that kept it out (:class:`ArchiveRejectedError`: refused, do
        not retry; :class:`ArchiveUnavailableError`: try again later), as a STOW-RS response
        lists referenced and failed instances (PS3.18 10.5.3).
        """
        ...

    # -- search (QIDO) ----------------------------------------------------------------------
    # Every search is bounded: ``limit`` matches from ``offset`` (paging); without ``limit``
    # all matches, refused with ArchiveQueryTooBroadError beyond the archive's maximum
    # (RADCLOUD_ARCHIVE_MAX_FIND_RESULTS) rather than cut short.

    def search_for_patients(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Patients matching ``search_filters`` (DICOM keyword to value, PS3.4 C.2.2.2)."""
        ...

    def search_for_studies(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Studies matching ``search_filters``, e.g. ``{"StudyInstanceUID": uid}``."""
        ...

    def search_for_series(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Series matching ``search_filters`` (study attributes allowed)."""
        ...

    def search_for_instances(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Instances matching ``search_filters`` (study and series attributes allowed)."""
        ...

    # -- navigate by the archive's keys ----------------------------------------------------

    def get_resource(self, level: ResourceLevel, archive_id: ArchiveId) -> ArchivedResource:
        """One resource by its key."""
        ...

    def get_resources(
        self, level: ResourceLevel, archive_ids: Sequence[ArchiveId]
    ) -> list[ArchivedResource]:
        """Several resources of one level by their keys, in as few requests as the archive
        allows; keys it no longer has are left out, and the order is not kept."""
        ...

    def get_patient_studies(self, patient: ArchiveId) -> list[ArchivedResource]:
        """The patient's studies."""
        ...

    def get_study_series(self, study: ArchiveId) -> list[ArchivedResource]:
        """The study's series (with their instances' keys as ``children``)."""
        ...

    def get_study_instances(self, study: ArchiveId) -> list[ArchivedResource]:
        """Every instance of the study."""
        ...

    def get_series_instances(self, series: ArchiveId) -> list[ArchivedResource]:
        """Every instance of the series."""
        ...

    def get_statistics(
        self, level: ResourceLevel | None = None, archive_id: ArchiveId | None = None
    ) -> ArchiveStatistics:
        """What the archive holds, or what lies below one resource (PS3.4 C.3.4 counts)."""
        ...

    # -- retrieve (WADO) --------------------------------------------------------------------

    def retrieve_instance(self, instance: ArchiveId) -> bytes:
        """The instance's DICOM Part 10 file."""
        ...

    def retrieve_series_archive(self, series: ArchiveId) -> bytes:
        """The series' instances as one ZIP of Part 10 files."""
        ...

    def retrieve_study_archive(self, study: ArchiveId) -> bytes:
        """The study's instances as one ZIP of Part 10 files."""
        ...

    def get_instance_metadata(self, instance: ArchiveId) -> dict[str, Any]:
        """The instance's attributes by DICOM keyword, sequences as lists of such mappings."""
        ...

    def get_instance_format(self, instance: ArchiveId) -> InstanceFormat:
        """The instance's SOP Class and Transfer Syntax UIDs, without reading the file."""
        ...

    # -- delete -----------------------------------------------------------------------------

    def delete_instance(self, instance: ArchiveId) -> None:
        """Delete one instance."""
        ...

    def delete_series(self, series: ArchiveId) -> None:
        """Delete a series and its instances."""
        ...

    def delete_study(self, study: ArchiveId) -> None:
        """Delete a study and everything in it."""
        ...

    # -- changes ----------------------------------------------------------------------------

    def changes(self, since: int = 0, limit: int = 100) -> ChangeFeed:
        """The changes after position ``since`` (at most ``limit``)."""
        ...

    def latest_change(self) -> int:
        """The position of the newest change (0 while the feed is empty): where a follower
        that must not replay the past starts."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


class AnonymizingArchive(ImageArchive, Protocol):
    """An archive that also de-identifies instances itself (PS3.15 Annex E)."""

    def server_version(self) -> str:
        """The archive server's name and version, for De-identification Method (0012,0063)."""
        ...

    def anonymize_instance(
        self,
        instance: ArchiveId,
        *,
        dicom_version: str,
        replace: Mapping[str, Any],
        keep: Sequence[str] = (),
    ) -> bytes:
        """The instance de-identified by the Basic Profile of ``dicom_version`` (Table
        E.1-1), with ``replace`` applied and ``keep`` kept; nothing is stored."""
        ...
