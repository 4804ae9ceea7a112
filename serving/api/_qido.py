"""QIDO-RS searches across studies, answered within the caller's hospitals.

``GET /dicom-web/studies``, ``/series`` and ``/instances`` (PS3.18 10.6) name no study in their
path, so the caller's scope cannot be checked before Orthanc is asked. For a caller who is not
a platform operator the search goes to Orthanc without its ``limit`` and ``offset`` and with
StudyInstanceUID as an included field (PS3.18 10.6.1.2.2); every match of a study outside the
caller's hospitals is dropped, and only then is the page taken, so a page is full and its
matches are all the caller's (no count shrinks or grows with another hospital's studies).
Orthanc is still asked with a ``limit``: one more than ``RADCLOUD_ARCHIVE_MAX_FIND_RESULTS``;
a search that matches more is refused as too broad (:class:`SearchTooBroadError`), never
answered from a silently cut list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import QueryParams

__all__ = [
    "STUDY_UID_TAG",
    "Page",
    "SearchTooBroadError",
    "check_breadth",
    "match_study_uid",
    "page",
    "upstream_query",
]

STUDY_UID_TAG = "0020000D"
_PAGING = ("limit", "offset")


class SearchTooBroadError(ValueError):
    """Orthanc matched more than ``limit`` resources for a scoped search."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"the search matches more than {limit} resources across the archive "
            "(RADCLOUD_ARCHIVE_MAX_FIND_RESULTS): narrow it, e.g. by StudyDate or PatientID"
        )


class Page:
    """``limit`` (``None``: all) and ``offset`` of a QIDO-RS request (PS3.18 8.3.4.4)."""

    def __init__(self, limit: int | None, offset: int) -> None:
        self.limit, self.offset = limit, offset


def upstream_query(params: QueryParams, max_results: int) -> tuple[list[tuple[str, str]], Page]:
    """The query for Orthanc (the caller's filters, StudyInstanceUID included, a ``limit`` of
    ``max_results + 1`` so that a broader search shows) and the caller's page.

    Raises
    ------
    ValueError
        ``limit`` or ``offset`` is not a non-negative integer.
    """
    values: dict[str, int | None] = {}
    for name in _PAGING:
        given = params.get(name)
        if given is None or given == "":
            values[name] = None
            continue
        if not given.isdigit():
            raise ValueError(f'{name} "{given[:20]}" is not a non-negative integer')
        values[name] = int(given)
    kept = [(key, value) for key, value in params.multi_items() if key.lower() not in _PAGING]
    kept.append(("includefield", STUDY_UID_TAG))
    kept.append(("limit", str(max_results + 1)))
    return kept, Page(values["limit"], values["offset"] or 0)


def match_study_uid(match: Mapping[str, Any]) -> str | None:
    """The StudyInstanceUID of one DICOM JSON match (PS3.18 F.2), if it has one."""
    element = match.get(STUDY_UID_TAG)
    if not isinstance(element, Mapping):
        return None
    value = element.get("Value")
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


def page(body: bytes, visible: set[str] | None, window: Page) -> tuple[bytes, list[str]]:
    """The matches of ``body`` (a DICOM JSON array) whose study is in ``visible``, paged; and
    the study UIDs they hold. ``visible`` ``None``: the UIDs are only collected.

    Raises
    ------
    ValueError
        ``body`` is not a JSON array of objects.
    """
    matches = json.loads(body) if body.strip() else []
    if not isinstance(matches, list) or not all(isinstance(m, dict) for m in matches):
        raise ValueError("the image store's QIDO-RS answer is not a DICOM JSON array")
    if visible is not None:
        matches = [m for m in matches if match_study_uid(m) in visible]
    end = None if window.limit is None else window.offset + window.limit
    matches = matches[window.offset : end]
    uids = [uid for uid in (match_study_uid(m) for m in matches) if uid]
    return json.dumps(matches, separators=(",", ":")).encode(), uids


def check_breadth(body: bytes, max_results: int) -> None:
    """Raise :class:`SearchTooBroadError` when Orthanc's answer holds more than
    ``max_results`` matches (it was asked for one more)."""
    matches = json.loads(body) if body.strip() else []
    if isinstance(matches, list) and len(matches) > max_results:
        raise SearchTooBroadError(max_results)


def study_uids(body: bytes) -> list[str]:
    """Every StudyInstanceUID of a DICOM JSON array of matches (to look their owners up)."""
    _, uids = page(body, None, Page(None, 0))
    return uids
