"""Errors of the DICOM gateway, under one root that is a :class:`core.exceptions.RadcloudError`
(the CLI reports every one cleanly). Only the protocol edges map them: the DIMSE handlers
(:mod:`dicom_gateway.scp`) to status codes (PS3.4 Annex B/C), the internal STOW endpoint
(:mod:`dicom_gateway.stow`) to Failure Reasons (PS3.18 Table I.2-2), the STOW-RS door
(:mod:`dicom_gateway.stow_door`) to HTTP, the CLI to exit status 1.

::

    GatewayError
    ├── InstanceRejectedError(reason)                    -> quarantine
    │   ├── UnreadableInstanceError(reason)              -> 0xC000 cannot understand
    │   ├── NonConformantInstanceError(reason)           -> 0xA900 does not match SOP class
    │   └── StudyCollisionError(reason)                  -> 0xC409 study of another hospital
    │                                                       or patient (ownership.py)
    ├── InstanceTooLargeError(size_bytes, limit_bytes)   -> 0xA700 out of resources
    │   └── InflationTooLargeError(size_bytes, limit_bytes) -> 0xA700 (a deflate bomb)
    ├── QuarantineFullError(reason)                      -> the refusal stands, nothing kept
    ├── SpoolFullError(used_bytes, limit_bytes, reason)  -> 0xA700 (STOW: retry later, 503)
    ├── SpoolError(path, reason)                         -> C-STORE 0xC001, STOW 0x0110
    ├── UnknownSenderError(ae_title, host, reason)       -> association rejected (0x01, 0x01, 0x03)
    ├── InvalidIdentifierError(reason)                   -> C-FIND/C-MOVE 0xA900
    ├── ArchiveError(reason)                             -> C-FIND 0xC001, C-MOVE 0xA701
    │   └── QueryTooBroadError(reason)                   -> C-FIND 0xA700 out of resources
    ├── QuarantineEntryError(entry_id, reason)
    ├── ClientGoneError(reason)                          -> STOW-RS door: audited, no answer
    └── BodyTooLargeError(limit_bytes)                   -> STOW-RS door: HTTP 413
"""

from __future__ import annotations

from pathlib import Path

from core.exceptions import RadcloudError

__all__ = [
    "ArchiveError",
    "BodyTooLargeError",
    "ClientGoneError",
    "GatewayError",
    "InflationTooLargeError",
    "InstanceRejectedError",
    "InstanceTooLargeError",
    "InvalidIdentifierError",
    "NonConformantInstanceError",
    "QuarantineEntryError",
    "QuarantineFullError",
    "QueryTooBroadError",
    "SpoolError",
    "SpoolFullError",
    "StudyCollisionError",
    "UnknownSenderError",
    "UnreadableInstanceError",
]


class GatewayError(RadcloudError):
    """Root of the gateway's errors."""


class InstanceRejectedError(GatewayError):
    """An instance cannot be stored; it goes to quarantine with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UnreadableInstanceError(InstanceRejectedError):
    """The bytes do not parse as a DICOM dataset."""


class NonConformantInstanceError(InstanceRejectedError):
    """The dataset parses but lacks what storing it requires (UIDs, consistent pixel data)."""


class StudyCollisionError(InstanceRejectedError):
    """An instance would join a study of another hospital (or of none), or one whose patient
    identity it does not share (:mod:`dicom_gateway.ownership`)."""


class InstanceTooLargeError(GatewayError):
    """An instance is larger than ``gateway_max_instance_mib``."""

    def __init__(self, size_bytes: int, limit_bytes: int, message: str | None = None) -> None:
        self.size_bytes, self.limit_bytes = size_bytes, limit_bytes
        super().__init__(
            message
            or f"instance of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes "
            "(RADCLOUD_GATEWAY_MAX_INSTANCE_MIB)"
        )


class InflationTooLargeError(InstanceTooLargeError):
    """A deflated data set inflates beyond ``gateway_max_instance_mib`` (counted, never kept)."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            size_bytes,
            limit_bytes,
            f"instance of {size_bytes} bytes: its deflated data set inflates beyond the limit "
            f"of {limit_bytes} bytes (RADCLOUD_GATEWAY_MAX_INSTANCE_MIB)",
        )


class QuarantineFullError(GatewayError):
    """The quarantine is at its quota: a refused instance is not kept."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"quarantine full: {reason}")


class SpoolFullError(GatewayError):
    """The spool is at its size limit, or the disk is nearly full."""

    def __init__(self, used_bytes: int, limit_bytes: int, reason: str) -> None:
        self.used_bytes, self.limit_bytes, self.reason = used_bytes, limit_bytes, reason
        super().__init__(f"spool full: {reason} ({used_bytes} of {limit_bytes} bytes used)")


class SpoolError(GatewayError):
    """The spool cannot be written (an I/O error other than a full disk), or a file in it is not
    a readable spool file.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"spool {path}: {reason}")


class UnknownSenderError(GatewayError):
    """A calling AE title is not registered, or calls from a host it is not registered at."""

    def __init__(self, ae_title: str, host: str | None, reason: str) -> None:
        self.ae_title, self.host, self.reason = ae_title, host, reason
        super().__init__(f'sender "{ae_title}" from {host or "unknown host"}: {reason}')


class QuarantineEntryError(GatewayError):
    """A quarantine entry does not exist or cannot be released."""

    def __init__(self, entry_id: str, reason: str) -> None:
        self.entry_id, self.reason = entry_id, reason
        super().__init__(f'quarantine entry "{entry_id}": {reason}')


class InvalidIdentifierError(GatewayError):
    """A C-FIND/C-MOVE identifier that does not fit its information model (PS3.4 C.4.1.2.3)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ArchiveError(GatewayError):
    """Orthanc failed to answer a query or to return an instance."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class QueryTooBroadError(ArchiveError):
    """A query matches more than ``RADCLOUD_ARCHIVE_MAX_FIND_RESULTS`` resources."""


class ClientGoneError(GatewayError):
    """A STOW-RS client stopped sending before its body ended (closed, broke off, or was silent
    past the socket timeout)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BodyTooLargeError(GatewayError):
    """A STOW-RS body went past ``limit_bytes`` (``RADCLOUD_API_MAX_STOW_MIB``); reading
    stopped."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(f"request body over {limit_bytes} bytes")
