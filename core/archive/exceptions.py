"""Errors of the image archive seam.

Every method of an :class:`~core.archive.protocol.ImageArchive` raises only these, whichever
transport is behind it; callers decide retry, quarantine or a 404 from the class alone::

    ArchiveError                    root (a RadcloudError): an answer the seam cannot understand
    ├── ArchiveUnavailableError     unreachable, timed out, 5xx, 401/403/408/429: retry later
    │   └── ArchiveTimeoutError     no answer within the timeout (connect or read)
    ├── ArchiveNotFoundError        no such study, series, instance (or it was deleted)
    └── ArchiveRejectedError        the archive refused the request, e.g. invalid DICOM (4xx)
        ├── ArchiveQueryTooBroadError(level, limit)   a search matches more than the maximum
        └── ArchiveUnsupportedError(operation, url)   the archive's protocol has no such verb
                                                      (a DICOMweb node: delete, changes, ...)

Each carries the data its message is made of.
"""

from __future__ import annotations

from core.exceptions import RadcloudError

__all__ = [
    "ArchiveError",
    "ArchiveNotFoundError",
    "ArchiveQueryTooBroadError",
    "ArchiveRejectedError",
    "ArchiveTimeoutError",
    "ArchiveUnavailableError",
    "ArchiveUnsupportedError",
]


class ArchiveError(RadcloudError):
    """Root of the archive's errors.

    Parameters
    ----------
    message
        What went wrong, naming the request.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ArchiveUnavailableError(ArchiveError):
    """The archive cannot serve now: retry later.

    Parameters
    ----------
    url
        The request that failed.
    reason
        The transport error or the archive's answer.
    status_code
        The HTTP status, ``None`` when no answer came (connection refused, timeout).
    """

    def __init__(self, url: str, reason: str, status_code: int | None = None) -> None:
        answered = (
            f"answered HTTP {status_code}" if status_code is not None else "cannot be reached"
        )
        super().__init__(f"image archive {url} {answered}: {reason}")
        self.url, self.reason, self.status_code = url, reason, status_code


class ArchiveNotFoundError(ArchiveError):
    """The archive has no such resource.

    Parameters
    ----------
    resource
        What was asked for (``study``, ``series``, ``instance``, ...).
    identifier
        Its identifier as given (a DICOM UID or the archive's own ID).
    """

    def __init__(self, resource: str, identifier: str) -> None:
        super().__init__(f'the image archive has no {resource} "{identifier}"')
        self.resource, self.identifier = resource, identifier


class ArchiveRejectedError(ArchiveError):
    """The archive refused the request (e.g. an upload that is not valid DICOM).

    Parameters
    ----------
    reason
        The archive's explanation.
    status_code
        The HTTP status of the refusal, when there was one.
    """

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        status = f"HTTP {status_code}: " if status_code is not None else ""
        super().__init__(f"the image archive refused the request: {status}{reason}")
        self.reason, self.status_code = reason, status_code


class ArchiveQueryTooBroadError(ArchiveRejectedError):
    """A search without a ``limit`` matches more than ``limit`` resources at ``level``
    (``RADCLOUD_ARCHIVE_MAX_FIND_RESULTS``): refused rather than cut short."""

    def __init__(self, level: str, limit: int) -> None:
        self.level, self.limit = level, limit
        super().__init__(
            f"the search matches more than {limit} {level} resources "
            "(RADCLOUD_ARCHIVE_MAX_FIND_RESULTS): narrow it"
        )


class ArchiveTimeoutError(ArchiveUnavailableError):
    """The archive did not answer within the timeout (connecting, or reading its answer).

    Parameters
    ----------
    url
        The request that timed out.
    reason
        The transport's description (which phase timed out).
    timeout_s
        The timeout that ran out, when known.
    """

    def __init__(self, url: str, reason: str, timeout_s: float | None = None) -> None:
        limit = f" (timeout {timeout_s:g} s)" if timeout_s is not None else ""
        super().__init__(url, f"timed out{limit}: {reason}")
        self.timeout_s = timeout_s


class ArchiveUnsupportedError(ArchiveRejectedError):
    """The archive's protocol cannot do ``operation`` at all (e.g. delete over DICOMweb):
    refused before anything is sent; retrying never helps.

    Parameters
    ----------
    operation
        The seam's method asked for, e.g. ``delete_study``.
    url
        Where the archive is.
    why
        What the protocol lacks.
    """

    def __init__(self, operation: str, url: str, why: str) -> None:
        self.operation, self.url = operation, url
        super().__init__(f"{operation} is not supported by the DICOMweb archive {url}: {why}")
