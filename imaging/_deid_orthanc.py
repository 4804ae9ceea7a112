"""De-identification through Orthanc's own Basic Profile, with keyed consistent UIDs (the
training export's; see :mod:`imaging.deid`)."""

from __future__ import annotations

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
from imaging._deid_keys import BASIC_PROFILE_CODE, Pseudonymizer
from imaging.exceptions import DeidentificationError, OrthancUnavailableError

__all__ = ["DICOM_VERSION", "REMAPPED_UIDS", "DeidentifiedInstance", "OrthancDeidentifier"]

logger = logging.getLogger(__name__)

DICOM_VERSION = "2021b"
"""The edition of PS3.15 Table E.1-1 Orthanc applies (``DicomVersion``; 1.10.1 knows 2021b)."""
REMAPPED_UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
"""UID attributes replaced by keyed, consistent UIDs (when the instance has them)."""
_MAX_LO = 64  # PS3.5 6.2: a LO value holds at most 64 characters


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
