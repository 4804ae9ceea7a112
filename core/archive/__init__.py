"""radcloud's image archive seam.

:class:`ImageArchive` is what product code programs against; :class:`OrthancArchive` is its
implementation over Orthanc, made by :func:`open_archive`. Errors::

    ArchiveError
    ├── ArchiveUnavailableError     retry later
    ├── ArchiveNotFoundError        no such resource
    └── ArchiveRejectedError        refused (e.g. invalid DICOM)
        └── ArchiveQueryTooBroadError   a search matches more than the maximum
"""

from core.archive.exceptions import (
    ArchiveError,
    ArchiveNotFoundError,
    ArchiveQueryTooBroadError,
    ArchiveRejectedError,
    ArchiveUnavailableError,
)
from core.archive.model import (
    ArchivedResource,
    ArchiveId,
    ArchiveStatistics,
    Change,
    ChangeFeed,
    InstanceFormat,
    ResourceLevel,
    StoredInstance,
)
from core.archive.orthanc import dicomweb_client, open_archive, orthanc_healthy, wait_for_orthanc
from core.archive.orthanc_archive import OrthancArchive, orthanc_instance_id
from core.archive.protocol import AnonymizingArchive, ImageArchive

__all__ = [
    "AnonymizingArchive",
    "ArchiveError",
    "ArchiveId",
    "ArchiveNotFoundError",
    "ArchiveQueryTooBroadError",
    "ArchiveRejectedError",
    "ArchiveStatistics",
    "ArchiveUnavailableError",
    "ArchivedResource",
    "Change",
    "ChangeFeed",
    "ImageArchive",
    "InstanceFormat",
    "OrthancArchive",
    "ResourceLevel",
    "StoredInstance",
    "dicomweb_client",
    "open_archive",
    "orthanc_healthy",
    "orthanc_instance_id",
    "wait_for_orthanc",
]
