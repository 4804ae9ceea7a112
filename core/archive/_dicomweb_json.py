"""DICOM JSON (PS3.18 F.2) read into the seam's types, and the DICOMweb archive's
:data:`~core.archive.model.ArchiveId` (private to :mod:`core.archive.dicomweb_archive`).

A DICOMweb archive's ``ArchiveId`` is the resource's DICOMweb path below the service root, its
UIDs percent-encoded (they never need it; a Patient ID may)::

    patients/{PatientID}                                   (no DICOMweb resource: a study filter)
    studies/{StudyInstanceUID}
    studies/{StudyInstanceUID}/series/{SeriesInstanceUID}
    studies/{StudyInstanceUID}/series/{SeriesInstanceUID}/instances/{SOPInstanceUID}

so it carries every UID needed to address the resource again, and the path of a WADO-RS
request is the ``ArchiveId`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import httpx
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from core.archive.exceptions import ArchiveError
from core.archive.model import ArchivedResource, ArchiveId, ResourceLevel

__all__ = [
    "ResourcePath",
    "attributes",
    "count_of",
    "cut_short",
    "dataset_keywords",
    "query_params",
    "resource_from_json",
    "stow_outcomes",
    "tag_of",
]

_SEGMENTS = {
    ResourceLevel.PATIENT: "patients",
    ResourceLevel.STUDY: "studies",
    ResourceLevel.SERIES: "series",
    ResourceLevel.INSTANCE: "instances",
}
_DEPTH = {
    ResourceLevel.PATIENT: 1,
    ResourceLevel.STUDY: 1,
    ResourceLevel.SERIES: 2,
    ResourceLevel.INSTANCE: 3,
}
# STOW-RS answer (PS3.18 10.5.3): ReferencedSOPSequence, FailedSOPSequence, FailureReason
_REFERENCED, _FAILED, _FAILURE_REASON = "00081199", "00081198", "00081197"
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class ResourcePath:
    """The UIDs of one resource (an :data:`ArchiveId` parsed), ``patient_id`` for a patient."""

    level: ResourceLevel
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    patient_id: str | None = None

    @property
    def archive_id(self) -> ArchiveId:
        """The path as an :data:`ArchiveId` (see the module docstring)."""
        if self.level is ResourceLevel.PATIENT:
            return ArchiveId(f"patients/{quote(self.patient_id or '', safe='')}")
        parts = [f"studies/{quote(self.study_instance_uid or '', safe='')}"]
        if self.series_instance_uid is not None:
            parts.append(f"series/{quote(self.series_instance_uid, safe='')}")
        if self.sop_instance_uid is not None:
            parts.append(f"instances/{quote(self.sop_instance_uid, safe='')}")
        return ArchiveId("/".join(parts))

    @property
    def parent(self) -> ArchiveId | None:
        """The path one level up; ``None`` for a patient or a study (its patient is not part
        of a DICOMweb path)."""
        if self.sop_instance_uid is not None:
            return ResourcePath(
                ResourceLevel.SERIES, self.study_instance_uid, self.series_instance_uid
            ).archive_id
        if self.series_instance_uid is not None:
            return ResourcePath(ResourceLevel.STUDY, self.study_instance_uid).archive_id
        return None

    def filters(self) -> dict[str, str]:
        """The QIDO-RS filters that match exactly this resource."""
        if self.level is ResourceLevel.PATIENT:
            return {"PatientID": self.patient_id or ""}
        values = (self.study_instance_uid, self.series_instance_uid, self.sop_instance_uid)
        return {k: v for k, v in zip(UID_KEYWORDS, values, strict=True) if v is not None}

    @classmethod
    def parse(cls, level: ResourceLevel, archive_id: str) -> ResourcePath:
        """The path ``archive_id`` of a resource at ``level``.

        Raises
        ------
        ArchiveError
            ``archive_id`` is not a DICOMweb archive's key of a resource at ``level``.
        """
        parts = archive_id.strip("/").split("/")
        expected = ("studies", "series", "instances")[: _DEPTH[level]]
        if level is ResourceLevel.PATIENT:
            expected = ("patients",)
        if len(parts) != 2 * len(expected) or tuple(parts[0::2]) != expected:
            raise ArchiveError(
                f'"{archive_id}" is not a DICOMweb archive key of a {level.name.lower()}: '
                f"expected {'/'.join(f'{name}/{{uid}}' for name in expected)}"
            )
        values = [unquote(value) for value in parts[1::2]]
        if any(not value for value in values):
            raise ArchiveError(f'"{archive_id}" has an empty identifier')
        if level is ResourceLevel.PATIENT:
            return cls(level, patient_id=values[0])
        padded = [*values, None, None][:3]
        return cls(level, padded[0], padded[1], padded[2])


def tag_of(keyword: str) -> str:
    """The tag of a DICOM keyword as DICOM JSON writes it (``"0020000D"``); a tag already in
    that form is returned as it is.

    Raises
    ------
    ArchiveError
        ``keyword`` is neither a keyword of the data dictionary nor eight hex digits.
    """
    if len(keyword) == 8 and all(c in "0123456789abcdefABCDEF" for c in keyword):
        return keyword.upper()
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ArchiveError(f'"{keyword}" is not a DICOM keyword')
    return f"{tag:08X}"


def _keyword(tag: str) -> str:
    try:
        return keyword_for_tag(int(tag, 16)) or tag
    except ValueError:
        return tag


def _text(element: Mapping[str, Any]) -> str | None:
    """One element's value as text: multiple values joined by ``\\``, a person name by its
    alphabetic group; ``None`` for bulk data and sequences."""
    values = element.get("Value")
    if not isinstance(values, list):
        return None if "BulkDataURI" in element or "InlineBinary" in element else ""
    texts = []
    for value in values:
        if isinstance(value, dict):
            if element.get("vr") != "PN":
                return None
            texts.append(str(value.get("Alphabetic", "")))
        else:
            texts.append(str(value))
    return "\\".join(texts)


def attributes(dataset: Mapping[str, Any]) -> dict[str, str]:
    """A QIDO-RS result's attributes by keyword, as text (sequences and bulk data left out)."""
    found: dict[str, str] = {}
    for tag, element in dataset.items():
        if not isinstance(element, dict) or element.get("vr") == "SQ":
            continue
        text = _text(element)
        if text is not None:
            found[_keyword(tag)] = text
    return found


def dataset_keywords(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """A WADO-RS metadata dataset by keyword: text as :func:`attributes` writes it, sequences
    as lists of such mappings (the shape of Orthanc's ``simplified-tags``)."""
    found: dict[str, Any] = {}
    for tag, element in dataset.items():
        if not isinstance(element, dict):
            continue
        if element.get("vr") == "SQ":
            items = element.get("Value") or []
            found[_keyword(tag)] = [dataset_keywords(i) for i in items if isinstance(i, dict)]
            continue
        text = _text(element)
        if text is not None:
            found[_keyword(tag)] = text
    return found


def resource_from_json(dataset: Any, level: ResourceLevel) -> ArchivedResource:
    """An :class:`ArchivedResource` from one QIDO-RS result at ``level``.

    Raises
    ------
    ArchiveError
        The result is not a DICOM JSON object, or lacks the UIDs of its level.
    """
    if not isinstance(dataset, dict):
        raise ArchiveError(f"QIDO-RS answered {dataset!r:.200}: expected a DICOM JSON object")
    found = attributes(dataset)
    if level is ResourceLevel.PATIENT:
        path = ResourcePath(level, patient_id=found.get("PatientID", ""))
    else:
        needed = UID_KEYWORDS[: _DEPTH[level]]
        uids = [found.get(keyword) or None for keyword in needed]
        if any(uid is None for uid in uids):
            missing = [k for k, uid in zip(needed, uids, strict=True) if uid is None]
            raise ArchiveError(f"a QIDO-RS {level.name.lower()} result lacks {', '.join(missing)}")
        padded = [*uids, None, None][:3]
        path = ResourcePath(level, padded[0], padded[1], padded[2])
    return ArchivedResource(
        level=level, archive_id=path.archive_id, attributes=found, parent=path.parent
    )


def query_params(
    search_filters: Mapping[str, str] | None,
    limit: int | None,
    offset: int,
    includefields: tuple[str, ...] = (),
) -> list[tuple[str, str]]:
    """QIDO-RS query parameters (PS3.18 8.3.4): filters by keyword, ``limit``, ``offset`` and
    ``includefield``; a filter on a keyword the dictionary lacks is refused here."""
    params: list[tuple[str, str]] = []
    for keyword, value in (search_filters or {}).items():
        tag_of(keyword)  # a typo fails here, not as an empty answer
        params.append((keyword, value))
    params.extend(("includefield", field) for field in includefields)
    if limit is not None:
        params.append(("limit", str(limit)))
    if offset:
        params.append(("offset", str(offset)))
    return params


def stow_outcomes(answer: Any) -> dict[str, str | None]:
    """A STOW-RS answer read: each SOP Instance UID it names to ``None`` (stored, in the
    Referenced SOP Sequence) or its failure (in the Failed SOP Sequence, with the Failure
    Reason code, PS3.18 Table I.2-1)."""
    outcome: dict[str, str | None] = {}
    if not isinstance(answer, dict):
        return outcome
    for key, failed in ((_REFERENCED, False), (_FAILED, True)):
        for item in (answer.get(key) or {}).get("Value") or []:
            if not isinstance(item, dict):
                continue
            uid = attributes(item).get("ReferencedSOPInstanceUID", "")
            reason = (item.get(_FAILURE_REASON) or {}).get("Value") or ["?"]
            outcome[uid] = f"failure reason {reason[0]}" if failed else None
    return outcome


def cut_short(headers: httpx.Headers) -> bool:
    """Whether a QIDO-RS answer says the node returned fewer matches than exist (PS3.18
    8.3.4.1: ``Warning: 299 {service}: "The number of results exceeded the maximum supported
    by the server. Additional results can be requested."``)."""
    return any(
        value.lstrip().startswith("299") and "additional results" in value.lower()
        for value in headers.get_list("warning")
    )


def count_of(resource: ArchivedResource, keyword: str) -> int:
    """An integer attribute of ``resource`` (e.g. Number of Study Related Instances), 0 if
    absent or unreadable."""
    try:
        return int(resource.get(keyword) or 0)
    except ValueError:
        return 0
