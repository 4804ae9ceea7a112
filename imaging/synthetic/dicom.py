"""Shared pieces of synthetic studies: tasks, findings, identities and the common DICOM modules.

Every synthetic study is labelled SYNTHETIC where a person or a program would look: PatientName
``SYNTHETIC^...``, StudyDescription and SeriesDescription start with ``SYNTHETIC``, and Patient
Identity Removed (0012,0062) is ``YES`` with a De-identification Method (0012,0063) saying the
data were generated. UIDs are derived from the seed (``2.25.`` name-based UUIDs, PS3.5 B.2), so
the same seed gives the same UIDs.

Errors::

    SyntheticError
    ├── InvalidParameterError(name, value, expected)   (also a ValueError)
    └── DatasetExistsError(path)
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from imaging.exceptions import DatasetExistsError, InvalidParameterError, SyntheticError

__all__ = [
    "GENERATOR_VERSION",
    "SYNTHETIC_LABEL",
    "DatasetExistsError",
    "InvalidParameterError",
    "RandomStream",
    "StudyIdentity",
    "SyntheticError",
    "SyntheticFinding",
    "SyntheticStudy",
    "SyntheticTask",
    "base_dataset",
    "normalise_task",
    "patient_sex",
    "random_stream",
    "study_identity",
    "synthetic_uid",
]

SYNTHETIC_LABEL = "SYNTHETIC"
GENERATOR_VERSION = "1.0"
"""Bumped whenever the same seed would give different pixels; it enters every UID."""

_IMPLEMENTATION = "radcloud.imaging.synthetic"
_FIRST_STUDY_DATE = dt.datetime(2024, 1, 1, 8, 0, 0)


class SyntheticTask(StrEnum):
    """What kind of study to synthesise."""

    HEAD_CT = "head-ct"
    CHEST_XR = "chest-xr"


class SyntheticFinding(StrEnum):
    """The ground-truth finding of a synthetic study (``NONE`` for a normal study)."""

    NONE = "none"
    HAEMORRHAGE = "haemorrhage"
    """Intraparenchymal haemorrhage (head CT)."""
    SUBDURAL = "subdural"
    """Crescent of blood along the inner table (head CT)."""
    SUBARACHNOID = "subarachnoid"
    """Blood filling sulci and cisterns (head CT)."""
    NODULE = "nodule"
    """Focal lung opacity, nodule to consolidation sized (chest radiograph)."""
    PNEUMOTHORAX = "pneumothorax"
    """Pleural air along the apex and lateral chest wall (chest radiograph)."""


def normalise_task(task: SyntheticTask | str) -> SyntheticTask:
    """``task`` as a :class:`SyntheticTask`.

    Raises
    ------
    InvalidParameterError
        ``task`` names no task.
    """
    try:
        return SyntheticTask(task)
    except ValueError as exc:
        expected = " or ".join(f'"{t.value}"' for t in SyntheticTask)
        raise InvalidParameterError("task", task, expected) from exc


@dataclass(frozen=True, eq=False)
class SyntheticStudy:
    """One synthetic study with its ground truth.

    Attributes
    ----------
    task
        The task it was made for.
    patient_id, study_instance_uid, series_instance_uid
        Its identifiers, as in ``datasets``.
    datasets
        The instances (one per CT slice, one for a radiograph), with file meta information,
        ready for ``save_as(..., enforce_file_format=True)``.
    image
        Pixels as written, ``(slices, rows, columns)`` float32: Hounsfield units for CT (the
        modality LUT applied), stored values (0..4095) for radiographs, whose shape is
        ``(1, rows, columns)``.
    mask
        uint8 of the shape of ``image``: 1 where the finding is, else 0.
    label
        1 for a critical study (a finding), 0 for a normal one.
    finding
        The kind of finding, :attr:`SyntheticFinding.NONE` when ``label`` is 0.
    spacing
        Voxel spacing in mm as ``(slice, row, column)``; for a radiograph the slice spacing is a
        nominal 1.0 and the others are PixelSpacing.
    index, seed
        Where it came from: ``generate_study(task, index, seed)``.
    """

    task: SyntheticTask
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    datasets: list[Dataset]
    image: np.ndarray
    mask: np.ndarray
    label: int
    finding: SyntheticFinding
    spacing: tuple[float, float, float]
    index: int = 0
    seed: int = 0


class RandomStream:
    """Independent random streams of one study, so anatomy does not change with the lesion."""

    ANATOMY = 0  # keyed on the patient: head size, ventricles, calcifications
    POSE = 1  # keyed on the study: positioning, exposure
    FINDING = 2  # keyed on the study: whether and which lesion
    NOISE = 3  # keyed on the study: quantum noise
    DEMOGRAPHICS = 4  # keyed on the patient


_TASK_CODES = {SyntheticTask.HEAD_CT: 1, SyntheticTask.CHEST_XR: 2}


def random_stream(task: SyntheticTask, seed: int, key: int, stream: int) -> np.random.Generator:
    """A generator for one ``stream`` of study or patient ``key`` of dataset ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, _TASK_CODES[task], stream, key]))


def synthetic_uid(*parts: object) -> str:
    """A UID derived from ``parts`` (and the generator version): same parts, same UID.

    A ``2.25.`` UID (PS3.5 B.2) of a name-based UUID (RFC 9562 version 5). Not pydicom's
    ``generate_uid(prefix=None, entropy_srcs=...)``: without a prefix it ignores the entropy
    sources and returns a random UUID.
    """
    name = "|".join([_IMPLEMENTATION, GENERATOR_VERSION, *(str(part) for part in parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


@dataclass(frozen=True)
class StudyIdentity:
    """Patient, study and series identity of one synthetic study (PS3.3 C.7.1-C.7.3)."""

    task: SyntheticTask
    seed: int
    index: int
    patient_index: int
    positive: bool
    patient_id: str
    patient_name: str
    patient_sex: str
    patient_birth_date: str
    patient_age: str
    study_date: str
    study_time: str
    accession_number: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str

    def sop_instance_uid(self, instance_number: int) -> str:
        """The SOPInstanceUID of instance ``instance_number`` of the series."""
        return synthetic_uid(*self._uid_key(), "instance", instance_number)

    def _uid_key(self) -> tuple[object, ...]:
        return (self.task.value, self.seed, self.index, self.patient_index, self.positive)


def patient_sex(task: SyntheticTask, seed: int, patient_index: int) -> str:
    """PatientSex (``F`` or ``M``) of a synthetic patient; the phantoms use it too."""
    return str(
        random_stream(task, seed, patient_index, RandomStream.DEMOGRAPHICS).choice(["F", "M"])
    )


def study_identity(
    task: SyntheticTask, seed: int, index: int, *, patient_index: int, positive: bool
) -> StudyIdentity:
    """The identity of study ``index`` of patient ``patient_index`` in dataset ``seed``.

    Demographics come from the patient, dates and UIDs from the study. ``positive`` enters the
    UIDs so the normal and the abnormal rendering of one study never share a SOPInstanceUID.
    """
    people = random_stream(task, seed, patient_index, RandomStream.DEMOGRAPHICS)
    sex = str(people.choice(["F", "M"]))  # as patient_sex()
    birth = _FIRST_STUDY_DATE.date() - dt.timedelta(days=int(people.integers(18 * 365, 90 * 365)))
    visit = random_stream(task, seed, index, RandomStream.POSE)
    when = _FIRST_STUDY_DATE + dt.timedelta(
        days=int(visit.integers(0, 730)), minutes=int(visit.integers(0, 12 * 60))
    )
    age = when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))
    key = (task.value, seed, index, patient_index, positive)
    return StudyIdentity(
        task=task,
        seed=seed,
        index=index,
        patient_index=patient_index,
        positive=positive,
        patient_id=f"SYNTH-{task.value}-{patient_index}",
        patient_name=f"{SYNTHETIC_LABEL}^{task.name.replace('_', '')}{patient_index}",
        patient_sex=sex,
        patient_birth_date=birth.strftime("%Y%m%d"),
        patient_age=f"{age:03d}Y",
        study_date=when.strftime("%Y%m%d"),
        study_time=when.strftime("%H%M%S"),
        accession_number=f"SYN{index:07d}"[:16],
        study_instance_uid=synthetic_uid(*key, "study"),
        series_instance_uid=synthetic_uid(*key, "series"),
        frame_of_reference_uid=synthetic_uid(*key, "frame-of-reference"),
    )


def base_dataset(
    identity: StudyIdentity,
    *,
    sop_class_uid: str,
    instance_number: int,
    modality: str,
    study_description: str,
    series_description: str,
) -> Dataset:
    """A dataset with the modules every synthetic instance shares.

    Patient (C.7.1.1), General Study (C.7.2.1), Patient Study (C.7.2.2), General Series
    (C.7.3.1), General Equipment (C.7.5.1), the common part of General Image (C.7.6.1) and SOP
    Common (C.12.1), plus Part 10 file meta information (PS3.10 7.1) in explicit VR little
    endian. The modality's own modules are added by the caller.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = identity.sop_instance_uid(instance_number)
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.patient_birth_date
    ds.PatientSex = identity.patient_sex
    ds.PatientAge = identity.patient_age
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"{SYNTHETIC_LABEL}: generated phantom, no patient data"
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = identity.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = identity.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(identity.index)[:16]
    ds.AccessionNumber = identity.accession_number
    ds.StudyDescription = f"{SYNTHETIC_LABEL} {study_description}"
    ds.Modality = modality
    ds.SeriesInstanceUID = identity.series_instance_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"{SYNTHETIC_LABEL} {series_description}"
    ds.Manufacturer = "radcloud"
    ds.ManufacturerModelName = f"{SYNTHETIC_LABEL} phantom"
    ds.InstitutionName = f"{SYNTHETIC_LABEL} data, not for clinical use"
    ds.SoftwareVersions = f"{_IMPLEMENTATION} {GENERATOR_VERSION}"
    ds.InstanceNumber = instance_number
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = f"{SYNTHETIC_LABEL} image, not for clinical use"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = bytes(128)
    return ds
