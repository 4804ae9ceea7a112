"""Serving's pre-processing (a DICOM series in memory) equals training's (cached NIfTI), and a
segmenter's output maps back onto the source grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai import transforms as mt

from imaging.nifti import save_nifti
from imaging.synthetic import generate_study
from imaging.volume import load_series
from models.card import IntensityNormalization
from models.preprocessing import card_transforms, restore_to_source, volume_item
from training.tasks import task_spec


@pytest.mark.parametrize("task", ["head-ct", "chest-xr"])
def test_serving_input_equals_training_input(task: str, tmp_path: Path) -> None:
    spec = task_spec(task)
    study = generate_study(task, 3, seed=5, positive=True)
    volume = load_series(study.datasets)
    nifti = save_nifti(volume, tmp_path / "image.nii.gz")
    item = {"image": str(nifti)}
    if spec.segmentation:
        item["mask"] = str(save_nifti(volume.with_array(study.mask), tmp_path / "mask.nii.gz"))
    trained_on = spec.preprocess()(item)["image"]

    served = mt.Compose(card_transforms(spec.input_spec(), track_meta=True))(
        volume_item(volume, spec.input_spec())
    )["image"]

    assert served.shape == trained_on.shape == (1, *spec.spatial_size)
    # NIfTI stores the affine in float32, memory keeps float64: resampling weights differ in the
    # 5th decimal at most.
    torch.testing.assert_close(served.as_tensor(), trained_on, atol=1e-4, rtol=0)


def test_segmenter_output_returns_to_the_source_grid() -> None:
    spec = task_spec("head-ct")
    study = generate_study("head-ct", 1, seed=5, positive=True)
    volume = load_series(study.datasets)
    inputs = spec.input_spec()
    steps = card_transforms(inputs, track_meta=True)
    prepared = mt.Compose(steps)(volume_item(volume, inputs))["image"]
    # The truth on the network's grid stands in for a perfect segmenter's output.
    as_is = inputs.model_copy(update={"normalization": IntensityNormalization(method="none")})
    mask = volume_item(volume.with_array(study.mask.astype(np.float32)), as_is)
    on_grid = mt.Compose(card_transforms(as_is))(mask)["image"]
    assert on_grid.shape == prepared.shape and float(on_grid.sum()) > 0

    restored = restore_to_source(steps, prepared, on_grid)

    assert restored.shape == (1, *volume.shape)
    back = restored[0] > 0.5
    truth = study.mask.astype(bool)
    overlap = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    assert overlap > 0.8  # resampled to 2x2x5 mm and back: only partial-volume edges differ
