"""The DICOM gateway: DIMSE and STOW-RS in, the durable spool, forwarding to the image archive,
study completeness. It runs as its own process (``python -m dicom_gateway``), the spool's only
writer whichever door an instance came through.

- :mod:`dicom_gateway.service`: the process, every part started and stopped together;
- :mod:`dicom_gateway.scp`: the DIMSE service (C-ECHO, C-STORE, C-FIND, C-MOVE), which maps
  errors to DIMSE statuses;
- :mod:`dicom_gateway.stow`: STOW-RS instances handed over by the API process on an internal
  HTTP endpoint, answered with PS3.18 Failure Reasons;
- :mod:`dicom_gateway.stow_door`: the public STOW-RS door of this process on
  ``gateway_stow_port`` (the API's credentials and checks, the same storing), served by
  :mod:`dicom_gateway._door_http`;
- :mod:`dicom_gateway.intake`: the one path of every instance (size, validation, spool);
- :mod:`dicom_gateway.validation`, :mod:`dicom_gateway.spool`,
  :mod:`dicom_gateway.quarantine`: checks, durable storage, refused instances;
- :mod:`dicom_gateway.forwarder`: spool to archive;
- :mod:`dicom_gateway.completeness`: follows the archive's change feed (whatever stored the
  instances) and writes the ``study.ready`` event once a study is stable;
- :mod:`dicom_gateway.ownership`: a study's owner and patient, and its identifiers in the
  patient cross-reference; :mod:`dicom_gateway.backfill` those of studies stored before it;
- :mod:`dicom_gateway.senders`: who may send, and C-MOVE destinations;
- :mod:`dicom_gateway.exceptions`: the ``GatewayError`` tree.

Importing the package changes no global library state (the process sets pydicom's reading
mode where it starts).
"""

from dicom_gateway.exceptions import (
    ArchiveError,
    GatewayError,
    InstanceRejectedError,
    InstanceTooLargeError,
    InvalidIdentifierError,
    NonConformantInstanceError,
    QuarantineEntryError,
    SpoolError,
    SpoolFullError,
    UnknownSenderError,
    UnreadableInstanceError,
)
from dicom_gateway.intake import Intake
from dicom_gateway.quarantine import Quarantine, QuarantineEntry
from dicom_gateway.spool import Spool, SpoolEntry, SpoolUsage
from dicom_gateway.validation import InstanceInfo, inspect_instance

__all__ = [
    "ArchiveError",
    "GatewayError",
    "InstanceInfo",
    "InstanceRejectedError",
    "InstanceTooLargeError",
    "Intake",
    "InvalidIdentifierError",
    "NonConformantInstanceError",
    "Quarantine",
    "QuarantineEntry",
    "QuarantineEntryError",
    "Spool",
    "SpoolEntry",
    "SpoolError",
    "SpoolFullError",
    "SpoolUsage",
    "UnknownSenderError",
    "UnreadableInstanceError",
    "inspect_instance",
]
