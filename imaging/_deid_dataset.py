"""The attribute walk of radcloud's research de-identifier over one pydicom Dataset: Table E.1-1
actions, private tags, keyed UIDs and pseudonyms, shifted dates, and the final leak check."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from imaging._deid_rules import (
    dummy_value,
    is_well_known_uid,
    rewrite_uri,
    shift_da,
    shift_dt,
)
from imaging._deid_table import Action, action_of
from imaging.exceptions import DeidentificationError

__all__ = ["Keys", "clean_dataset", "find_leaks"]

logger = logging.getLogger(__name__)

_PATIENT_ID = Tag(0x0010, 0x0020)
_PATIENT_NAME = Tag(0x0010, 0x0010)
_BIRTH = frozenset({Tag(0x0010, 0x0030), Tag(0x0010, 0x0032)})  # Patient's Birth Date, Time
_EMPTIED = frozenset({Action.Z, Action.Z_D, Action.X_Z, Action.X_Z_D, Action.X_Z_U})
_DUMMY = frozenset({Action.D, Action.X_D})
_UID_TOKEN = re.compile(r"[0-9]+(?:\.[0-9]+)+")
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "UI"})


@dataclass
class Keys:
    """What one de-identification call uses: the keyed values of the patient and the UIDs.

    ``originals`` collects the original UIDs that were replaced, for :func:`find_leaks`.
    """

    remap_uid: Callable[[str], str]
    patient_pseudonym: str
    shift_days: int
    uri_base: str | None
    originals: set[str] = field(default_factory=set)
    cleaned: set[int] = field(default_factory=set)

    def uid(self, uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if not uid or is_well_known_uid(uid):
            return uid
        self.originals.add(uid)
        return self.remap_uid(uid)


def _values(elem: DataElement) -> list[object]:
    if elem.value is None or elem.value == "":
        return []
    return list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]


def _set(elem: DataElement, values: list[object]) -> None:
    elem.value = values[0] if len(values) == 1 else values or None


def clean_dataset(ds: Dataset, keys: Keys) -> None:
    """Apply the profile to ``ds`` in place, sequences included (see :mod:`imaging.deid`).
    An item shared by several sequences (highdicom shares them) is cleaned once."""
    if id(ds) in keys.cleaned:
        return
    keys.cleaned.add(id(ds))
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private or tag.element == 0 or elem.VR == "UN":
            # private tags (Basic Profile), group lengths, attributes we cannot read: removed
            del ds[tag]
        elif tag in (_PATIENT_ID, _PATIENT_NAME):
            elem.value = keys.patient_pseudonym
        elif action_of(tag) is Action.X and not _is_modified_date(elem):
            del ds[tag]
        else:
            _clean_element(ds, elem, keys)


def _clean_element(ds: Dataset, elem: DataElement, keys: Keys) -> None:
    action = action_of(elem.tag)
    if elem.VR == "SQ":
        _clean_sequence(elem, action, keys)
    elif elem.VR == "UI":
        _set(elem, [keys.uid(str(v)) for v in _values(elem)])
    elif elem.VR == "UR":
        uri = rewrite_uri(str(elem.value or ""), keys.uri_base, keys.uid)
        if uri is None:
            del ds[elem.tag]
        else:
            elem.value = uri
    elif _is_modified_date(elem):
        if elem.VR != "TM":  # whole-day shifts leave the time of day as it was
            _shift(elem, keys.shift_days)
    elif action in _EMPTIED or action is Action.U:
        elem.value = None
    elif action in _DUMMY:
        elem.value = dummy_value(elem.VR)


def _is_modified_date(elem: DataElement) -> bool:
    """Whether the option's action C (modified dates) replaces the Basic Profile's action:
    every DA, DT and TM attribute but Patient's Birth Date and Time (PS3.15 E.3.6)."""
    return elem.VR in ("DA", "DT", "TM") and elem.tag not in _BIRTH


def _clean_sequence(elem: DataElement, action: Action | None, keys: Keys) -> None:
    if action in _EMPTIED and action is not Action.X_Z_U:
        elem.value = DicomSequence([])
        return
    # D, X/D (a dummy content: the items, cleaned), X/Z/U* (U: the references, remapped),
    # and sequences the table does not name (ReferencedSeriesSequence, ...): walked.
    for item in elem.value:
        clean_dataset(item, keys)


def _shift(elem: DataElement, days: int) -> None:
    shift = shift_da if elem.VR == "DA" else shift_dt
    try:
        _set(elem, [shift(str(v), days) for v in _values(elem)])
    except ValueError as exc:
        logger.warning("%s: %s; emptied, since it cannot be shifted", elem.keyword, exc)
        elem.value = None


def _strings(ds: Dataset, path: str = "") -> Iterator[tuple[str, str]]:
    for elem in ds:
        where = f"{path}{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value):
                yield from _strings(item, f"{where}[{n}].")
        elif elem.VR in _TEXT_VRS:
            for value in _values(elem):
                yield where, str(value)


def find_leaks(ds: Dataset, keys: Keys, identifiers: set[str]) -> None:
    """Refuse a result where an original UID appears inside any text value, or a value equals
    an original identifier (``identifiers``: e.g. the original PatientID).

    Raises
    ------
    DeidentificationError
        Naming the attribute that leaks (not the value).
    """
    identifiers = {i for i in identifiers if len(i) >= 3}
    meta = getattr(ds, "file_meta", None)
    datasets = [ds, meta] if meta is not None else [ds]
    for where, text in (pair for d in datasets for pair in _strings(d)):
        if any(token in keys.originals for token in _UID_TOKEN.findall(text)):
            raise DeidentificationError(f"{where} still holds an original UID after cleaning")
        if text.strip() in identifiers:
            raise DeidentificationError(f"{where} still holds an original identifier")
