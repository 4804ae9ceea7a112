"""radcloud's image archive seam.

:class:`ImageArchive` is what product code programs against. Its implementations:
:class:`OrthancArchive` over Orthanc's REST API, made by :func:`open_archive` (radcloud's own
archive), and :class:`DicomwebArchive` over DICOMweb, made by :func:`open_node_archive` (a remote
node, :mod:`core.nodes`) or :func:`open_local_dicomweb` (the local Orthanc's plugin).
:func:`open_dicomweb_stream` streams any DICOMweb answer for a pass-through (blocking),
:func:`open_relay` on an event loop (:class:`HttpEndpoint`: where and how); :func:`node_status`
sorts a node's outcome for a fan-out. Errors::

    ArchiveError
    ├── ArchiveUnavailableError     retry later
    │   └── ArchiveTimeoutError     no answer within the timeout
    ├── ArchiveNotFoundError        no such resource
    └── ArchiveRejectedError        refused (e.g. invalid DICOM)
        ├── ArchiveQueryTooBroadError   a search matches more than the maximum
        └── ArchiveUnsupportedError     the protocol has no such operation (DICOMweb: delete)
"""

from core.archive.dicomweb_archive import DICOM_PARTS, DicomwebArchive
from core.archive.dicomweb_stream import (
    DicomwebStream,
    NodeCheck,
    NodeStatus,
    dicomweb_timeout,
    node_status,
    open_dicomweb_stream,
)
from core.archive.exceptions import (
    ArchiveError,
    ArchiveNotFoundError,
    ArchiveQueryTooBroadError,
    ArchiveRejectedError,
    ArchiveTimeoutError,
    ArchiveUnavailableError,
    ArchiveUnsupportedError,
)
from core.archive.model import (
    ArchivedResource,
    ArchiveId,
    ArchiveStatistics,
    Change,
    ChangeFeed,
    InstanceAttachment,
    InstanceFormat,
    RemoteNode,
    ResourceLevel,
    StoredInstance,
)
from core.archive.orthanc import (
    dicomweb_client,
    local_endpoint,
    open_archive,
    open_local_dicomweb,
    open_node_archive,
    orthanc_healthy,
    wait_for_orthanc,
)
from core.archive.orthanc_archive import OrthancArchive, orthanc_instance_id
from core.archive.protocol import AnonymizingArchive, ImageArchive
from core.archive.relay import HttpEndpoint, RelayedAnswer, open_relay

__all__ = [
    "DICOM_PARTS",
    "AnonymizingArchive",
    "ArchiveError",
    "ArchiveId",
    "ArchiveNotFoundError",
    "ArchiveQueryTooBroadError",
    "ArchiveRejectedError",
    "ArchiveStatistics",
    "ArchiveTimeoutError",
    "ArchiveUnavailableError",
    "ArchiveUnsupportedError",
    "ArchivedResource",
    "Change",
    "ChangeFeed",
    "DicomwebArchive",
    "DicomwebStream",
    "HttpEndpoint",
    "ImageArchive",
    "InstanceAttachment",
    "InstanceFormat",
    "NodeCheck",
    "NodeStatus",
    "OrthancArchive",
    "RelayedAnswer",
    "RemoteNode",
    "ResourceLevel",
    "StoredInstance",
    "dicomweb_client",
    "dicomweb_timeout",
    "local_endpoint",
    "node_status",
    "open_archive",
    "open_dicomweb_stream",
    "open_local_dicomweb",
    "open_node_archive",
    "open_relay",
    "orthanc_healthy",
    "orthanc_instance_id",
    "wait_for_orthanc",
]
