"""Downloading a ready study's image series from Orthanc for the triage pipeline.

The ``study.ready`` payload names the study's Orthanc series (else the study's series are
listed); our own results and other non-image series (SEG, SR, PR, KO) are left out, and a
series deleted meanwhile is skipped. Orthanc not answering is a
:class:`~serving.exceptions.PlatformUnavailableError` (retried); an instance that is not
readable DICOM an :class:`~serving.exceptions.UnprocessableStudyError` (recorded).
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO

from serving.exceptions import FailureReason, PlatformUnavailableError, UnprocessableStudyError
from serving.triage.selection import SeriesData

__all__ = ["fetch_series", "is_http_error"]

_AI_MODALITIES = {"SEG", "SR", "PR", "KO"}  # our own results and other non-image series


def fetch_series(orthanc: Any, payload: dict[str, Any]) -> list[SeriesData]:
    """The study's image series from Orthanc (our own SEG/SR series left out).

    Parameters
    ----------
    orthanc
        An Orthanc REST client.
    payload
        The ``study.ready`` payload (``orthanc_study_id``, ``series``).

    Raises
    ------
    PlatformUnavailableError
        Orthanc did not answer.
    UnprocessableStudyError
        The study is not in Orthanc, or an instance is not readable DICOM.
    """
    orthanc_study = payload.get("orthanc_study_id")
    try:
        if payload.get("series"):
            ids = [s["orthanc_series_id"] for s in payload["series"] if s.get("orthanc_series_id")]
        else:
            ids = _get_json(orthanc, f"/studies/{orthanc_study}")["Series"]
        found = []
        for series_id in ids:
            info = _get_json(orthanc, f"/series/{series_id}")
            modality = str(info.get("MainDicomTags", {}).get("Modality", "")).upper()
            if modality in _AI_MODALITIES:
                continue
            answer = orthanc.get(f"/series/{series_id}/archive", timeout=120)
            if answer.status_code == 404:
                continue  # deleted meanwhile
            answer.raise_for_status()
            datasets = _read_archive(answer.content)
            if datasets:
                uid = str(datasets[0].get("SeriesInstanceUID", series_id))
                found.append(SeriesData(uid, modality, datasets))
        return found
    except (PlatformUnavailableError, UnprocessableStudyError):
        raise
    except Exception as exc:
        if is_http_error(exc):
            raise PlatformUnavailableError(f"Orthanc: {exc}") from exc
        raise


def _get_json(orthanc: Any, path: str) -> Any:
    answer = orthanc.get(path, timeout=30)
    if answer.status_code == 404:
        raise UnprocessableStudyError(FailureReason.INTERNAL, f"Orthanc has no {path}")
    answer.raise_for_status()
    return answer.json()


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


def is_http_error(exc: BaseException) -> bool:
    """Whether ``exc`` says Orthanc could not be reached or answered with an error."""
    import httpx

    return isinstance(exc, httpx.HTTPError | ConnectionError | TimeoutError)
