"""What reading needs of Orthanc: a study's series and instances, instances by UID, and storing
or deleting the signed SR."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pydicom
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO

from core.exceptions import NotFoundError
from serving.exceptions import PlatformUnavailableError

__all__ = ["ReadingArchive", "orthanc_errors"]

logger = logging.getLogger(__name__)


class ReadingArchive:
    """Orthanc, as the reading app uses it.

    Parameters
    ----------
    orthanc
        An Orthanc REST client (``pyorthanc.Orthanc``, an ``httpx.Client``).
    """

    def __init__(self, orthanc: Any) -> None:
        self._orthanc = orthanc

    def study_series(self, orthanc_study_id: str) -> list[dict[str, Any]]:
        """The study's series (Orthanc's series resources, with ``MainDicomTags``).

        Raises
        ------
        NotFoundError
            Orthanc has no such study.
        """
        answer = self._orthanc.get(f"/studies/{orthanc_study_id}/series")
        if answer.status_code == 404:
            raise NotFoundError("study in Orthanc", orthanc_study_id)
        answer.raise_for_status()
        series: list[dict[str, Any]] = answer.json()
        return series

    def series_instances(self, orthanc_series_id: str) -> list[dict[str, Any]]:
        """The series' instances (Orthanc's instance resources, with ``MainDicomTags``)."""
        listing = self._orthanc.get(f"/series/{orthanc_series_id}/instances")
        listing.raise_for_status()
        instances: list[dict[str, Any]] = listing.json()
        return instances

    def instance(self, sop_instance_uid: str) -> Dataset:
        """The instance ``sop_instance_uid``.

        Raises
        ------
        NotFoundError
            Orthanc has no such instance.
        """
        return self._download(self._lookup(sop_instance_uid, "Instance"))

    def first_of_series(self, series_instance_uid: str) -> Dataset:
        """The first instance (by Orthanc ID) of series ``series_instance_uid``, e.g. a SEG.

        Raises
        ------
        NotFoundError
            Orthanc has no such series.
        """
        series_id = self._lookup(series_instance_uid, "Series")
        listing = self._orthanc.get(f"/series/{series_id}")
        listing.raise_for_status()
        return self._download(sorted(listing.json()["Instances"])[0])

    def store(self, dataset: Dataset) -> str:
        """Store ``dataset``; return its Orthanc ID."""
        buffer = DicomBytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        answer = self._orthanc.post("/instances", content=buffer.getvalue())
        answer.raise_for_status()
        return str(answer.json()["ID"])

    def delete(self, orthanc_id: str) -> None:
        """Delete the instance ``orthanc_id``; a failure is logged, not raised."""
        try:
            self._orthanc.delete(f"/instances/{orthanc_id}").raise_for_status()
        except Exception:
            logger.exception(
                "could not delete the SR %s of a report that was not recorded", orthanc_id
            )

    def _lookup(self, uid: str, level: str) -> str:
        """The Orthanc ID of the ``level`` (Instance, Series) resource with DICOM UID ``uid``."""
        found = self._orthanc.post("/tools/lookup", content=uid)
        found.raise_for_status()
        matches = [m for m in found.json() if m.get("Type") == level]
        if not matches:
            raise NotFoundError(level.lower(), uid)
        return str(matches[0]["ID"])

    def _download(self, orthanc_id: str) -> Dataset:
        file = self._orthanc.get(f"/instances/{orthanc_id}/file")
        file.raise_for_status()
        return pydicom.dcmread(io.BytesIO(file.content))


@contextmanager
def orthanc_errors() -> Iterator[None]:
    """Turn Orthanc not answering, or answering with an error, into a
    :class:`~serving.exceptions.PlatformUnavailableError`."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise PlatformUnavailableError(f"Orthanc could not be reached or failed: {exc}") from exc
