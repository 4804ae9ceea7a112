"""PS3.15 Table E.1-1 (Basic Application Confidentiality Profile) as data: the action of every
attribute the profile names.

The table is not written by hand here: it is the ``dicom-anonymizer`` package's (Kitware's
``dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c``, generated from the
standard's own HTML table of the PS3.15 2026c edition), read at import time from the installed
package, never downloaded. That table lists the tags per Basic Profile action (``D_TAGS``,
``Z_TAGS``, ... ``X_Z_U_STAR_TAGS``), the rows of repeating groups as (group, element,
group mask, element mask): Curve Data (50xx,xxxx) X, Overlay Data (60xx,3000) X, Overlay
Comments (60xx,4000) X.
"""

from __future__ import annotations

import importlib
from enum import StrEnum
from types import ModuleType

from pydicom.tag import BaseTag

__all__ = ["PROFILE_EDITION", "Action", "action_of"]

PROFILE_EDITION = "2026c"
"""The edition of PS3.15 whose Table E.1-1 is applied."""
_TABLE_MODULE = "dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c"


class Action(StrEnum):
    """The Basic Profile actions of PS3.15 Table E.1-1 (E.3.1 defines them)."""

    D = "D"  # replace with a non-zero length dummy value consistent with the VR
    Z = "Z"  # replace with a zero length value (or a dummy)
    X = "X"  # remove
    U = "U"  # replace with a non-zero length UID, consistent within the set of instances
    Z_D = "Z/D"  # Z unless D is required to keep the IOD valid (Type 1)
    X_Z = "X/Z"  # X unless Z is required (Type 2)
    X_D = "X/D"  # X unless D is required (Type 1)
    X_Z_D = "X/Z/D"  # X unless Z or D is required
    X_Z_U = "X/Z/U*"  # X unless Z or D is required, or U for the UIDs inside a sequence


_CATEGORIES = {
    "D_TAGS": Action.D,
    "Z_TAGS": Action.Z,
    "X_TAGS": Action.X,
    "U_TAGS": Action.U,
    "Z_D_TAGS": Action.Z_D,
    "X_Z_TAGS": Action.X_Z,
    "X_D_TAGS": Action.X_D,
    "X_Z_D_TAGS": Action.X_Z_D,
    "X_Z_U_STAR_TAGS": Action.X_Z_U,
}


_Masked = tuple[int, int, Action]  # (tag mask, masked tag, action): a repeating group's row


def _load_table() -> tuple[dict[int, Action], list[_Masked]]:
    module: ModuleType = importlib.import_module(_TABLE_MODULE)
    table: dict[int, Action] = {}
    masked: list[_Masked] = []
    for name, action in _CATEGORIES.items():
        for row in getattr(module, name):
            if len(row) == 2:
                table[(row[0] << 16) | row[1]] = action
            else:
                group, element, group_mask, element_mask = row
                mask = (group_mask << 16) | element_mask
                masked.append((mask, ((group << 16) | element) & mask, action))
    return table, masked


TABLE, _MASKED = _load_table()
"""Tag (as an int) to its Basic Profile action, for the rows with a fixed tag."""


def action_of(tag: BaseTag | int) -> Action | None:
    """The Basic Profile action for ``tag``, ``None`` when the table does not name it (kept).

    Parameters
    ----------
    tag
        The attribute's tag; private tags are not the table's business (they are removed).
    """
    tag = int(tag)
    action = TABLE.get(tag)
    if action is not None:
        return action
    for mask, masked_tag, masked_action in _MASKED:
        if tag & mask == masked_tag:
            return masked_action
    return None
