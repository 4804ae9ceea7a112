"""C-FIND and C-MOVE over Orthanc's REST API: the translation behind the gateway's
Query/Retrieve SCP (:mod:`dicom_gateway.scp`).

A C-FIND or C-MOVE identifier (PS3.4 C.4.1.1.3, C.4.2.1.4) becomes an Orthanc
``POST /tools/find`` (``Level``, ``Query``, ``Expand``): every non-empty key other than the
Query/Retrieve Level and Specific Character Set is a matching key, passed on as DICOM wrote it.
Orthanc implements the DICOM matching rules itself (single value, wildcards ``*`` and ``?``,
UID lists, date/time ranges ``YYYYMMDD-YYYYMMDD``), also for keys of the levels above the
query level. Each answer holds only the keys the identifier asked for plus the
Query/Retrieve Level (PS3.4 C.4.1.1.3.2), filled from Orthanc's main DICOM tags, the tags of
the parent resources, and a few computed attributes (``NumberOf*Related*``,
``ModalitiesInStudy``, ``RetrieveAETitle``, ``InstanceAvailability``).

Errors (in :mod:`dicom_gateway.exceptions`; the DIMSE handlers map them to status codes)::

    GatewayError
    ├── InvalidIdentifierError(reason)   -> 0xA900 identifier does not match SOP class
    └── ArchiveError(reason)             -> C-FIND 0xC001, C-MOVE 0xA701
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext, build_context

from core.uids import InvalidUidError, check_uid_list
from dicom_gateway.exceptions import InvalidIdentifierError

if TYPE_CHECKING:
    pass

__all__ = [
    "QUERY_RETRIEVE_SOP_CLASSES",
    "VERIFICATION",
    "InformationModel",
    "MoveItem",
    "Query",
    "QueryRetrieveLevel",
    "information_model",
    "move_contexts",
]

logger = logging.getLogger(__name__)

VERIFICATION = UID("1.2.840.10008.1.1")
_PATIENT_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.1.1")
_PATIENT_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.1.2")
_STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
_STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
QUERY_RETRIEVE_SOP_CLASSES = (
    _PATIENT_ROOT_FIND,
    _PATIENT_ROOT_MOVE,
    _STUDY_ROOT_FIND,
    _STUDY_ROOT_MOVE,
)
"""Patient Root and Study Root Query/Retrieve Find and Move (PS3.4 C.6)."""

_QUERY_RETRIEVE_LEVEL = Tag(0x0008, 0x0052)
_SPECIFIC_CHARACTER_SET = Tag(0x0008, 0x0005)
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
_BINARY_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_BINARY_FLOAT_VRS = frozenset({"FL", "FD"})
_NO_VALUE_VRS = frozenset({"SQ", "AT", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_UNCOMPRESSED = (UID("1.2.840.10008.1.2.1"), UID("1.2.840.10008.1.2"))  # explicit, implicit LE

# Attributes Orthanc does not store but computes (PS3.4 C.6.1.1.5-C.6.1.1.6, C.6.2.1.2), by
# the level of the resource they count under and Orthanc's statistics field.
_COUNTS = {
    "NumberOfPatientRelatedStudies": ("patients", "CountStudies"),
    "NumberOfPatientRelatedSeries": ("patients", "CountSeries"),
    "NumberOfPatientRelatedInstances": ("patients", "CountInstances"),
    "NumberOfStudyRelatedSeries": ("studies", "CountSeries"),
    "NumberOfStudyRelatedInstances": ("studies", "CountInstances"),
    "NumberOfSeriesRelatedInstances": ("series", "CountInstances"),
}
# Return-only keys: never passed to Orthanc as matching keys.
_RETURN_ONLY = frozenset({*_COUNTS, "RetrieveAETitle", "InstanceAvailability"})


class InformationModel(StrEnum):
    """Query/Retrieve information models (PS3.4 C.6)."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"


class QueryRetrieveLevel(StrEnum):
    """Values of (0008,0052) Query/Retrieve Level (PS3.4 C.6.1.1, C.6.2.1)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


_UNIQUE_KEYS = {  # PS3.4 C.6.1.1, C.6.2.1
    QueryRetrieveLevel.PATIENT: "PatientID",
    QueryRetrieveLevel.STUDY: "StudyInstanceUID",
    QueryRetrieveLevel.SERIES: "SeriesInstanceUID",
    QueryRetrieveLevel.IMAGE: "SOPInstanceUID",
}
_MODEL_LEVELS = {
    InformationModel.PATIENT_ROOT: tuple(QueryRetrieveLevel),
    InformationModel.STUDY_ROOT: (
        QueryRetrieveLevel.STUDY,
        QueryRetrieveLevel.SERIES,
        QueryRetrieveLevel.IMAGE,
    ),
}
_SOP_CLASS_MODELS = {
    _PATIENT_ROOT_FIND: InformationModel.PATIENT_ROOT,
    _PATIENT_ROOT_MOVE: InformationModel.PATIENT_ROOT,
    _STUDY_ROOT_FIND: InformationModel.STUDY_ROOT,
    _STUDY_ROOT_MOVE: InformationModel.STUDY_ROOT,
}


def information_model(sop_class_uid: str) -> InformationModel:
    """The information model of a Find or Move SOP class UID.

    Raises
    ------
    InvalidIdentifierError
        Not a Patient Root or Study Root Find/Move SOP class.
    """
    try:
        return _SOP_CLASS_MODELS[UID(str(sop_class_uid))]
    except KeyError:
        raise InvalidIdentifierError(
            f'SOP class "{sop_class_uid}" is not a Patient Root or Study Root '
            "Query/Retrieve information model"
        ) from None


def _query_value(element: DataElement) -> str:
    """An identifier element's value as the string DICOM matching uses."""
    value = element.value
    if value is None or isinstance(value, bytes | bytearray):
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(item) for item in value)
    return str(value).strip()


def _check_uid_list(value: str, name: str) -> None:
    """A UI matching key is a UID or a list of UIDs, without wildcards (PS3.4 C.2.2.2.2); each
    must be safe to pass on (:func:`core.uids.is_safe_uid`)."""
    try:
        check_uid_list(value.split("\\"), name)
    except InvalidUidError as exc:
        raise InvalidIdentifierError(str(exc)) from exc


@dataclass(frozen=True)
class _ReturnKey:
    tag: BaseTag
    vr: str
    keyword: str


@dataclass(frozen=True)
class Query:
    """A parsed C-FIND or C-MOVE identifier.

    Attributes
    ----------
    level
        The Query/Retrieve Level.
    constraints
        Orthanc ``Query``: matching keys by keyword (or ``gggg,eeee``), DICOM syntax.
    return_keys
        Every key of the identifier to return in an answer, in order.
    redacted
        Keys whose values the audit trail must not show (person names).
    """

    level: QueryRetrieveLevel
    constraints: dict[str, str]
    return_keys: tuple[_ReturnKey, ...]
    redacted: frozenset[str] = field(default=frozenset())

    @classmethod
    def from_identifier(cls, identifier: Dataset, model: InformationModel) -> Query:
        """Parse ``identifier`` for ``model``.

        Raises
        ------
        InvalidIdentifierError
            No or an unknown Query/Retrieve Level, or one the model does not have, or a UID
            matching key that is not a list of UIDs.
        """
        raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        if not raw_level:
            raise InvalidIdentifierError("(0008,0052) QueryRetrieveLevel is missing")
        try:
            level = QueryRetrieveLevel(raw_level)
        except ValueError:
            raise InvalidIdentifierError(
                f'QueryRetrieveLevel "{raw_level}" is not valid: expected one of '
                f"{', '.join(QueryRetrieveLevel)}"
            ) from None
        if level not in _MODEL_LEVELS[model]:
            raise InvalidIdentifierError(
                f"QueryRetrieveLevel {level} is not part of the {model.lower()} model"
            )
        constraints: dict[str, str] = {}
        keys: list[_ReturnKey] = []
        redacted: set[str] = set()
        for element in identifier:
            tag = element.tag
            if tag.group in (0x0000, 0x0002) or tag in (
                _QUERY_RETRIEVE_LEVEL,
                _SPECIFIC_CHARACTER_SET,
            ):
                continue
            name = element.keyword or f"{tag.group:04X},{tag.element:04X}"
            keys.append(_ReturnKey(tag, str(element.VR), element.keyword))
            if element.VR == "PN":
                redacted.add(name)
            if element.VR in _NO_VALUE_VRS or element.keyword in _RETURN_ONLY:
                continue  # sequence matching is not supported: a return key only
            value = _query_value(element)
            if value and value != "*":
                if element.VR == "UI":
                    _check_uid_list(value, name)
                constraints[name] = value
        return cls(level, constraints, tuple(keys), frozenset(redacted))

    def audit_detail(self) -> dict[str, Any]:
        """What the audit trail records of this query: level and keys, no names, no IDs."""
        matching = {
            key: ("<redacted>" if key in self.redacted else value)
            for key, value in self.constraints.items()
            if key != "PatientID"
        }
        return {
            "level": self.level.value,
            "matching_keys": matching,
            "return_keys": [key.keyword or str(key.tag) for key in self.return_keys],
        }

    def check_retrieve_keys(self) -> None:
        """Check that a C-MOVE names what it retrieves by the unique key of its level: one
        value or a list, no wildcards (PS3.4 C.4.2.2.1, hierarchical retrieve). Without this
        an identifier of non-unique keys (or none) would send the whole archive.

        Raises
        ------
        InvalidIdentifierError
            The unique key is missing, empty or has wildcards.
        """
        key = _UNIQUE_KEYS[self.level]
        value = self.constraints.get(key, "")
        if not value or "*" in value or "?" in value:
            raise InvalidIdentifierError(
                f"a C-MOVE at level {self.level} needs {key}: one value or a list, no wildcards"
            )

    @property
    def patient_id(self) -> str | None:
        """The PatientID matching key when it names one patient (no wildcards)."""
        value = self.constraints.get("PatientID")
        if value and not any(char in value for char in "*?\\"):
            return value
        return None


@dataclass(frozen=True)
class MoveItem:
    """One instance a C-MOVE sends."""

    archive_id: str  # the image archive's key of the instance
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    patient_id: str | None


def _element(key: _ReturnKey, value: str | None) -> DataElement:
    """``key`` with ``value`` (Orthanc's string form), or empty when it cannot hold it."""
    vr = key.vr
    if not value or vr in _NO_VALUE_VRS or " or " in vr:
        return DataElement(key.tag, "SQ" if vr == "SQ" else vr, [] if vr == "SQ" else None)
    parts = value.split("\\")
    try:
        if vr in _BINARY_INT_VRS:
            numbers: list[Any] = [int(part) for part in parts]
            return DataElement(key.tag, vr, numbers if len(numbers) > 1 else numbers[0])
        if vr in _BINARY_FLOAT_VRS:
            numbers = [float(part) for part in parts]
            return DataElement(key.tag, vr, numbers if len(numbers) > 1 else numbers[0])
        return DataElement(key.tag, vr, parts if len(parts) > 1 else value)
    except (ValueError, TypeError, OverflowError) as exc:
        logger.debug("cannot return %s as %s (%s): empty value instead", key.keyword, vr, exc)
        return DataElement(key.tag, vr, None)


def move_contexts(items: list[MoveItem]) -> list[PresentationContext]:
    """Presentation contexts for sending ``items`` to a C-MOVE destination.

    Each SOP class gets one context proposing explicit and implicit VR little endian (pydicom
    re-encodes uncompressed data to whichever is accepted), plus one context per compressed
    transfer syntax its instances use (those are sent as they are, never transcoded). At most
    128 contexts (PS3.8 9.3.2.2); instances beyond are sent, and fail, with a warning logged.
    """
    contexts: list[PresentationContext] = []
    seen: set[tuple[str, str]] = set()
    for item in items:
        syntax = UID(item.transfer_syntax_uid or _UNCOMPRESSED[0])
        key = (item.sop_class_uid, syntax if syntax.is_compressed else "")
        if key in seen or not item.sop_class_uid:
            continue
        seen.add(key)
        if len(contexts) == _MAX_CONTEXTS:
            logger.warning(
                "C-MOVE needs more than %d presentation contexts: %s in %s not offered",
                _MAX_CONTEXTS,
                item.sop_class_uid,
                syntax,
            )
            continue
        syntaxes: list[str | UID] = [syntax] if syntax.is_compressed else list(_UNCOMPRESSED)
        contexts.append(build_context(item.sop_class_uid, syntaxes))
    return contexts
