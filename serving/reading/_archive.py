"""What reading needs of the image archive: a study's series and instances, instances by DICOM
UID, and storing or deleting the signed SR.

An unknown resource is a :class:`core.exceptions.NotFoundError` (HTTP 404 at the edge); the
archive not answering, or failing, is a :class:`~serving.exceptions.PlatformUnavailableError`
(see :func:`archive_errors`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pydicom
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO

from core.archive import (
    ArchivedResource,
    ArchiveError,
    ArchiveId,
    ArchiveNotFoundError,
    ImageArchive,
)
from core.exceptions import NotFoundError
from serving.exceptions import PlatformUnavailableError

__all__ = ["ReadingArchive", "archive_errors"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class ReadingArchive:
    """The image archive, as the reading app uses it.

    Parameters
    ----------
    archive
        The image archive.
    """

    def __init__(self, archive: ImageArchive) -> None:
        self._archive = archive

    def study_series(self, study: ArchiveId) -> list[ArchivedResource]:
        """The study's series.

        Raises
        ------
        NotFoundError
            The archive has no such study.
        """
        return _found(lambda: self._archive.get_study_series(study), "study in Orthanc", study)

    def series_instances(self, series: ArchiveId) -> list[ArchivedResource]:
        """The series' instances."""
        return self._archive.get_series_instances(series)

    def instance(self, sop_instance_uid: str) -> Dataset:
        """The instance ``sop_instance_uid``.

        Raises
        ------
        NotFoundError
            The archive has no such instance.
        """
        matches = self._archive.search_for_instances({"SOPInstanceUID": sop_instance_uid})
        if not matches:
            raise NotFoundError("instance", sop_instance_uid)
        return self._download(matches[0].archive_id, sop_instance_uid)

    def first_of_series(self, series_instance_uid: str) -> Dataset:
        """The first instance (by archive key) of series ``series_instance_uid``, e.g. a SEG.

        Raises
        ------
        NotFoundError
            The archive has no such series, or it is empty.
        """
        matches = self._archive.search_for_series({"SeriesInstanceUID": series_instance_uid})
        if not matches or not matches[0].children:
            raise NotFoundError("series", series_instance_uid)
        return self._download(sorted(matches[0].children)[0], series_instance_uid)

    def store(self, dataset: Dataset) -> ArchiveId:
        """Store ``dataset``; return its archive key."""
        buffer = DicomBytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        return self._archive.store_instance(buffer.getvalue()).archive_id

    def delete(self, instance: ArchiveId) -> None:
        """Delete the instance; a failure is logged, not raised."""
        try:
            self._archive.delete_instance(instance)
        except ArchiveError:
            logger.exception(
                "could not delete the SR %s of a report that was not recorded", instance
            )

    def _download(self, instance: ArchiveId, uid: str) -> Dataset:
        data = _found(lambda: self._archive.retrieve_instance(instance), "instance", uid)
        return pydicom.dcmread(io.BytesIO(data))


def _found(call: Callable[[], _T], kind: str, name: str) -> _T:
    """``call()``, an unknown resource becoming a :class:`~core.exceptions.NotFoundError`."""
    try:
        return call()
    except ArchiveNotFoundError as exc:
        raise NotFoundError(kind, name) from exc


@contextmanager
def archive_errors() -> Iterator[None]:
    """Turn the archive not answering, or failing, into a
    :class:`~serving.exceptions.PlatformUnavailableError`."""
    try:
        yield
    except ArchiveError as exc:
        raise PlatformUnavailableError(
            f"the image archive could not be reached or failed: {exc}"
        ) from exc
