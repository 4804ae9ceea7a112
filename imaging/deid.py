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
    or the original PatientID or PatientName is still a value.

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

The parts: ``_deid_keys.py`` (the keys), ``_deid_table.py`` (Table E.1-1 as data),
``_deid_rules.py`` (well-known UIDs, burned-in annotation, date shifts, dummies, URIs),
``_deid_dataset.py`` (the attribute walk and the leak check), ``_deid_json.py`` (bulk data of
DICOM JSON), ``_deid_research.py`` (:class:`Deidentifier`), ``_deid_orthanc.py``
(:class:`OrthancDeidentifier`).

Errors are :class:`~imaging.exceptions.DeidentificationError` (Orthanc refused, with its reason;
a result that failed a check), :class:`~imaging.exceptions.BurnedInAnnotationError` (withheld)
and :class:`~imaging.exceptions.OrthancUnavailableError` (Orthanc cannot be reached).
"""

from __future__ import annotations

from imaging._deid_keys import (
    BASIC_PROFILE_CODE,
    MODIFIED_DATES_CODE,
    PSEUDONYM_PREFIX,
    Pseudonymizer,
    local_patient_key,
)
from imaging._deid_orthanc import (
    DICOM_VERSION,
    REMAPPED_UIDS,
    DeidentifiedInstance,
    OrthancDeidentifier,
)
from imaging._deid_research import Deidentifier
from imaging._deid_table import PROFILE_EDITION

__all__ = [
    "BASIC_PROFILE_CODE",
    "DICOM_VERSION",
    "MODIFIED_DATES_CODE",
    "PROFILE_EDITION",
    "PSEUDONYM_PREFIX",
    "REMAPPED_UIDS",
    "RESEARCH_SCOPE",
    "DeidentifiedInstance",
    "Deidentifier",
    "OrthancDeidentifier",
    "Pseudonymizer",
    "local_patient_key",
]

RESEARCH_SCOPE = "research"
"""The pseudonym scope of everything radcloud shows a research purpose (federated search and
retrieval, cohorts, the cohort training export): one study or patient has one pseudonym in
all of them."""
