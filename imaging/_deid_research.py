"""radcloud's research de-identifier on any Dataset, Part 10 file or DICOM JSON (see
:mod:`imaging.deid`)."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from imaging._deid_dataset import Keys, clean_dataset, find_leaks
from imaging._deid_json import put_back_bulk_data, take_out_bulk_data
from imaging._deid_keys import BASIC_PROFILE_CODE, MODIFIED_DATES_CODE, Pseudonymizer
from imaging._deid_rules import burned_in_annotation_reason
from imaging._deid_table import PROFILE_EDITION
from imaging.exceptions import BurnedInAnnotationError, DeidentificationError

__all__ = ["Deidentifier"]


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
            for keyword in ("PatientID", "PatientName", "OtherPatientIDs")
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

    def deidentify_json_answer(
        self,
        answer: Sequence[Mapping[str, Any]],
        *,
        patient_key: str | Callable[[Mapping[str, Any]], str],
    ) -> tuple[list[dict[str, Any]], list[BurnedInAnnotationError]]:
        """A whole QIDO-RS or WADO-RS metadata answer, de-identified dataset by dataset.

        Parameters
        ----------
        answer
            The DICOM JSON datasets, as the node answered them.
        patient_key
            The patient key of every dataset, or a function giving it from a dataset (QIDO-RS
            rows of several patients: the caller resolves each row's hospital and PatientID).

        Returns
        -------
        tuple
            The de-identified datasets, in order, and the errors of those withheld for
            burned-in annotation (for the caller to count and report).

        Raises
        ------
        DeidentificationError, ValueError
            As :meth:`deidentify_json`: one dataset that cannot be de-identified fails the
            whole answer, since a partial answer would hide it.
        """
        kept: list[dict[str, Any]] = []
        withheld: list[BurnedInAnnotationError] = []
        for dataset in answer:
            key = patient_key if isinstance(patient_key, str) else patient_key(dataset)
            try:
                kept.append(self.deidentify_json(dataset, patient_key=key))
            except BurnedInAnnotationError as exc:
                withheld.append(exc)
        return kept, withheld

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
