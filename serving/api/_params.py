"""Path parameters that name a DICOM resource by its UID, shared by every route.

A UID in a path must be safe to use (:func:`core.uids.is_safe_uid`: digits and dots, no empty
component, at most 64 characters) before anything is looked up by it, in the database or in
the image archive: ``../x``, ``1.2.*`` or a 65-character value never reaches a query. A path
parameter that does not fit answers 400 (:func:`serving.api.errors.install_error_handlers`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from core.uids import SAFE_UID_PATTERN, UID_MAX_LENGTH

__all__ = ["SeriesUID", "SopUID", "StudyUID"]

StudyUID = Annotated[
    str,
    Path(pattern=SAFE_UID_PATTERN, max_length=UID_MAX_LENGTH, description="Study Instance UID"),
]
SeriesUID = Annotated[
    str,
    Path(pattern=SAFE_UID_PATTERN, max_length=UID_MAX_LENGTH, description="Series Instance UID"),
]
SopUID = Annotated[
    str,
    Path(pattern=SAFE_UID_PATTERN, max_length=UID_MAX_LENGTH, description="SOP Instance UID"),
]
FrameList = Annotated[
    str, Path(pattern=r"^[0-9]{1,9}(,[0-9]{1,9}){0,1023}$", description="Frame numbers, e.g. 1,3")
]
BulkPath = Annotated[
    str, Path(pattern=r"^[0-9A-Fa-f]{1,8}(/[0-9A-Fa-f]{1,8}){0,31}$", description="Bulk data path")
]
