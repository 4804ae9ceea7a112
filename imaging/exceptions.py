"""Exceptions of the imaging core, under one root that is a
:class:`core.exceptions.RadcloudError` (the CLI reports every one cleanly; the API's routes map
them to HTTP).

::

    ImagingError                  root: catch this to handle any imaging failure
    ├── InconsistentSeriesError   the instances do not form one regular volume
    ├── UnsupportedDataError      data we cannot decode or represent (transfer syntax, colour)
    ├── VolumeTooLargeError(voxels, limit)   more voxels than a caller's budget, or a bomb
    ├── GeometryError             geometry that does not fit (mask vs. volume, SEG vs. source)
    ├── ConformanceError          an object we were about to write is not valid DICOM
    ├── DeidentificationError     an instance could not be de-identified (Orthanc refused it,
    │   │                         or it declares burned-in annotation)
    │   ├── OrthancUnavailableError   Orthanc could not be reached
    │   └── BurnedInAnnotationError(sop_instance_uid, reason)   withheld: text may be in the
    │                             pixels (flagged, or a modality/SOP class known to carry it)
    └── SyntheticError            synthetic data cannot be generated (``imaging.synthetic``)
        ├── InvalidParameterError(name, value, expected)   also a ValueError
        └── DatasetExistsError(path)  the output directory is not empty

Every subclass carries the data a caller needs to report the problem (the offending
instance UIDs, the transfer syntax and the missing decoder plugin, ...) besides a message
that names the bad value and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from core.exceptions import RadcloudError

__all__ = [
    "BurnedInAnnotationError",
    "ConformanceError",
    "DatasetExistsError",
    "DeidentificationError",
    "GeometryError",
    "ImagingError",
    "InconsistentSeriesError",
    "InvalidParameterError",
    "OrthancUnavailableError",
    "SyntheticError",
    "UnsupportedDataError",
    "VolumeTooLargeError",
]

_MAX_LISTED = 5


class ImagingError(RadcloudError):
    """Root of the imaging core's exceptions.

    Parameters
    ----------
    reason
        What went wrong, naming the bad value and what was expected.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InconsistentSeriesError(ImagingError):
    """The instances of a series do not make one regular volume.

    Raised for mixed orientation, mixed Rows/Columns or pixel spacing, duplicate slice
    positions, missing slices, positions off a common line and mixed SeriesInstanceUID,
    instead of returning a silently wrong volume.

    Parameters
    ----------
    reason
        What is inconsistent and what was expected.
    instance_uids
        SOPInstanceUIDs of the offending instances (for a gap or a duplicate: the
        instances on both sides).
    values
        The offending value per instance UID (e.g. its ImageOrientationPatient), as text.
    """

    def __init__(
        self,
        reason: str,
        instance_uids: Sequence[str],
        values: Mapping[str, str] | None = None,
    ) -> None:
        self.instance_uids: tuple[str, ...] = tuple(dict.fromkeys(instance_uids))
        self.values: dict[str, str] = dict(values or {})
        listed = ", ".join(self.instance_uids[:_MAX_LISTED])
        more = len(self.instance_uids) - _MAX_LISTED
        suffix = f" (and {more} more)" if more > 0 else ""
        super().__init__(f"{reason}; instances: {listed}{suffix}")
        self.reason = reason


class UnsupportedDataError(ImagingError):
    """Data we cannot decode or represent as a volume.

    Parameters
    ----------
    reason
        What is unsupported and what would be needed.
    transfer_syntax_uid
        The transfer syntax of the pixel data, when decoding is the problem.
    missing_plugins
        Decoder plugins (with the package that provides them) that are not installed.
    """

    def __init__(
        self,
        reason: str,
        *,
        transfer_syntax_uid: str | None = None,
        missing_plugins: Sequence[str] = (),
    ) -> None:
        super().__init__(reason)
        self.transfer_syntax_uid = transfer_syntax_uid
        self.missing_plugins: tuple[str, ...] = tuple(missing_plugins)


class VolumeTooLargeError(ImagingError):
    """A volume has more voxels than the caller's budget (``voxels`` ``None``: compressed
    data that inflates beyond what its header declares), found before it is decoded."""

    def __init__(self, reason: str, *, voxels: int | None, limit: int) -> None:
        super().__init__(reason)
        self.reason, self.voxels, self.limit = reason, voxels, limit


class GeometryError(ImagingError):
    """Geometry that does not fit: a mask that does not match its volume, a SEG frame that
    lies on none of the source slices, an affine that is not invertible.

    Parameters
    ----------
    reason
        The mismatch, with the expected and the actual value.
    """


class ConformanceError(ImagingError):
    """An object we were about to write breaks the standard (strict on what we write).

    Parameters
    ----------
    keyword
        The attribute's keyword (or tag) whose value is invalid.
    reason
        Why the value is invalid.
    """

    def __init__(self, keyword: str, reason: str) -> None:
        super().__init__(f"{keyword}: {reason}")
        self.reason = reason
        self.keyword = keyword


class DeidentificationError(ImagingError):
    """An instance could not be de-identified: nothing of it may leave the hospital scope.

    Parameters
    ----------
    reason
        What went wrong (Orthanc's own explanation when it refused).
    orthanc_id
        Orthanc's ID of the instance, when one was concerned.
    status_code
        Orthanc's HTTP status, when it answered.
    """

    def __init__(
        self, reason: str, *, orthanc_id: str | None = None, status_code: int | None = None
    ) -> None:
        where = f"instance {orthanc_id}: " if orthanc_id else ""
        super().__init__(f"{where}{reason}")
        self.reason = reason
        self.orthanc_id = orthanc_id
        self.status_code = status_code


class OrthancUnavailableError(DeidentificationError):
    """Orthanc did not answer (down, wrong address, timeout).

    Parameters
    ----------
    url
        The URL that was requested.
    reason
        The transport error.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Orthanc at {url} cannot be reached: {reason}")
        self.url = url


class BurnedInAnnotationError(DeidentificationError):
    """An instance is withheld from de-identified output: its pixels may show identifying text
    (Burned In Annotation (0028,0301) YES, or a modality or SOP class known to carry it), and
    the Clean Pixel Data option of PS3.15 E.3.1 is not applied. Callers count and report these.

    Parameters
    ----------
    sop_instance_uid
        The original SOPInstanceUID (for the caller's report inside the hospital scope).
    reason
        Which flag, modality or SOP class decided it.
    modality
        The instance's Modality, when it has one.
    sop_class_uid
        The instance's SOPClassUID, when it has one.
    """

    def __init__(
        self,
        sop_instance_uid: str,
        reason: str,
        *,
        modality: str | None = None,
        sop_class_uid: str | None = None,
    ) -> None:
        super().__init__(f"{reason}: withheld, since the Clean Pixel Data option is not applied")
        self.sop_instance_uid = sop_instance_uid
        self.modality = modality
        self.sop_class_uid = sop_class_uid


class SyntheticError(ImagingError):
    """Root of the synthetic-data errors (:mod:`imaging.synthetic`)."""


class InvalidParameterError(SyntheticError, ValueError):
    """A generator parameter is out of range."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"{name}={value!r} is not valid: expected {expected}")


class DatasetExistsError(SyntheticError):
    """The output directory already holds files; a dataset is only written to an empty one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f'output directory "{path}" is not empty: expected a new or empty one')
