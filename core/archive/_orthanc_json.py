"""Orthanc's JSON and identifiers, read into the seam's types (private to
:mod:`core.archive.orthanc_archive`)."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import httpx
import pydicom
from pydicom.errors import InvalidDicomError

from core.archive.exceptions import ArchiveError
from core.archive.model import ArchivedResource, ArchiveId, ResourceLevel, StoredInstance

PATHS = {
    ResourceLevel.PATIENT: "patients",
    ResourceLevel.STUDY: "studies",
    ResourceLevel.SERIES: "series",
    ResourceLevel.INSTANCE: "instances",
}
ORTHANC_LEVELS = {
    ResourceLevel.PATIENT: "Patient",
    ResourceLevel.STUDY: "Study",
    ResourceLevel.SERIES: "Series",
    ResourceLevel.INSTANCE: "Instance",
}
LEVELS = {name: level for level, name in ORTHANC_LEVELS.items()}
PARENTS = {
    ResourceLevel.STUDY: "ParentPatient",
    ResourceLevel.SERIES: "ParentStudy",
    ResourceLevel.INSTANCE: "ParentSeries",
}
CHILDREN = {
    ResourceLevel.PATIENT: "Studies",
    ResourceLevel.STUDY: "Series",
    ResourceLevel.SERIES: "Instances",
}
UNAVAILABLE_STATUSES = frozenset({401, 403, 408, 429})
_IDENTIFIERS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def orthanc_instance_id(
    patient_id: str | None, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
) -> ArchiveId:
    """Orthanc's ID of an instance: SHA-1 of ``PatientID|StudyInstanceUID|SeriesInstanceUID|
    SOPInstanceUID`` in five groups of eight hex digits."""
    return _orthanc_id(patient_id, study_instance_uid, series_instance_uid, sop_instance_uid)


def orthanc_study_id(patient_id: str | None, study_instance_uid: str) -> ArchiveId:
    """Orthanc's ID of a study: SHA-1 of ``PatientID|StudyInstanceUID``, as
    :func:`orthanc_instance_id` (known before Orthanc stores the study's first instance)."""
    return _orthanc_id(patient_id, study_instance_uid)


def orthanc_series_id(
    patient_id: str | None, study_instance_uid: str, series_instance_uid: str
) -> ArchiveId:
    """Orthanc's ID of a series: SHA-1 of ``PatientID|StudyInstanceUID|SeriesInstanceUID``, as
    :func:`orthanc_instance_id`."""
    return _orthanc_id(patient_id, study_instance_uid, series_instance_uid)


def _orthanc_id(patient_id: str | None, *uids: str) -> ArchiveId:
    key = "|".join((patient_id or "", *uids))
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()
    return ArchiveId("-".join(digest[i : i + 8] for i in range(0, 40, 8)))


def expected_id(data: bytes) -> ArchiveId | None:
    """The Orthanc ID ``data`` will be stored under; ``None`` when its header is unreadable."""
    try:
        header = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=[*_IDENTIFIERS]
        )
        values = [str(header.get(keyword, "") or "") for keyword in _IDENTIFIERS]
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError):
        return None
    return orthanc_instance_id(*values)


def reason(response: httpx.Response) -> str:
    """Orthanc's explanation of an error answer (``HttpDescribeErrors``), else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("Details") or body.get("Message") or body)[:500]
    return str(body)[:500]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def resource(answer: Any, level: ResourceLevel | None = None) -> ArchivedResource:
    """An :class:`ArchivedResource` from Orthanc's JSON of one resource."""
    if not isinstance(answer, dict) or not isinstance(answer.get("ID"), str):
        raise ArchiveError(f"Orthanc answered {answer!r:.200}: expected a resource with an ID")
    level = level or LEVELS.get(str(answer.get("Type")))
    if level is None:
        raise ArchiveError(f'Orthanc answered a resource of type "{answer.get("Type")}"')
    attributes: dict[str, str] = {}
    for section in ("MainDicomTags", "PatientMainDicomTags"):
        for keyword, value in (answer.get(section) or {}).items():
            if (text := _text(value)) is not None:
                attributes[keyword] = text
    parent = answer.get(PARENTS[level]) if level in PARENTS else None
    children = answer.get(CHILDREN[level], []) if level in CHILDREN else []
    return ArchivedResource(
        level=level,
        archive_id=ArchiveId(answer["ID"]),
        attributes=attributes,
        parent=ArchiveId(parent) if isinstance(parent, str) else None,
        children=tuple(ArchiveId(child) for child in children if isinstance(child, str)),
    )


def read_receipt(answer: Any) -> StoredInstance | None:
    """The receipt in Orthanc's answer to ``POST /instances``; ``None`` if it is none."""
    if not isinstance(answer, dict):
        return None
    instance, series, study = (answer.get(key) for key in ("ID", "ParentSeries", "ParentStudy"))
    if not (isinstance(instance, str) and isinstance(series, str) and isinstance(study, str)):
        return None
    return StoredInstance(
        archive_id=ArchiveId(instance),
        series_archive_id=ArchiveId(series),
        study_archive_id=ArchiveId(study),
        already_stored=answer.get("Status") == "AlreadyStored",
    )
