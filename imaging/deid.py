"""De-identification of DICOM instances stored in Orthanc (PS3.15 Annex E), for exports that
leave the hospital scope.

The attribute work is Orthanc's own, well-kept implementation of the Basic Application
Confidentiality Profile: ``POST /instances/{id}/anonymize`` with ``DicomVersion`` 2021b applies
PS3.15-2021b Table E.1-1 (identifying attributes removed, emptied or replaced, private tags
removed) and answers the de-identified Part 10 file without storing it. radcloud adds what one
call per instance cannot give:

- **Consistent UID remapping** (action U of Table E.1-1). Orthanc draws new UIDs at random on
  every call, so the instances of one series exported one by one would fall apart. radcloud
  therefore replaces StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and
  FrameOfReferenceUID with UIDs derived from the original by HMAC-SHA256 keyed with the
  deployment's secret (``deid_hmac_key`` in ``secrets.json``) and the destination scope::

      digest = HMAC-SHA256(key, scope ␟ "uid" ␟ original UID)
      uid    = "2.25." + decimal(digest[:16] as a UUID version 8, RFC 9562)   (PS3.5 B.2)

  PatientID and PatientName become a pseudonym, ``ANON-`` and 16 base32 characters of
  ``HMAC-SHA256(key, scope ␟ "patient" ␟ issuer ␟ PatientID)`` (the issuer is the hospital,
  since patient IDs are unique only within one). The same instance, key and scope give the
  same values on every export; another key or scope gives unlinkable ones. UIDs elsewhere
  (references inside sequences) keep Orthanc's random per-call remapping: unlinkable, but not
  consistent between instances.
- **The record of what was done**: Orthanc writes Patient Identity Removed (0012,0062) YES;
  Orthanc 1.10.1 writes no De-identification Method (0012,0063), so radcloud does (Orthanc's
  version, the profile, the keyed pseudonyms) along with a De-identification Method Code
  Sequence (0012,0064) holding DCM 113100 "Basic Application Confidentiality Profile".
- **Checks of the result** before anyone may write it: the replaced UIDs and pseudonym are
  there and Patient Identity Removed is YES; an instance declaring Burned In Annotation
  (0028,0301) YES is refused, since the Clean Pixel Data option is not applied.

Errors are :class:`~imaging.exceptions.DeidentificationError` (Orthanc refused, with its reason)
and :class:`~imaging.exceptions.OrthancUnavailableError` (Orthanc cannot be reached).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pydicom
from pydicom.errors import InvalidDicomError

from core.archive import (
    AnonymizingArchive,
    ArchiveError,
    ArchiveId,
    ArchiveNotFoundError,
    ArchiveRejectedError,
    ArchiveUnavailableError,
)
from imaging.exceptions import DeidentificationError, OrthancUnavailableError

__all__ = [
    "BASIC_PROFILE_CODE",
    "DICOM_VERSION",
    "PSEUDONYM_PREFIX",
    "REMAPPED_UIDS",
    "DeidentifiedInstance",
    "OrthancDeidentifier",
    "Pseudonymizer",
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
