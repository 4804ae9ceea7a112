"""Value rules of radcloud's research de-identifier: which UIDs are well known, which instances
may carry burned-in annotation, how dates shift, what a dummy value is, how URIs are rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta
from urllib.parse import urlsplit

from pydicom.uid import UID

__all__ = [
    "burned_in_annotation_reason",
    "dummy_value",
    "is_well_known_uid",
    "rewrite_uri",
    "shift_da",
    "shift_dt",
]

_DICOM_ROOT = "1.2.840.10008."
_CODING_SCHEMES = frozenset(
    {
        "2.16.840.1.113883.6.96",  # SNOMED CT
        "2.16.840.1.113883.6.1",  # LOINC
        "2.16.840.1.113883.6.8",  # UCUM
        "2.16.840.1.113883.6.256",  # RadLex
        "2.16.840.1.113883.6.103",  # ICD-9-CM
        "2.16.840.1.113883.6.90",  # ICD-10-CM
    }
)
_UID_SEGMENT = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_NUMBERS_OR_TAG = re.compile(r"^([0-9]+(,[0-9]+)*|[0-9A-Fa-f]{8})$")  # frame lists, tags
# the path words of DICOMweb resources (PS3.18 10.4); "bulk" is Orthanc's bulk data path
_DICOMWEB_WORDS = frozenset(
    {
        "studies",
        "series",
        "instances",
        "frames",
        "metadata",
        "rendered",
        "thumbnail",
        "bulkdata",
        "bulk",
    }
)


def is_well_known_uid(uid: str) -> bool:
    """Whether ``uid`` names a thing, not an instance: a SOP class, transfer syntax, coding
    scheme, well-known frame of reference (pydicom's PS3.6 Annex A registry, anything under the
    DICOM root ``1.2.840.10008``, and the HL7 OIDs of common coding schemes)."""
    uid = uid.strip().rstrip("\x00")
    return uid.startswith(_DICOM_ROOT) or uid in _CODING_SCHEMES or UID(uid).name != uid


# Modalities whose images are known to carry identifying text in the pixels (PS3.15 E.3.1
# Clean Pixel Data: ultrasound, secondary capture, photographs, scanned documents, video).
BURNED_IN_MODALITIES = frozenset({"US", "IVUS", "OT", "SC", "XC", "ES", "GM", "DOC", "SM", "OP"})
_BURNED_IN_CLASS_WORDS = (
    "Secondary Capture",
    "Ultrasound",
    "Encapsulated",
    "Video",
    "Photographic",
    "Endoscopic",
    "Microscopic",
    "Ophthalmic Photography",
    "Scanned",
)


def burned_in_annotation_reason(
    burned_in_annotation: str | None, modality: str | None, sop_class_uid: str | None
) -> str | None:
    """Why an instance must be withheld for burned-in annotation, ``None`` when it may go.

    An instance declaring Burned In Annotation (0028,0301) YES is withheld; one that declares
    NO is trusted; one that declares nothing is withheld when its modality or SOP class is of a
    kind known to carry text in its pixels (ultrasound, secondary capture, "OT", photographs,
    encapsulated documents, video: PS3.15 E.3.1), since the Clean Pixel Data option is not
    applied.
    """
    flag = (burned_in_annotation or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    if flag == "NO":
        return None
    if modality and modality.strip().upper() in BURNED_IN_MODALITIES:
        return f'Modality "{modality}" is known to carry burned-in annotation'
    if sop_class_uid:
        name = UID(sop_class_uid.strip()).name
        if any(word in name for word in _BURNED_IN_CLASS_WORDS):
            return f'SOP class "{name}" is known to carry burned-in annotation'
    return None


def _shift_date_text(text: str, days: int) -> str:
    """``YYYYMMDD`` (or a prefix YYYY, YYYYMM, kept at that precision) shifted by ``days``."""
    if len(text) == 8:
        return (date(int(text[:4]), int(text[4:6]), int(text[6:8])) + timedelta(days)).strftime(
            "%Y%m%d"
        )
    if len(text) in (4, 6):
        month = int(text[4:6]) if len(text) == 6 else 7
        day = date(int(text[:4]), month, 15) + timedelta(days)
        return day.strftime("%Y%m")[: len(text)]
    raise ValueError(f'"{text}" is not a DICOM date: expected YYYYMMDD')


def shift_da(value: str, days: int) -> str:
    """A DA value (or a DA range ``A-B``) shifted by ``days`` (PS3.5 6.2 DA)."""
    return "-".join(_shift_date_text(part, days) if part else "" for part in value.split("-"))


def shift_dt(value: str, days: int) -> str:
    """A DT value shifted by ``days``: its date part moves, time and offset stay."""
    text = value.strip()
    if "-" in text[1:] and not re.search(r"[+-]\d{4}$", text):
        raise ValueError(f'"{value}" is a DT range: expected one date-time')
    head = text[:8] if len(text) >= 8 else text[:4] if len(text) < 6 else text[:6]
    return _shift_date_text(head, days) + text[len(head) :]


_DUMMY_TEXT = {
    "PN": "ANONYMOUS",
    "CS": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "DS": "0",
    "IS": "0",
    "AS": "000Y",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
}


def dummy_value(vr: str) -> object:
    """A non-zero length dummy value consistent with ``vr`` (action D of Table E.1-1)."""
    if vr in _DUMMY_TEXT:
        return _DUMMY_TEXT[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "AT"):
        return 0
    if vr in ("FL", "FD"):
        return 0.0
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x00\x00"
    return ""


def rewrite_uri(uri: str, uri_base: str | None, remap_uid: Callable[[str], str]) -> str | None:
    """A DICOMweb URI (RetrieveURL, a BulkDataURI) pointing at ``uri_base`` instead, with every
    UID path segment remapped; ``None`` (drop it) without a base or for a URI that is not a
    DICOMweb ``.../studies/...`` resource, since any part of it may identify.

    Parameters
    ----------
    uri
        The original URI.
    uri_base
        The DICOMweb base URL that serves the de-identified data (e.g. radcloud's research
        WADO-RS), or ``None``.
    remap_uid
        ``str -> str``: the keyed UID of an original UID.
    """
    if not uri_base:
        return None
    path = urlsplit(uri.strip()).path.split("/")
    if "studies" not in path:
        return None
    tail = path[path.index("studies") :]
    segments = []
    for part in tail:
        if _UID_SEGMENT.match(part):
            segments.append(remap_uid(part))
        elif part in _DICOMWEB_WORDS or _NUMBERS_OR_TAG.match(part):
            segments.append(part)
        else:
            return None  # a segment we cannot vouch for (an archive's own ID, a name)
    return uri_base.rstrip("/") + "/" + "/".join(segments)
