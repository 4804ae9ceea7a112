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
from training.split import Split


def test_tiny_head_ct_run_trains_evaluates_calibrates_and_registers(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    report = train("head-ct", "tiny", home=tmp_path, register=registry_callback(registry.root))
    assert report.version == "1"
    model = registry.get(report.model_name)
    assert model.stage == "staged"
    assert model.card.intended_use.startswith("synthetic demo model")
    auc = report.metrics["test"]["auc"]
    assert math.isfinite(auc), f"test AUC {auc}: the tiny test set must hold both classes"
    assert model.card.metrics.auc == auc
    low, high = report.metrics["test"]["auc_95ci"]
    assert low <= auc <= high
    assert 0.0 <= report.metrics["test"]["lesion_dice"] <= 1.0
    assert report.split_counts == {"validation": 6, "test": 6}
    # calibrated on validation; the threshold applies to the calibrated probability
    assert model.card.calibration is not None
    assert "calibrated" in model.card.threshold.applies_to
    assert report.metrics["test"]["threshold"] == model.card.threshold.value
    assert "--preset tiny --seed 0" in model.card.source
    assert {"roc", "reliability", "curves"} <= {
        Path(p).stem.rsplit("-", 1)[-1] for p in report.plots
    }
    for plot in report.plots:
        assert Path(plot).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((Path(report.output_dir) / "report.json").read_text())
    assert saved["model_name"] == "head-ct-haemorrhage"
    history = json.loads((model.path / "training_config.json").read_text())["history"]
    assert len(history["seconds"]) >= 2  # validated during the run and at its end
    assert history["studies generated"][-1] > 4  # fresh studies replaced the first pool

    # a second start resumes the finished run: no training, same weights evaluated again
    again = train("head-ct", "tiny", home=tmp_path, register=None)
    assert again.version is None
    assert again.metrics["test"]["auc"] == auc


def test_folder_source_keeps_its_patient_split(tmp_path: Path) -> None:
    from imaging.synthetic import write_dataset

    write_dataset("chest-xr", 16, 3, tmp_path / "data")
    first = train("chest-xr", "tiny", home=tmp_path, source=tmp_path / "data", epochs=1)
    assert sum(first.split_counts.values()) == 16
    split = Split.load_or_create(tmp_path / "training" / "chest-xr" / "split.json")
    before = dict(split.patients)
    train("chest-xr", "tiny", home=tmp_path, source=tmp_path / "data", epochs=1)
    assert Split.load_or_create(split.path).patients == before  # reused, not reshuffled


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
