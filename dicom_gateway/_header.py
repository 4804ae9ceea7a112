"""A DICOM Part 10 header read without pydicom, for the common case (private to
:mod:`dicom_gateway.validation`).

:func:`read_header` walks the file meta and the data set's top-level elements of an
explicit or implicit VR little endian file (every transfer syntax but deflate and big endian:
the encapsulated ones encode their data sets in explicit VR little endian, PS3.5 A.4), skipping
values by their lengths, and decodes only the few values the gateway needs, in about a tenth of
pydicom's time (about 0.03 ms for a CT slice, against 0.25 ms for ``dcmread`` with deferred
values). It answers only for files it fully understands: anything else (another transfer
syntax, a VR it does not know, a needed value of another VR than its own, not plain ASCII, or
with several values,
an Other Patient IDs Sequence, lengths that run past the file) gives ``None``, and the caller
reads the file with pydicom, which decides.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["Header", "read_header"]

_PREAMBLE = 128
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_READ = frozenset(("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"))  # deflate, big endian
_META = {0x00020002: "MediaStorageSOPClassUID", 0x00020003: "MediaStorageSOPInstanceUID"}
_TEXT = {  # tag: (keyword, its VR)
    0x00080016: ("SOPClassUID", b"UI"),
    0x00080018: ("SOPInstanceUID", b"UI"),
    0x00080020: ("StudyDate", b"DA"),
    0x00080050: ("AccessionNumber", b"SH"),
    0x00080060: ("Modality", b"CS"),
    0x00081030: ("StudyDescription", b"LO"),
    0x00100010: ("PatientName", b"PN"),
    0x00100020: ("PatientID", b"LO"),
    0x00100021: ("IssuerOfPatientID", b"LO"),
    0x00100030: ("PatientBirthDate", b"DA"),
    0x00180015: ("BodyPartExamined", b"CS"),
    0x0020000D: ("StudyInstanceUID", b"UI"),
    0x0020000E: ("SeriesInstanceUID", b"UI"),
    0x00280004: ("PhotometricInterpretation", b"CS"),
    0x00280008: ("NumberOfFrames", b"IS"),
}
_US = {  # VR US
    0x00280002: "SamplesPerPixel",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
}
_OTHER_PATIENT_IDS = 0x00101002
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class _Unread(Exception):  # noqa: N818 - control flow inside this module, never raised out
    """The file is not one :func:`read_header` reads."""


@dataclass
class Header:
    """What :func:`read_header` read.

    Attributes
    ----------
    transfer_syntax_uid
        The file meta's Transfer Syntax UID.
    values
        Values by keyword (text stripped of padding, ``None`` when empty; US as ``int``).
    pixel_data_length
        The declared length of top-level Pixel Data, ``None`` when absent or undefined
        (encapsulated).
    """

    transfer_syntax_uid: str
    values: dict[str, str | int | None] = field(default_factory=dict)
    pixel_data_length: int | None = None


def _text(data: bytes, start: int, length: int) -> str | None:
    raw = data[start : start + length]
    if not raw.isascii() or b"\\" in raw:
        raise _Unread
    return raw.decode("ascii").strip(" \0") or None


class _Walker:
    """Top-level elements of ``data`` from ``position`` (explicit or implicit VR LE)."""

    def __init__(self, data: bytes, explicit: bool) -> None:
        self.data = data
        self.explicit = explicit

    def element(self, position: int) -> tuple[int, bytes | None, int, int]:
        """``(tag, vr, length, value position)`` of the element at ``position``."""
        data = self.data
        if position + 8 > len(data):
            raise _Unread
        group, number = _TAG.unpack_from(data, position)
        tag = group << 16 | number
        if group == 0xFFFE or not self.explicit:
            return tag, None, _U32.unpack_from(data, position + 4)[0], position + 8
        vr = data[position + 4 : position + 6]
        if vr in _SHORT_VRS:
            return tag, vr, _U16.unpack_from(data, position + 6)[0], position + 8
        if vr not in _LONG_VRS or position + 12 > len(data):
            raise _Unread
        return tag, vr, _U32.unpack_from(data, position + 8)[0], position + 12

    def skip_undefined(self, position: int, vr: bytes | None) -> int:
        """The position after an element of undefined length whose value starts at
        ``position``: a sequence's items, or encapsulated pixel data's fragments."""
        nested = _Walker(self.data, self.explicit and vr != b"UN")
        while True:
            tag, _, length, start = nested.element(position)
            if tag == _SEQUENCE_END:
                return start
            if tag != _ITEM:
                raise _Unread
            if length != _UNDEFINED:
                position = start + length
                continue
            position = start  # an item of undefined length: its elements, then its end
            while True:
                tag, inner_vr, length, start = nested.element(position)
                if tag == _ITEM_END:
                    position = start
                    break
                position = (
                    nested.skip_undefined(start, inner_vr)
                    if length == _UNDEFINED
                    else start + length
                )


def _meta(data: bytes) -> tuple[dict[str, str | int | None], int]:
    """The file meta's values and the position after it (group 0002, explicit VR LE)."""
    values: dict[str, str | int | None] = {}
    walker = _Walker(data, explicit=True)
    position = _PREAMBLE + 4
    while position + 8 <= len(data) and _U16.unpack_from(data, position)[0] == 0x0002:
        tag, _, length, start = walker.element(position)
        if length == _UNDEFINED or start + length > len(data):
            raise _Unread
        if tag == 0x00020010:
            values["TransferSyntaxUID"] = _text(data, start, length)
        elif tag in _META:
            values[_META[tag]] = _text(data, start, length)
        position = start + length
    return values, position


def read_header(data: bytes) -> Header | None:
    """The transfer syntax, the needed values and the Pixel Data length of a Part 10 file, or
    ``None`` when it is not one this module reads (see the module docstring). The caller has
    checked the ``DICM`` prefix."""
    try:
        return _read(data)
    except (_Unread, struct.error):
        return None


def _read(data: bytes) -> Header:
    """:func:`read_header`; raises :class:`_Unread` for a file it does not read."""
    meta, position = _meta(data)
    syntax = meta.pop("TransferSyntaxUID", None)
    if not isinstance(syntax, str) or syntax in _NOT_READ:
        raise _Unread
    header = Header(syntax, meta)
    walker = _Walker(data, explicit=syntax != _IMPLICIT_LE)
    while position < len(data):
        tag, vr, length, start = walker.element(position)
        if tag == _OTHER_PATIENT_IDS or tag >> 16 == 0xFFFE:
            raise _Unread
        if length == _UNDEFINED:
            position = walker.skip_undefined(start, vr)
            continue
        if start + length > len(data):
            raise _Unread  # cut off: pydicom's reading says how
        if tag in _TEXT:
            keyword, expected = _TEXT[tag]
            if vr not in (None, expected):
                raise _Unread  # pydicom decodes by the VR given
            header.values[keyword] = _text(data, start, length)
        elif tag in _US:
            if length != 2 or vr not in (None, b"US"):
                raise _Unread
            header.values[_US[tag]] = _U16.unpack_from(data, start)[0]
        elif tag == _PIXEL_DATA:
            header.pixel_data_length = length
        position = start + length
    return header
