"""Where training data comes from, as records MONAI datasets can use.

Sources:

- a folder of DICOM studies (or NIfTI volumes) with a ``labels.csv`` — this is also what
  ``radcloud synth`` writes, so the synthetic generator is one such folder;
- studies in Orthanc with the radiologist-confirmed labels of the application database's
  ``labels`` table, which :mod:`training.orthanc_source` exports into such a folder
  (de-identified by default: PS3.15 Basic Profile, keyed UIDs and patient pseudonyms);
  ``radcloud train --source orthanc`` exports and then trains on the folder.

``labels.csv`` columns: ``study_instance_uid``, ``patient_id``, ``label`` (1 critical finding, 0
none) and optionally ``finding``, ``mask`` (a NIfTI label map on the image's voxel grid, relative
to the folder) and ``image`` (a DICOM directory or NIfTI file, relative to the folder; by default
``dicom/<study_instance_uid>``).

DICOM series are converted once to NIfTI in a cache directory, each file named by a hash of
the study's UID, never by the value itself (``imaging.volume`` reads them: slice order from
positions, rescale to modality units, inconsistent series refused), so the
MONAI pipelines read NIfTI through ``LoadImaged`` and ``PersistentDataset`` caches the
deterministic transforms.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.uids import is_safe_uid
from training.exceptions import DataSourceError

__all__ = ["StudyRecord", "labels_sha256", "read_labels_csv", "to_monai_items"]

logger = logging.getLogger(__name__)

_REQUIRED = ("study_instance_uid", "patient_id", "label")


@dataclass(frozen=True)
class StudyRecord:
    """One labelled study of a training source."""

    study_instance_uid: str
    patient_id: str
    label: int
    image: Path
    mask: Path | None = None
    finding: str | None = None


def labels_sha256(root: Path) -> str:
    """SHA-256 of a source's ``labels.csv``: identifies the data a model was trained on."""
    return hashlib.sha256((root / "labels.csv").read_bytes()).hexdigest()


def read_labels_csv(root: Path) -> list[StudyRecord]:
    """The studies of a folder source.

    Raises
    ------
    DataSourceError
        No ``labels.csv``, a missing column, a label other than 0/1, or a missing image.
    """
    path = root / "labels.csv"
    if not path.is_file():
        raise DataSourceError(root, "no labels.csv (columns: study_instance_uid,patient_id,label)")
    records = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in _REQUIRED if name not in (reader.fieldnames or [])]
        if missing:
            raise DataSourceError(root, f"labels.csv lacks column(s) {', '.join(missing)}")
        for number, row in enumerate(reader, start=2):
            if row["label"] not in ("0", "1"):
                raise DataSourceError(
                    root, f'labels.csv line {number}: label "{row["label"]}", expected 0 or 1'
                )
            uid = row["study_instance_uid"]
            if not row.get("image") and not is_safe_uid(uid):
                raise DataSourceError(
                    root,
                    f"labels.csv line {number}: study_instance_uid {uid[:80]!r} is not a UID, "
                    "so it cannot name its image folder: give an image column",
                )
            image = root / (row.get("image") or f"dicom/{uid}")
            if not image.exists():
                raise DataSourceError(root, f"labels.csv line {number}: {image} does not exist")
            mask = root / row["mask"] if row.get("mask") else None
            if mask is not None and not mask.exists():
                raise DataSourceError(root, f"labels.csv line {number}: {mask} does not exist")
            records.append(
                StudyRecord(
                    uid, row["patient_id"], int(row["label"]), image, mask, row.get("finding")
                )
            )
    if not records:
        raise DataSourceError(root, "labels.csv has no studies")
    return records


def _nifti_image(record: StudyRecord, cache_dir: Path) -> Path:
    """The record's image as NIfTI, converting a DICOM series once."""
    if record.image.is_file() and record.image.name.endswith((".nii", ".nii.gz")):
        return record.image
    name = hashlib.sha256(record.study_instance_uid.encode()).hexdigest()[:32]
    target = cache_dir / f"{name}.nii.gz"  # a hash: never a path built from a DICOM value
    if not target.exists():
        from imaging.nifti import save_nifti
        from imaging.volume import load_series_files

        files = sorted(p for p in record.image.rglob("*") if p.is_file())
        volume = load_series_files(files)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}")
        save_nifti(volume, tmp)
        tmp.replace(target)
    return target


def to_monai_items(records: list[StudyRecord], cache_dir: Path) -> list[dict[str, Any]]:
    """MONAI dictionary items ``{"image", "mask", "label", "patient_id", "study"}``; DICOM
    series are converted to NIfTI in ``cache_dir`` the first time."""
    items = []
    for record in records:
        item: dict[str, Any] = {
            "image": str(_nifti_image(record, cache_dir)),
            "label": float(record.label),
            "patient_id": record.patient_id,
            "study": record.study_instance_uid,
        }
        if record.mask is not None:
            item["mask"] = str(record.mask)
        items.append(item)
    return items
