"""Downloading a ready study's image series from the image archive for the triage pipeline.

The ``study.ready`` payload names the study's series by their archive keys (else the study's
series are listed); our own results and other non-image series (SEG, SR, PR, KO) are left out,
and a series deleted meanwhile is skipped. The archive not answering is a
:class:`~serving.exceptions.PlatformUnavailableError` (retried); an unknown study or series, or
an instance that is not readable DICOM, an :class:`~serving.exceptions.UnprocessableStudyError`
(recorded).
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO

from core.archive import (
    ArchiveError,
    ArchiveId,
    ArchiveNotFoundError,
    ImageArchive,
    ResourceLevel,
)
from serving.exceptions import FailureReason, PlatformUnavailableError, UnprocessableStudyError
from serving.triage.selection import SeriesData

__all__ = ["fetch_series"]

_AI_MODALITIES = {"SEG", "SR", "PR", "KO"}  # our own results and other non-image series


def fetch_series(archive: ImageArchive, payload: dict[str, Any]) -> list[SeriesData]:
    """The study's image series (our own SEG/SR series left out).

    Parameters
    ----------
    archive
        The image archive.
    payload
        The ``study.ready`` payload (``orthanc_study_id``, ``series``: see :mod:`core.events`).

    Raises
    ------
    PlatformUnavailableError
        The archive did not answer, or answered what the seam cannot understand.
    UnprocessableStudyError
        The study or a listed series is not in the archive, or an instance is not readable
        DICOM.
    """
    study = ArchiveId(str(payload.get("orthanc_study_id")))
    try:
        if payload.get("series"):
            ids = [
                ArchiveId(s["orthanc_series_id"])
                for s in payload["series"]
                if s.get("orthanc_series_id")
            ]
        else:
            ids = list(archive.get_resource(ResourceLevel.STUDY, study).children)
        found = []
        for series_id in ids:
            info = archive.get_resource(ResourceLevel.SERIES, series_id)
            modality = (info.modality or "").upper()
            if modality in _AI_MODALITIES:
                continue
            try:
                content = archive.retrieve_series_archive(series_id)
            except ArchiveNotFoundError:
                continue  # deleted meanwhile
            datasets = _read_archive(content)
            if datasets:
                uid = str(datasets[0].get("SeriesInstanceUID", series_id))
                found.append(SeriesData(uid, modality, datasets))
        return found
    except ArchiveNotFoundError as exc:
        raise UnprocessableStudyError(FailureReason.INTERNAL, str(exc)) from exc
    except ArchiveError as exc:
        raise PlatformUnavailableError(f"image archive: {exc}") from exc


def _read_archive(content: bytes) -> list[Dataset]:
    datasets: list[Dataset] = []
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        for name in archive.namelist():
            if name.endswith("/"):
                continue
            try:
                datasets.append(pydicom.dcmread(DicomBytesIO(archive.read(name))))
            except Exception as exc:
                raise UnprocessableStudyError(
                    FailureReason.DECODE_FAILED, f"{name} is not readable DICOM: {exc}"
                ) from exc
    return datasets
