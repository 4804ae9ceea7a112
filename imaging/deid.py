"""De-identification of DICOM for data that leaves the hospital scope (PS3.15 Annex E).

Two de-identifiers share one keyed :class:`Pseudonymizer`:

- :class:`Deidentifier`, radcloud's own, for research: works on any pydicom Dataset, a Part 10
  file, or DICOM JSON (PS3.18 F.2, what QIDO-RS and WADO-RS metadata answer, e.g. from a
  remote DICOMweb node), with no archive involved. It applies the Basic Application
  Confidentiality Profile with the Retain Longitudinal Temporal Information with Modified Dates
  option:

  * every attribute of PS3.15 Table E.1-1 gets its action (the table is data, taken from the
    ``dicom-anonymizer`` package, see :mod:`imaging._deid_table`): X removed, Z emptied, D a
    dummy value, U a keyed UID; X/Z, Z/D, X/Z/D emptied, X/D a dummy; a sequence with D or
    X/D (Content Sequence, ...) or X/Z/U* (Referenced Image, Source Image) keeps its items,
    which are cleaned by the same table, so that references survive remapped; private
    attributes, group lengths and attributes of unknown VR are removed;
  * **every UID** that is not well known (SOP classes, transfer syntaxes, coding schemes: see
    :func:`imaging._deid_rules.is_well_known_uid`) is replaced by its keyed UID, at any depth:
    ReferencedSOPInstanceUID, the Referenced Series Sequence of a SEG, the Source Image
    Sequence... so a de-identified SEG or SR still points to its de-identified sources, and the
    same study from two hospitals gets the same UID (UIDs are derived from the original UID
    only);
  * PatientID and PatientName become the patient's pseudonym, and every DA/DT value (Patient's
    Birth Date excepted: Z) is shifted by the patient's whole-day shift, so that intervals
    between a patient's studies are kept; a whole-day shift leaves times of day (TM) as they
    are. Both derive from the **patient key** the caller passes (radcloud's cross-hospital
    patient key; :func:`local_patient_key` when there is none), so one patient gets one
    pseudonym and one shift across hospitals and queries;
  * URIs (RetrieveURL, RetrieveURI, BulkDataURI) are rewritten onto the DICOMweb base that
    serves the de-identified data, their UIDs remapped, or dropped without one;
  * Patient Identity Removed (0012,0062) YES, Longitudinal Temporal Information Modified
    (0028,0303) MODIFIED, De-identification Method (0012,0063) and its Code Sequence (0012,0064):
    DCM 113100 and 113107;
  * instances that may show identifying text in their pixels are withheld
    (:class:`~imaging.exceptions.BurnedInAnnotationError`), since the Clean Pixel Data option
    is not applied;
  * a final check refuses any result where an original UID is still found inside a text value
    or the original PatientID is still a value.

- :class:`OrthancDeidentifier`, used by the training export: Orthanc's own implementation of
  the Basic Profile (``POST /instances/{id}/anonymize`` with ``DicomVersion`` 2021b, which
  answers the de-identified Part 10 file without storing it), plus consistent keyed
  StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and FrameOfReferenceUID (UIDs inside
  sequences keep Orthanc's random per-call remapping), the patient pseudonym, the De-
  identification Method and its code, and checks of the result.

The keys. Everything is HMAC-SHA256 keyed with the deployment's secret (``deid_hmac_key`` in
``secrets.json``) and the destination scope (e.g. ``"training"``, ``"research"``)::

      digest = HMAC-SHA256(key, scope ␟ "uid" ␟ original UID)
      uid    = "2.25." + decimal(digest[:16] as a UUID version 8, RFC 9562)   (PS3.5 B.2)
      pseudonym  = "ANON-" + base32(HMAC-SHA256(key, scope ␟ "patient-key" ␟ patient key)[:10])
      date shift = -(365 + int(HMAC-SHA256(key, scope ␟ "date-shift" ␟ patient key)[:8])
                     mod 3288) days                               (1 to 10 years back)

The same input, key and scope give the same output; another key or scope gives unlinkable
values. The Orthanc path's pseudonym is ``HMAC(key, scope ␟ "patient" ␟ issuer ␟ PatientID)``
(:meth:`Pseudonymizer.patient_id`), unchanged so that earlier exports stay stable.

Errors are :class:`~imaging.exceptions.DeidentificationError` (Orthanc refused, with its reason;
a result that failed a check), :class:`~imaging.exceptions.BurnedInAnnotationError` (withheld)
and :class:`~imaging.exceptions.OrthancUnavailableError` (Orthanc cannot be reached).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import pydicom
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from core.archive import (
    AnonymizingArchive,
    ArchiveError,
    ArchiveId,
    ArchiveNotFoundError,
    ArchiveRejectedError,
    ArchiveUnavailableError,
)
from imaging._deid_dataset import Keys, clean_dataset, find_leaks
from imaging._deid_json import put_back_bulk_data, take_out_bulk_data
from imaging._deid_rules import burned_in_annotation_reason
from imaging._deid_table import PROFILE_EDITION
from imaging.exceptions import (
    BurnedInAnnotationError,
    DeidentificationError,
    OrthancUnavailableError,
)

__all__ = [
    "BASIC_PROFILE_CODE",
    "DICOM_VERSION",
    "MODIFIED_DATES_CODE",
    "PROFILE_EDITION",
    "PSEUDONYM_PREFIX",
    "REMAPPED_UIDS",
    "DeidentifiedInstance",
    "Deidentifier",
    "OrthancDeidentifier",
    "Pseudonymizer",
    "local_patient_key",
]

logger = logging.getLogger(__name__)

DICOM_VERSION = "2021b"
"""The edition of PS3.15 Table E.1-1 Orthanc applies (``DicomVersion``; 1.10.1 knows 2021b)."""
BASIC_PROFILE_CODE = {
    "CodeValue": "113100",
    "CodingSchemeDesignator": "DCM",
    "CodeMeaning": "Basic Application Confidentiality Profile",
}
"""PS3.16 CID 7050 code written into De-identification Method Code Sequence (0012,0064)."""
MODIFIED_DATES_CODE = {
    "CodeValue": "113107",
    "CodingSchemeDesignator": "DCM",
    "CodeMeaning": "Retain Longitudinal Temporal Information Modified Dates Option",
}
"""PS3.16 CID 7050 code of the option :class:`Deidentifier` applies."""
PSEUDONYM_PREFIX = "ANON-"
REMAPPED_UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
"""UID attributes replaced by keyed, consistent UIDs (when the instance has them)."""
_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a UID, scope or patient ID
_MAX_LO = 64  # PS3.5 6.2: a LO value holds at most 64 characters
_MIN_SHIFT_DAYS, _SHIFT_SPAN_DAYS = 365, 3288  # shifts of 1 to 10 years back


class Pseudonymizer:
    """Keyed, deterministic UIDs and patient pseudonyms for one destination scope.

    Parameters
    ----------
    key
        The deployment's de-identification secret (``Secrets.deid_hmac_key``).
    scope
        Where the export goes (e.g. ``"training"``): each scope gets unlinkable values.

    Raises
    ------
    ValueError
        An empty key or scope.
    """

    def __init__(self, key: str | bytes, scope: str) -> None:
        self._key = key.encode() if isinstance(key, str) else bytes(key)
        if not self._key:
            raise ValueError("de-identification key is empty: expected the deployment's secret")
        if not scope:
            raise ValueError("de-identification scope is empty: expected a destination name")
        self.scope = scope

    def __repr__(self) -> str:
        return f"Pseudonymizer(scope={self.scope!r}, key=<redacted>)"

    def _digest(self, *parts: str) -> bytes:
        message = _SEPARATOR.join((self.scope, *parts)).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """The UID that replaces ``uid``: ``2.25.`` and a UUID version 8 (PS3.5 B.2), at most
        44 characters."""
        raw = bytearray(self._digest("uid", uid.strip())[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8: custom (RFC 9562 5.8)
        raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10
        return f"2.25.{int.from_bytes(raw, 'big')}"

    def patient_id(self, patient_id: str, issuer: str = "") -> str:
        """The pseudonym that replaces PatientID (and PatientName), e.g. ``ANON-3QK7...``.

        Parameters
        ----------
        patient_id
            The original PatientID (0010,0020).
        issuer
            Who assigned it (radcloud passes the hospital): the same ID from two hospitals
            gives two pseudonyms.
        """
        digest = self._digest("patient", issuer, patient_id.strip())
        return PSEUDONYM_PREFIX + base64.b32encode(digest[:10]).decode()

    def patient_pseudonym(self, patient_key: str) -> str:
        """The pseudonym of the patient with ``patient_key`` (radcloud's cross-hospital patient
        key, or :func:`local_patient_key`): PatientID and PatientName of
        :class:`Deidentifier`'s output, e.g. ``ANON-3QK7...``."""
        digest = self._digest("patient-key", _checked_patient_key(patient_key))
        return PSEUDONYM_PREFIX + base64.b32encode(digest[:10]).decode()

    def date_shift(self, patient_key: str) -> timedelta:
        """The whole-day shift of every date of the patient with ``patient_key``: 1 to 10
        years back, the same for all the patient's studies, whichever hospital holds them."""
        digest = self._digest("date-shift", _checked_patient_key(patient_key))
        days = _MIN_SHIFT_DAYS + int.from_bytes(digest[:8], "big") % _SHIFT_SPAN_DAYS
        return timedelta(days=-days)


def _checked_patient_key(patient_key: str) -> str:
    if not patient_key or not patient_key.strip():
        raise ValueError("patient key is empty: expected radcloud's patient key")
    return patient_key.strip()


def local_patient_key(hospital: str, patient_id: str, issuer_of_patient_id: str = "") -> str:
    """The patient key of a patient radcloud has not linked across hospitals: the hospital,
    the Issuer of Patient ID (0010,0021) and the PatientID, so the same local ID at two
    hospitals stays two patients.

    Raises
    ------
    ValueError
        An empty hospital or patient ID.
    """
    if not hospital.strip() or not patient_id.strip():
        raise ValueError(
            f"local patient key needs a hospital and a patient ID: got {hospital!r}, {patient_id!r}"
        )
    return _SEPARATOR.join(
        ("local", hospital.strip(), issuer_of_patient_id.strip(), patient_id.strip())
    )


class Deidentifier:
    """De-identifies any DICOM instance or DICOM JSON for research (see the module docstring).

    Parameters
    ----------
    pseudonyms
        The keyed pseudonyms of the destination scope (e.g. ``Pseudonymizer(key, "research")``).
    uri_base
        The DICOMweb base URL that serves the de-identified data (radcloud's research WADO-RS);
        RetrieveURL, RetrieveURI and BulkDataURI values are rewritten onto it with their UIDs
        remapped. ``None`` drops them.
    """

    def __init__(self, pseudonyms: Pseudonymizer, *, uri_base: str | None = None) -> None:
        self.pseudonyms = pseudonyms
        self.uri_base = uri_base

    def __repr__(self) -> str:
        return f"Deidentifier(scope={self.pseudonyms.scope!r}, uri_base={self.uri_base!r})"

    @staticmethod
    def method() -> list[str]:
        """The De-identification Method (0012,0063) values written into every result."""
        return [
            f"PS3.15-{PROFILE_EDITION} E.1-1 Basic Profile",
            "Retain Longitudinal Temporal Information Modified Dates",
            "radcloud keyed HMAC-SHA256 UIDs, pseudonyms and date shift",
        ]

    def _keys(self, patient_key: str) -> Keys:
        return Keys(
            remap_uid=self.pseudonyms.uid,
            patient_pseudonym=self.pseudonyms.patient_pseudonym(patient_key),
            shift_days=self.pseudonyms.date_shift(patient_key).days,
            uri_base=self.uri_base,
        )

    def deidentify_dataset(self, dataset: Dataset, *, patient_key: str) -> Dataset:
        """A de-identified copy of ``dataset``; the original is left as it was.

        Parameters
        ----------
        dataset
            An instance (with or without pixel data and file meta), or a QIDO-RS study or
            series result as a Dataset.
        patient_key
            The patient's radcloud key (or :func:`local_patient_key`): it decides the
            pseudonym and the date shift.

        Returns
        -------
        Dataset
            The de-identified instance; with file meta when the input had it (Media Storage SOP
            Instance UID remapped, radcloud's implementation).

        Raises
        ------
        BurnedInAnnotationError
            The instance may show identifying text in its pixels (only datasets with a
            SOPInstanceUID are judged).
        DeidentificationError
            The result failed the final check (an original UID or PatientID left).
        ValueError
            An empty patient key.
        """
        _check_burned_in(dataset)
        keys = self._keys(patient_key)
        result = copy.deepcopy(dataset)
        meta = getattr(dataset, "file_meta", None)
        if meta is not None:
            result.file_meta = FileMetaDataset()
        clean_dataset(result, keys)
        self._record(result)
        if meta is not None:
            result.file_meta = _file_meta(meta, result)
        if hasattr(result, "preamble") and result.preamble is not None:
            result.preamble = b"\x00" * 128  # a preamble may hold anything (PS3.10 7.1)
        identifiers = {
            str(dataset.get(keyword, "") or "")
            for keyword in ("PatientID", "PatientName", "AccessionNumber", "OtherPatientIDs")
        }
        find_leaks(result, keys, identifiers)
        return result

    def deidentify_file(self, data: bytes, *, patient_key: str) -> bytes:
        """The de-identified Part 10 file of the Part 10 file ``data`` (same transfer syntax).

        Raises
        ------
        DeidentificationError
            ``data`` is not DICOM, or as :meth:`deidentify_dataset`.
        """
        try:
            dataset = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise DeidentificationError(f"not a DICOM Part 10 file: {exc}") from exc
        result = self.deidentify_dataset(dataset, patient_key=patient_key)
        out = io.BytesIO()
        result.save_as(out, enforce_file_format=True)
        return out.getvalue()

    def deidentify_json(self, dataset: Mapping[str, Any], *, patient_key: str) -> dict[str, Any]:
        """The de-identified DICOM JSON (PS3.18 F.2) of one dataset of a QIDO-RS or WADO-RS
        metadata answer: the same actions, pseudonym, UIDs and dates as
        :meth:`deidentify_dataset` gives the same instance. InlineBinary values are treated like
        any value; a BulkDataURI is kept (rewritten onto ``uri_base``) only where the profile
        keeps its attribute, else dropped.

        Raises
        ------
        BurnedInAnnotationError, DeidentificationError, ValueError
            As :meth:`deidentify_dataset`; also DICOM JSON that does not parse.
        """
        stripped, bulk = take_out_bulk_data(dataset)
        try:
            parsed = Dataset.from_json(stripped)
        except (ValueError, TypeError, KeyError) as exc:
            raise DeidentificationError(f"not DICOM JSON (PS3.18 F.2): {exc}") from exc
        result = self.deidentify_dataset(parsed, patient_key=patient_key)
        answer: dict[str, Any] = result.to_json_dict(bulk_data_threshold=2**62)
        put_back_bulk_data(answer, bulk, self.uri_base, self.pseudonyms.uid)
        return answer

    def _record(self, ds: Dataset) -> None:
        """Write what was done (PS3.15 E.1.1, PS3.3 C.7.1.1 and C.7.6.1)."""
        ds.PatientIdentityRemoved = "YES"
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        ds.DeidentificationMethod = self.method()
        codes = []
        for code in (BASIC_PROFILE_CODE, MODIFIED_DATES_CODE):
            item = Dataset()
            for keyword, value in code.items():
                setattr(item, keyword, value)
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes


def _check_burned_in(dataset: Dataset) -> None:
    sop_instance_uid = str(dataset.get("SOPInstanceUID", "") or "")
    if not sop_instance_uid:
        return  # a study or series result: no pixels to judge
    modality = str(dataset.get("Modality", "") or "") or None
    sop_class_uid = str(dataset.get("SOPClassUID", "") or "") or None
    reason = burned_in_annotation_reason(
        str(dataset.get("BurnedInAnnotation", "") or ""), modality, sop_class_uid
    )
    if reason is not None:
        raise BurnedInAnnotationError(
            sop_instance_uid, reason, modality=modality, sop_class_uid=sop_class_uid
        )


def _file_meta(original: FileMetaDataset, ds: Dataset) -> FileMetaDataset:
    """File meta for the de-identified ``ds``: nothing of the original but its transfer
    syntax (the source AE title and implementation may identify the sender)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", original.get("MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    if "TransferSyntaxUID" in original:
        meta.TransferSyntaxUID = original.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADCLOUD_DEID"
    return meta


@dataclass(frozen=True, repr=False)
class DeidentifiedInstance:
    """One de-identified instance, as Orthanc answered it and radcloud checked it.

    ``source_sop_instance_uid`` is the original UID, for mapping references (e.g. a SEG's)
    onto the exported instances inside the hospital scope; it is never written anywhere.
    """

    data: bytes
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    patient_id: str
    source_sop_instance_uid: str

    def __repr__(self) -> str:
        return f"DeidentifiedInstance({self.sop_instance_uid}, {len(self.data)} bytes)"


class OrthancDeidentifier:
    """De-identifies instances stored in Orthanc with its Basic Profile and keyed UIDs.

    Parameters
    ----------
    archive
        radcloud's image archive (:func:`core.archive.open_archive`), which de-identifies
        instances itself.
    pseudonyms
        The keyed pseudonyms of the export's destination scope.
    keep
        Attributes Orthanc's profile would remove that the destination needs (Orthanc's
        ``Keep``: keywords or ``gggg-eeee`` tags). Empty by default; whatever is kept must not
        identify the patient.
    """

    def __init__(
        self, archive: AnonymizingArchive, pseudonyms: Pseudonymizer, *, keep: Sequence[str] = ()
    ) -> None:
        self._archive = archive
        self.pseudonyms = pseudonyms
        self._keep = list(keep)
        self._orthanc_version: str | None = None

    def method(self) -> list[str]:
        """The De-identification Method (0012,0063) values written into every instance.

        Raises
        ------
        OrthancUnavailableError
            Orthanc cannot be reached (its version is asked once).
        """
        if self._orthanc_version is None:
            self._orthanc_version = _ask(self._archive.server_version, None, "read its version")
        profile = f"{self._orthanc_version} PS3.15-{DICOM_VERSION} E.1-1 Basic Profile"
        return [profile[:_MAX_LO], "radcloud keyed HMAC-SHA256 UIDs and patient pseudonyms"]

    def replacements(
        self, tags: Mapping[str, Any], issuer_of_patient_id: str = ""
    ) -> dict[str, Any]:
        """Orthanc's ``Replace`` for an instance with (simplified) ``tags``: keyed UIDs for the
        :data:`REMAPPED_UIDS` it has, the patient pseudonym, and the record of the method."""
        replace: dict[str, Any] = {
            keyword: self.pseudonyms.uid(str(tags[keyword]))
            for keyword in REMAPPED_UIDS
            if tags.get(keyword)
        }
        pseudonym = self.pseudonyms.patient_id(
            str(tags.get("PatientID") or ""), issuer_of_patient_id
        )
        replace["PatientID"] = pseudonym
        replace["PatientName"] = pseudonym
        replace["DeidentificationMethod"] = "\\".join(self.method())
        replace["DeidentificationMethodCodeSequence"] = [dict(BASIC_PROFILE_CODE)]
        return replace

    def deidentify_instance(
        self, orthanc_id: str, *, issuer_of_patient_id: str = ""
    ) -> DeidentifiedInstance:
        """De-identify one instance stored in Orthanc; nothing is stored.

        Parameters
        ----------
        orthanc_id
            Orthanc's ID of the instance.
        issuer_of_patient_id
            Who assigned its PatientID (radcloud: the hospital name), see
            :meth:`Pseudonymizer.patient_id`.

        Returns
        -------
        DeidentifiedInstance
            The Part 10 file and its new identifiers.

        Raises
        ------
        DeidentificationError
            Orthanc does not have the instance or refused it (its reason is given), or the
            result fails a check (see the module docstring).
        OrthancUnavailableError
            Orthanc cannot be reached.
        """
        instance = ArchiveId(orthanc_id)
        tags = _ask(
            lambda: self._archive.get_instance_metadata(instance), orthanc_id, "read its tags"
        )
        replace = self.replacements(tags, issuer_of_patient_id)
        data = _ask(
            lambda: self._archive.anonymize_instance(
                instance, dicom_version=DICOM_VERSION, replace=replace, keep=self._keep
            ),
            orthanc_id,
            "anonymize it",
        )
        _check_result(data, replace, orthanc_id)
        return DeidentifiedInstance(
            data=data,
            study_instance_uid=replace["StudyInstanceUID"],
            series_instance_uid=replace["SeriesInstanceUID"],
            sop_instance_uid=replace["SOPInstanceUID"],
            patient_id=replace["PatientID"],
            source_sop_instance_uid=str(tags["SOPInstanceUID"]),
        )


_T = TypeVar("_T")


def _ask(call: Callable[[], _T], orthanc_id: str | None, action: str) -> _T:
    """``call()``, the archive's errors made de-identification errors (``action``: what was
    asked of Orthanc, for the message)."""
    try:
        return call()
    except ArchiveNotFoundError as exc:
        raise DeidentificationError(
            "Orthanc has no such instance", orthanc_id=orthanc_id, status_code=404
        ) from exc
    except (ArchiveUnavailableError, ArchiveRejectedError) as exc:
        if isinstance(exc, ArchiveUnavailableError) and exc.status_code is None:
            raise OrthancUnavailableError(exc.url, exc.reason) from exc
        raise DeidentificationError(
            f"Orthanc refused to {action}: HTTP {exc.status_code} {exc.reason}",
            orthanc_id=orthanc_id,
            status_code=exc.status_code,
        ) from exc
    except ArchiveError as exc:
        reason = f"Orthanc failed to {action}: {exc}"
        raise DeidentificationError(reason, orthanc_id=orthanc_id) from exc


def _check_result(data: bytes, replace: Mapping[str, Any], orthanc_id: str) -> None:
    """Refuse a result that is not what was asked for (see the module docstring)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise DeidentificationError(
            f"Orthanc's de-identified file is not DICOM: {exc}", orthanc_id=orthanc_id
        ) from exc
    expected = {k: replace[k] for k in (*REMAPPED_UIDS, "PatientID") if k in replace}
    wrong = {k: str(ds.get(k, "")) for k, v in expected.items() if str(ds.get(k, "")) != v}
    if wrong:
        raise DeidentificationError(
            f"Orthanc's result has {wrong}: expected the replacements {expected}",
            orthanc_id=orthanc_id,
        )
    if ds.get("PatientIdentityRemoved") != "YES":
        raise DeidentificationError(
            f'PatientIdentityRemoved is "{ds.get("PatientIdentityRemoved", "")}" after '
            "anonymization: expected YES",
            orthanc_id=orthanc_id,
        )
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidentificationError(
            "BurnedInAnnotation is YES: text in the pixels may identify the patient, and the "
            "Clean Pixel Data option is not applied",
            orthanc_id=orthanc_id,
        )
