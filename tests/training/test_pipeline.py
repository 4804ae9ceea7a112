"""The training pipeline end to end on tiny SYNTHETIC data, single-process and with Ray Train."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from training.data import read_labels_csv
from training.exceptions import DataSourceError
from training.pipeline import train
from training.registration import registry_callback
from training.split import Part, Split


def test_tiny_head_ct_run_learns_evaluates_and_registers_a_staged_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    report = train(
        "head-ct",
        "tiny",
        home=tmp_path,
        register=registry_callback(registry.root),
        epochs=4,
        studies=16,
    )
    assert report.version == "1"
    model = registry.get(report.model_name)
    assert model.stage == "staged"
    assert model.card.intended_use.startswith("synthetic demo model")
    # the AUC is a number in [0, 1] whenever the test patients hold both classes; NaN (and no
    # AUC on the card) only when this tiny split's test part holds one class
    split = Split.load_or_create(tmp_path / "training" / "head-ct" / "split.json")
    data = tmp_path / "training" / "head-ct" / "synthetic-s0-n16"
    test_labels = {r.label for r in read_labels_csv(data) if split.part(r.patient_id) is Part.TEST}
    auc = report.metrics["test"]["auc"]
    if test_labels == {0, 1}:
        assert 0.0 <= auc <= 1.0, f"test AUC {auc} with both classes among the test patients"
        assert model.card.metrics.auc == auc
    else:
        assert math.isnan(auc)
        assert model.card.metrics.auc is None
    assert report.metrics["test"]["lesion_dice"] is not None
    assert sum(report.split_counts.values()) == 16
    for plot in report.plots:
        assert Path(plot).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((Path(report.output_dir) / "report.json").read_text())
    assert saved["config"]["task"] == "head-ct"
    loss = json.loads((model.path / "training_config.json").read_text())["history"]["train loss"]
    assert loss[-1] < loss[0], f"training did not reduce the loss: {loss}"

    split = Split.load_or_create(tmp_path / "training" / "head-ct" / "split.json")
    before = dict(split.patients)
    again = train("head-ct", "tiny", home=tmp_path, register=None, epochs=1, studies=16)
    assert Split.load_or_create(split.path).patients == before  # reused, not reshuffled
    assert again.version is None


@pytest.mark.slow
def test_ray_train_with_two_cpu_workers(tmp_path: Path) -> None:
    report = train("head-ct", "tiny", home=tmp_path, register=None, epochs=2, studies=12, workers=2)
    assert report.metrics["best_epoch"] >= 1
    assert report.seconds["training"] > 0
    assert Path(report.output_dir, "report.json").is_file()


def test_folder_source_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"no labels\.csv"):
        read_labels_csv(tmp_path)
    (tmp_path / "labels.csv").write_text("study_instance_uid,patient_id\n1.2.3,P1\n")
    with pytest.raises(DataSourceError, match="lacks column"):
        read_labels_csv(tmp_path)
    (tmp_path / "labels.csv").write_text("study_instance_uid,patient_id,label\n1.2.3,P1,maybe\n")
    with pytest.raises(DataSourceError, match='label "maybe", expected 0 or 1'):
        read_labels_csv(tmp_path)
    (tmp_path / "labels.csv").write_text("study_instance_uid,patient_id,label\n1.2.3,P1,1\n")
    with pytest.raises(DataSourceError, match="does not exist"):
        read_labels_csv(tmp_path)


@pytest.mark.gpu
def test_tiny_run_on_cuda_with_mixed_precision(tmp_path: Path) -> None:
    import torch

    registry = ModelRegistry(tmp_path / "models")
    torch.cuda.reset_peak_memory_stats()
    report = train(
        "head-ct",
        "tiny",
        home=tmp_path,
        register=registry_callback(registry.root),
        epochs=3,
        studies=16,
        gpu=True,
    )
    assert torch.cuda.max_memory_allocated() > 0  # the network and batches were on the GPU
    model = registry.get(report.model_name)
    loss = json.loads((model.path / "training_config.json").read_text())["history"]["train loss"]
    assert all(math.isfinite(value) for value in loss), f"AMP produced a non-finite loss: {loss}"
    assert report.metrics["test"]["lesion_dice"] is not None
    assert model.onnx_path.is_file()  # exported from the GPU-trained weights
