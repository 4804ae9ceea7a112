"""Synthetic DICOM studies with ground truth, labelled SYNTHETIC wherever they appear.

No patient data can be downloaded, so radcloud draws its own: head CT phantoms with acute
haemorrhage (:mod:`~imaging.synthetic.head_ct`) and chest radiographs with a nodule or a
pneumothorax (:mod:`~imaging.synthetic.chest_xr`), deterministic by seed, written as
conformant DICOM with NIfTI masks and a labels table (:mod:`~imaging.synthetic.dataset`), with a
hand-rule baseline to compare models against (:mod:`~imaging.synthetic.baseline`). Single noise
CT slices for ingest tests come from :func:`ct_slice`.
"""

from __future__ import annotations

from imaging.synthetic.baseline import (
    BaselineReport,
    baseline_score,
    dice,
    evaluate_baseline,
    intracranial_mask,
    lung_field_mask,
    roc_auc,
    roc_curve,
)
from imaging.synthetic.dataset import (
    DEFAULT_POSITIVE_FRACTION,
    LABELS_COLUMNS,
    DatasetManifest,
    GroundTruth,
    generate_study,
    mask_affine,
    positive_indices,
    render_ground_truth,
    write_dataset,
)
from imaging.synthetic.dicom import (
    GENERATOR_VERSION,
    SYNTHETIC_LABEL,
    DatasetExistsError,
    InvalidParameterError,
    SyntheticError,
    SyntheticFinding,
    SyntheticStudy,
    SyntheticTask,
)
from imaging.synthetic.slices import ct_slice

__all__ = [
    "DEFAULT_POSITIVE_FRACTION",
    "GENERATOR_VERSION",
    "LABELS_COLUMNS",
    "SYNTHETIC_LABEL",
    "BaselineReport",
    "DatasetExistsError",
    "DatasetManifest",
    "GroundTruth",
    "InvalidParameterError",
    "SyntheticError",
    "SyntheticFinding",
    "SyntheticStudy",
    "SyntheticTask",
    "baseline_score",
    "ct_slice",
    "dice",
    "evaluate_baseline",
    "generate_study",
    "intracranial_mask",
    "lung_field_mask",
    "mask_affine",
    "positive_indices",
    "render_ground_truth",
    "roc_auc",
    "roc_curve",
    "write_dataset",
]
