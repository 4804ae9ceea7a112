"""Parse and check every incoming instance before it is acknowledged.

Lenient on what arrives, strict on what we store: values that are odd but storable (a value
longer than its VR allows, a UID component with a leading zero such as ``1.2.03``) are stored
and the oddity is logged; data that cannot be stored (not DICOM, no transfer syntax, no
Study/Series/SOP Instance UID, truncated elements or pixel data) raises
:class:`InstanceRejectedError` and is quarantined.

The Study, Series and SOP Instance UIDs become keys of the database, values of archive queries
and parts of URLs downstream, so they must be safe (:func:`core.uids.is_safe_uid`: digits and
dots, no empty component, at most 64 characters): an instance whose UID is not (``../../x``,
``1.2.abc``, 65 characters, ``*``) is refused as non-conformant and quarantined with the reason.
Only a leading zero in a component stays a warning: it breaks PS3.5 9.1 but nothing downstream.

The 128-byte preamble of every stored file is zeroed: a DICOM file can carry an executable
header there (the DICOM/PE polyglot, CVE-2019-11687). Nothing else in the bytes is changed.

Leniency needs pydicom's reading validation mode at ``WARN`` (its default). Importing this
module changes no global state: the gateway process sets the mode where it starts
(:func:`lenient_reading`, called by ``python -m dicom_gateway``).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from core.uids import InvalidUidError, check_uid, is_valid_uid
from dicom_gateway._header import read_header
from dicom_gateway.exceptions import NonConformantInstanceError, UnreadableInstanceError

__all__ = [
    "PREAMBLE_LENGTH",
    "InstanceInfo",
    "check_pixel_length",
    "check_required_uids",
    "expected_pixel_bytes",
    "inspect_header",
    "inspect_instance",
    "lenient_reading",
    "uid_oddities",
    "zero_preamble",
]

logger = logging.getLogger(__name__)

PREAMBLE_LENGTH = 128
_MAGIC = b"DICM"
_REQUIRED_UIDS = (
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
    ("SOPInstanceUID", "(0008,0018)"),
)


def lenient_reading() -> None:
    """Set pydicom's reading validation mode to ``WARN`` for this process: odd but storable
    values are logged, not refused. Called once where the gateway process starts.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.WARN


@dataclass(frozen=True)
class InstanceInfo:
    """What the gateway needs to know of an instance (tracking, routing, audit)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    issuer_of_patient_id: str | None = None
    patient_birth_date: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    body_part_examined: str | None = None
    warnings: tuple[str, ...] = field(default=())
    # (PatientID, IssuerOfPatientID) of each item of OtherPatientIDsSequence (0010,1002):
    # recorded in the patient identity cross-reference (core.identity) as the study is claimed
    other_patient_ids: tuple[tuple[str, str | None], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the spool header)."""
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        data["other_patient_ids"] = [list(pair) for pair in self.other_patient_ids]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceInfo:
        """Inverse of :meth:`to_json` (a spool header written before a field existed lacks it)."""
        others = tuple((str(p), i) for p, i in data.get("other_patient_ids", ()))
        return cls(
            **{**data, "warnings": tuple(data.get("warnings", ())), "other_patient_ids": others}
        )


def zero_preamble(data: bytes) -> bytes:
    """``data`` with its 128-byte preamble set to zeros (CVE-2019-11687)."""
    if data[:PREAMBLE_LENGTH] == bytes(PREAMBLE_LENGTH):
        return data
    return bytes(PREAMBLE_LENGTH) + data[PREAMBLE_LENGTH:]


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _other_patient_ids(ds: Dataset) -> tuple[tuple[str, str | None], ...]:
    """(PatientID, IssuerOfPatientID) of each item of OtherPatientIDsSequence with an ID."""
    found: list[tuple[str, str | None]] = []
    for item in ds.get("OtherPatientIDsSequence") or ():
        patient_id = _text(item, "PatientID")
        if patient_id and len(patient_id) <= 64:
            found.append((patient_id, _text(item, "IssuerOfPatientID")))
    return tuple(dict.fromkeys(found))


def expected_pixel_bytes(
    rows: int, columns: int, *, samples: int, bits: int, frames: int, photometric: str
) -> int:
    """Bytes of native (uncompressed) Pixel Data these image attributes need (PS3.5 8.1.1)."""
    if samples == 3 and photometric == "YBR_FULL_422":
        samples = 2  # PS3.5 8.2.1: two chroma samples shared by each pair of pixels
    return (rows * columns * samples * frames * bits + 7) // 8


def _check_pixel_data(ds: Dataset, transfer_syntax: UID, oddities: list[str]) -> None:
    if "PixelData" not in ds or transfer_syntax.is_compressed:
        return
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        oddities.append(f"pixel data present but image attributes are missing or invalid ({exc})")
        return
    photometric = str(ds.get("PhotometricInterpretation", ""))
    expected = expected_pixel_bytes(
        rows, columns, samples=samples, bits=bits, frames=frames, photometric=photometric
    )
    actual = len(ds.PixelData)
    if actual < expected:
        raise NonConformantInstanceError(
            f"pixel data has {actual} bytes, expected {expected} "
            f"({rows}x{columns}, {samples} samples, {bits} bits, {frames} frames)"
        )


_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFERRED_BYTES = 1024  # inspect_header locates longer values without reading them
_INFO_KEYWORDS = {  # InstanceInfo's field: the DICOM keyword it holds
    "modality": "Modality",
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_birth_date": "PatientBirthDate",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "study_description": "StudyDescription",
    "body_part_examined": "BodyPartExamined",
}


def _check_truncation(ds: Dataset) -> None:
    """pydicom reads a cut-off value without complaint; compare with the declared lengths."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if length in (None, _UNDEFINED_LENGTH) or not isinstance(value, bytes | bytearray):
            continue
        if len(value) < length:
            raise UnreadableInstanceError(
                f"file is truncated: element {tag} declares {length} bytes but only "
                f"{len(value)} arrived"
            )


def check_required_uids(values: Mapping[str, str | None]) -> None:
    """The Study, Series and SOP Instance UIDs are present and safe to use (the module
    docstring).

    Parameters
    ----------
    values
        The instance's values by keyword (``StudyInstanceUID``, ...), ``None`` when absent.

    Raises
    ------
    NonConformantInstanceError
        One is missing, empty or not safe (:func:`core.uids.check_uid`).
    """
    for keyword, tag in _REQUIRED_UIDS:
        value = values.get(keyword)
        if not value:
            raise NonConformantInstanceError(f"required {tag} {keyword} is missing or empty")
        try:
            check_uid(value, keyword)
        except InvalidUidError as exc:
            raise NonConformantInstanceError(f"{tag} {exc}") from exc


def uid_oddities(values: Mapping[str, str | None]) -> list[str]:
    """Warnings for the instance UIDs in ``values`` (by keyword) that are safe but not valid
    (PS3.5 9.1; a leading zero in a component): stored, and logged."""
    return [
        f'{keyword} "{value}" is not a valid UID (PS3.5 9.1)'
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        if (value := values.get(keyword)) and not is_valid_uid(value)
    ]


_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _uid_values(ds: Dataset) -> dict[str, str | None]:
    return {keyword: _text(ds, keyword) for keyword in _UID_KEYWORDS}


def _check_last_element(ds: Dataset, size: int) -> None:
    """The last top-level element, the only one a cut-off file can have cut (the others were
    read past), is whole: read, or when a deferred read skipped its value (:func:`inspect_header`)
    located within the file."""
    tags = list(ds.keys())
    if not tags:
        return
    raw = ds.get_item(tags[-1])
    length, value = getattr(raw, "length", None), getattr(raw, "value", b"")
    if length in (None, _UNDEFINED_LENGTH):
        return
    if value is None:
        tell = getattr(raw, "value_tell", None)
        arrived = max(size - tell, 0) if tell is not None else length
    elif isinstance(value, bytes | bytearray):
        arrived = len(value)
    else:
        return
    if arrived < length:
        raise UnreadableInstanceError(
            f"file is truncated: element {tags[-1]} declares {length} bytes but only "
            f"{arrived} arrived"
        )


def _fast_text(ds: Dataset, keyword: str) -> str | None:
    """:func:`_text`, decoding a single ASCII value of a deferred read's raw element itself
    (the common case, about ten times faster than pydicom's conversion)."""
    raw = ds.get_item(keyword) if keyword in ds else None
    value = getattr(raw, "value", None)
    if isinstance(value, bytes) and value.isascii() and b"\\" not in value:
        return value.decode("ascii").strip(" \0") or None
    return _text(ds, keyword)


@dataclass
class _Header:
    """What :func:`inspect_header` read, by either reader."""

    transfer_syntax_uid: str
    values: Mapping[str, str | int | None]  # keyword: value (the UIDs, InstanceInfo's, image)
    pixel_data_length: int | None  # declared, of top-level Pixel Data (None: none, undefined)
    other_patient_ids: tuple[tuple[str, str | None], ...] = ()
    warnings: tuple[str, ...] = ()


_IMAGE_KEYWORDS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
    "PhotometricInterpretation",
)


def _read_with_pydicom(data: bytes) -> _Header:
    """:func:`inspect_header`'s reading by pydicom, for files :mod:`dicom_gateway._header`
    does not read."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds: FileDataset = pydicom.dcmread(io.BytesIO(data), defer_size=_DEFERRED_BYTES)
            _check_last_element(ds, len(data))
            values: dict[str, str | int | None] = {
                keyword: _fast_text(ds, keyword)
                for keyword in (*_UID_KEYWORDS, *_INFO_KEYWORDS.values())
            }
            for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
                values[keyword] = _text(ds.file_meta, keyword)
            for keyword in _IMAGE_KEYWORDS:
                value = ds.get(keyword)
                values[keyword] = None if value is None or value == "" else str(value)
            pixels = ds.get_item("PixelData") if "PixelData" in ds else None
            length = getattr(pixels, "length", None)
            others = _other_patient_ids(ds) if "OtherPatientIDsSequence" in ds else ()
            syntax = str(ds.file_meta.get("TransferSyntaxUID") or "")
        except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
            raise UnreadableInstanceError(f"cannot parse the dataset: {exc}") from exc
        except BytesLengthException as exc:
            raise UnreadableInstanceError(f"cannot parse the dataset: {exc}") from exc
        except (AttributeError, IndexError, NotImplementedError, OverflowError) as exc:
            raise UnreadableInstanceError(f"cannot parse the dataset: {exc!r}") from exc
    return _Header(
        syntax,
        values,
        None if length in (None, _UNDEFINED_LENGTH) else length,
        others,
        tuple(str(w.message) for w in caught),
    )


def check_pixel_length(
    attributes: Mapping[str, Any], transfer_syntax: UID, available: int, what: str
) -> None:
    """Refuse native pixel data shorter than the image attributes in ``attributes`` (keyword
    to value: Rows, Columns, BitsAllocated, SamplesPerPixel, NumberOfFrames,
    PhotometricInterpretation) need, where ``available`` bytes are all there can be of it
    (``what`` says which bytes, for the reason). Attributes that are missing or unreadable
    are odd, not refused (as :func:`_check_pixel_data`).

    Raises
    ------
    NonConformantInstanceError
        The pixel data is short.
    """
    if transfer_syntax.is_compressed:
        return
    try:
        rows, columns = int(attributes["Rows"] or ""), int(attributes["Columns"] or "")
        bits = int(attributes["BitsAllocated"] or "")
        samples = int(attributes.get("SamplesPerPixel") or 1)
        frames = int(attributes.get("NumberOfFrames") or 1)
    except (KeyError, TypeError, ValueError):
        return
    photometric = str(attributes.get("PhotometricInterpretation") or "")
    expected = expected_pixel_bytes(
        rows, columns, samples=samples, bits=bits, frames=frames, photometric=photometric
    )
    if available < expected:
        raise NonConformantInstanceError(
            f"pixel data is shorter than the {expected} bytes its image attributes need "
            f"({what} {available}; {rows}x{columns}, {samples} samples, {bits} bits, "
            f"{frames} frames)"
        )


def _check_pixel_length(header: _Header, transfer_syntax: UID) -> None:
    """:func:`_check_pixel_data` on a header: the declared length of native Pixel Data
    against what its image attributes need."""
    if header.pixel_data_length is not None:
        check_pixel_length(
            header.values, transfer_syntax, header.pixel_data_length, "its Pixel Data has"
        )


def inspect_header(data: bytes) -> InstanceInfo:
    """The checks of :func:`inspect_instance` that need no value beyond the ones read: for an
    archive that parses every value itself as it stores (the Orthanc edge's STOW-RS), at a
    tenth of the cost for a common file.

    The file meta and the data set's top-level elements are read (by
    :mod:`dicom_gateway._header` when it reads the file, else by pydicom with long values
    only located), and only the values the checks and :class:`InstanceInfo` need are decoded.
    Checked as by :func:`inspect_instance`: the ``DICM`` prefix, a whole last element (a
    cut-off file), the transfer syntax, the required UIDs and their safety, the length of native
    pixel data. Not checked: the values inside sequences and of the other elements; Orthanc
    refuses what it cannot parse.

    Raises
    ------
    UnreadableInstanceError, NonConformantInstanceError
        As :func:`inspect_instance`.
    """
    if len(data) < PREAMBLE_LENGTH + 4 or data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] != _MAGIC:
        raise UnreadableInstanceError(
            'not a DICOM Part 10 file: no "DICM" prefix after the 128-byte preamble'
        )
    fast = read_header(data)
    header = (
        _Header(fast.transfer_syntax_uid, fast.values, fast.pixel_data_length)
        if fast is not None
        else _read_with_pydicom(data)
    )
    transfer_syntax = UID(header.transfer_syntax_uid)
    if not transfer_syntax:
        raise NonConformantInstanceError("file meta has no (0002,0010) TransferSyntaxUID")
    if not transfer_syntax.is_transfer_syntax:
        raise NonConformantInstanceError(f'transfer syntax "{transfer_syntax}" is not known')
    values = header.values
    uids = {keyword: _str(values.get(keyword)) for keyword in _UID_KEYWORDS}
    check_required_uids(uids)
    _check_pixel_length(header, transfer_syntax)
    oddities = [*header.warnings, *uid_oddities(uids)]
    meta_uid = _str(values.get("MediaStorageSOPInstanceUID"))
    if meta_uid and meta_uid != uids["SOPInstanceUID"]:
        oddities.append("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    info = InstanceInfo(
        sop_class_uid=uids["SOPClassUID"] or _str(values.get("MediaStorageSOPClassUID")) or "",
        sop_instance_uid=str(uids["SOPInstanceUID"]),
        study_instance_uid=str(uids["StudyInstanceUID"]),
        series_instance_uid=str(uids["SeriesInstanceUID"]),
        transfer_syntax_uid=str(transfer_syntax),
        **{name: _str(values.get(keyword)) for name, keyword in _INFO_KEYWORDS.items()},
        warnings=tuple(dict.fromkeys(oddities)),
        other_patient_ids=header.other_patient_ids,
    )
    if info.warnings:
        logger.warning(
            "instance %s stored with oddities: %s", info.sop_instance_uid, "; ".join(info.warnings)
        )
    return info


def _str(value: str | int | None) -> str | None:
    return None if value is None else str(value)


def inspect_instance(data: bytes) -> tuple[InstanceInfo, bytes]:
    """Parse a DICOM Part 10 file and check it can be stored.

    Parameters
    ----------
    data
        The whole file: preamble, ``DICM``, file meta information, dataset.

    Returns
    -------
    tuple[InstanceInfo, bytes]
        What the instance is, and the bytes to store (``data`` with its preamble zeroed).

    Raises
    ------
    UnreadableInstanceError
        Not a DICOM Part 10 file, or its elements cannot be parsed.
    NonConformantInstanceError
        Parses, but lacks a transfer syntax, a required UID, or complete pixel data, or its
        Study, Series or SOP Instance UID is not safe to use (see the module docstring).
    """
    if len(data) < PREAMBLE_LENGTH + 4 or data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] != _MAGIC:
        raise UnreadableInstanceError(
            'not a DICOM Part 10 file: no "DICM" prefix after the 128-byte preamble'
        )
    stored = zero_preamble(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds: FileDataset = pydicom.dcmread(io.BytesIO(stored))
            _check_truncation(ds)
            for element in ds.iterall():  # force every value to be parsed
                _ = element.value
        except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
            raise UnreadableInstanceError(f"cannot parse the dataset: {exc}") from exc
        except (AttributeError, IndexError, NotImplementedError, OverflowError) as exc:
            raise UnreadableInstanceError(f"cannot parse the dataset: {exc!r}") from exc
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    if not transfer_syntax:
        raise NonConformantInstanceError("file meta has no (0002,0010) TransferSyntaxUID")
    transfer_syntax = UID(str(transfer_syntax))
    if not transfer_syntax.is_transfer_syntax:
        raise NonConformantInstanceError(f'transfer syntax "{transfer_syntax}" is not known')
    uids = _uid_values(ds)
    check_required_uids(uids)
    oddities = [str(w.message) for w in caught]
    _check_pixel_data(ds, transfer_syntax, oddities)
    sop_class = _text(ds, "SOPClassUID") or _text(ds.file_meta, "MediaStorageSOPClassUID") or ""
    oddities += uid_oddities(uids)
    meta_uid = _text(ds.file_meta, "MediaStorageSOPInstanceUID")
    if meta_uid and meta_uid != _text(ds, "SOPInstanceUID"):
        oddities.append("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    info = InstanceInfo(
        sop_class_uid=sop_class,
        sop_instance_uid=str(_text(ds, "SOPInstanceUID")),
        study_instance_uid=str(_text(ds, "StudyInstanceUID")),
        series_instance_uid=str(_text(ds, "SeriesInstanceUID")),
        transfer_syntax_uid=str(transfer_syntax),
        modality=_text(ds, "Modality"),
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        study_description=_text(ds, "StudyDescription"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        warnings=tuple(dict.fromkeys(oddities)),
        other_patient_ids=_other_patient_ids(ds),
    )
    if info.warnings:
        logger.warning(
            "instance %s stored with oddities: %s", info.sop_instance_uid, "; ".join(info.warnings)
        )
    return info, stored
