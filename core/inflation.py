"""Bounded inflation: deflate and gzip bombs are refused after at most their budget.

A few kilobytes of deflate can inflate to gigabytes (a ratio of about 1000:1 for zeros), and
both of radcloud's compressed inputs come from strangers: DICOM in the Deflated Explicit VR Little
Endian transfer syntax (PS3.5 A.5, over DIMSE and STOW-RS) and gzip NIfTI uploads to ad hoc
inference. pydicom inflates a deflated data set with one unbounded ``zlib.decompress``, so every
reader of such data asks here first: :func:`check_part10_inflation` counts the inflated size in
1 MiB steps (``zlib.decompressobj`` with ``max_length``), keeping nothing, and raises
:class:`InflationLimitError` as soon as the budget is crossed; :func:`inflate` does the same and
keeps the bytes. Memory stays at the budget whatever was sent.
"""

from __future__ import annotations

import struct
import zlib

from core.exceptions import RadcloudError

__all__ = [
    "DEFLATED_TRANSFER_SYNTAX",
    "GZIP_WBITS",
    "RAW_DEFLATE_WBITS",
    "CorruptCompressedDataError",
    "InflationLimitError",
    "check_part10_inflation",
    "deflated_dataset_offset",
    "inflate",
]

#: Deflated Explicit VR Little Endian (PS3.5 A.5): the data set after the file meta is deflated.
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
RAW_DEFLATE_WBITS = -zlib.MAX_WBITS  # RFC 1951, as PS3.5 A.5 uses it
GZIP_WBITS = 16 + zlib.MAX_WBITS  # RFC 1952

_STEP = 1 << 20
_PREAMBLE = 128
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


class InflationLimitError(RadcloudError):
    """Compressed data inflates beyond ``limit_bytes`` (what is named by ``what``)."""

    def __init__(self, what: str, limit_bytes: int) -> None:
        self.what, self.limit_bytes = what, limit_bytes
        super().__init__(f"{what} inflates beyond the limit of {limit_bytes} bytes")


class CorruptCompressedDataError(RadcloudError):
    """Compressed data that cannot be inflated (``reason`` from zlib)."""

    def __init__(self, what: str, reason: str) -> None:
        self.what, self.reason = what, reason
        super().__init__(f"{what} cannot be inflated: {reason}")


def _inflate(
    data: bytes | memoryview, *, limit: int, wbits: int, what: str, keep: bool
) -> tuple[int, bytes]:
    chunks: list[bytes] = []
    total = 0
    pending = memoryview(data)
    inflater = zlib.decompressobj(wbits)
    try:
        while True:
            if inflater.unconsumed_tail:
                source: bytes | memoryview = inflater.unconsumed_tail
            else:
                source, pending = pending[:_STEP], pending[_STEP:]
            out = inflater.decompress(source, _STEP)
            total += len(out)
            if total > limit:
                raise InflationLimitError(what, limit)
            if keep:
                chunks.append(out)
            if inflater.eof:
                rest = inflater.unused_data
                if wbits != GZIP_WBITS or not rest.strip(b"\0"):
                    break  # trailing bytes of a deflated data set are ignored, as pydicom does
                inflater = zlib.decompressobj(wbits)  # the next gzip member (RFC 1952 2.2)
                pending = memoryview(rest + bytes(pending))
                continue
            if not out and not source and not inflater.unconsumed_tail:
                break  # input used up and nothing more inflates
    except zlib.error as exc:
        raise CorruptCompressedDataError(what, str(exc)) from exc
    return total, b"".join(chunks)


def inflate(data: bytes, *, limit: int, wbits: int = GZIP_WBITS, what: str = "data") -> bytes:
    """``data`` inflated, refused as soon as it passes ``limit`` bytes.

    Parameters
    ----------
    data
        The compressed bytes (gzip by default; ``wbits`` as :func:`zlib.decompressobj`).
    limit
        The most inflated bytes accepted.
    what
        Names the data in errors.

    Raises
    ------
    InflationLimitError
        The inflated data would exceed ``limit``.
    CorruptCompressedDataError
        ``data`` is not valid compressed data.
    """
    return _inflate(data, limit=limit, wbits=wbits, what=what, keep=True)[1]


def deflated_dataset_offset(data: bytes) -> int | None:
    """Where the deflated data set of a DICOM Part 10 file starts; ``None`` when ``data`` is not
    a Part 10 file in the Deflated Explicit VR Little Endian transfer syntax.

    The file meta group (PS3.10 7.1) is Explicit VR Little Endian and read here element by
    element, without pydicom, which would inflate the rest.
    """
    if data[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return None
    position, transfer_syntax = _PREAMBLE + 4, None
    while position + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            break
        vr = data[position + 4 : position + 6]
        if vr in _LONG_VRS:
            if position + 12 > len(data):
                return None
            (length,) = struct.unpack_from("<I", data, position + 8)
            start = position + 12
        else:
            (length,) = struct.unpack_from("<H", data, position + 6)
            start = position + 8
        if element == 0x0010:
            transfer_syntax = data[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        position = start + length
    return position if transfer_syntax == DEFLATED_TRANSFER_SYNTAX else None


def check_part10_inflation(data: bytes, limit: int) -> int:
    """Refuse a deflated DICOM Part 10 file whose data set inflates beyond ``limit`` bytes (the
    file meta counted); files in other transfer syntaxes pass unread.

    Returns
    -------
    int
        The file's size once inflated (``len(data)`` when it is not deflated).

    Raises
    ------
    InflationLimitError
        The file, inflated, would exceed ``limit``.
    CorruptCompressedDataError
        The deflated data set is not valid deflate data.
    """
    offset = deflated_dataset_offset(data)
    if offset is None:
        return len(data)
    what = "the deflated data set (transfer syntax 1.2.840.10008.1.2.1.99)"
    try:
        inflated, _ = _inflate(
            memoryview(data)[offset:],
            limit=max(0, limit - offset),
            wbits=RAW_DEFLATE_WBITS,
            what=what,
            keep=False,
        )
    except InflationLimitError:
        raise InflationLimitError(what, limit) from None
    return offset + inflated
