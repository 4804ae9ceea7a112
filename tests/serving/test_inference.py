"""Model runners (both backends), pre-processing from the card, post-processing, series choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks._models import random_weight_card
from imaging.synthetic import generate_study
from imaging.volume import load_series
from models.card import ScoreCalibration
from models.registry import ModelRegistry
from serving.inference import (
    Backend,
    ModelRunner,
    calibrated_score,
    effective_backend,
    interpret,
    prepare,
)
from serving.triage import SeriesData, select_series
from tests.fixture_models import SLIM_PARAMS, register_fixture_models
from training.tasks import Task, task_spec


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    models = tmp_path_factory.mktemp("models")
    register_fixture_models(models, tasks=(Task.HEAD_CT,), thresholds={Task.HEAD_CT: 0.5})
    return ModelRegistry(models)


def test_onnx_and_torch_backends_agree_and_check_the_input(registry: ModelRegistry) -> None:
    onnx = ModelRunner.from_registry(registry, "head-ct-haemorrhage", backend="onnx", device="cpu")
    torch_runner = ModelRunner.from_registry(
        registry, "head-ct-haemorrhage", backend="torch", device="cpu"
    )
    batch = np.random.default_rng(0).random((2, *onnx.input_shape), dtype=np.float32)

    np.testing.assert_allclose(onnx.predict(batch), torch_runner.predict(batch), atol=1e-3)
    assert onnx.describe()["device"] == "cpu" and onnx.describe()["version"] == "1"
    with pytest.raises(ValueError, match="expected"):
        onnx.predict(batch[:, :, :64])


def test_onnx_on_cuda_without_a_gpu_provider_runs_torch() -> None:
    cpu_build = ["AzureExecutionProvider", "CPUExecutionProvider"]
    backend, reason = effective_backend(Backend.ONNX, True, cpu_build)
    assert backend is Backend.TORCH and reason and "onnxruntime-gpu" in reason
    for gpu_build in (["CUDAExecutionProvider", *cpu_build], ["TensorrtExecutionProvider"]):
        assert effective_backend(Backend.ONNX, True, gpu_build) == (Backend.ONNX, None)
    assert effective_backend(Backend.ONNX, False, cpu_build) == (Backend.ONNX, None)
    assert effective_backend(Backend.TORCH, True, cpu_build) == (Backend.TORCH, None)


@pytest.mark.gpu
def test_an_onnx_runner_on_cuda_uses_the_gpu(registry: ModelRegistry) -> None:
    runner = ModelRunner.from_registry(registry, "head-ct-haemorrhage", backend="onnx")
    assert runner.device == "cuda"
    batch = np.random.default_rng(0).random((2, *runner.input_shape), dtype=np.float32)
    reference = ModelRunner.from_registry(
        registry, "head-ct-haemorrhage", backend="torch", device="cpu"
    )
    # float16 autocast (torch) or ONNX Runtime's CUDA kernels against float32 on the CPU
    np.testing.assert_allclose(runner.predict(batch), reference.predict(batch), atol=5e-2)


def test_head_ct_result_is_on_the_source_grid(registry: ModelRegistry) -> None:
    runner = ModelRunner.from_registry(registry, "head-ct-haemorrhage", device="cpu")
    study = generate_study("head-ct", 0, seed=3, positive=True)
    volume = load_series(study.datasets)

    prepared = prepare(runner.card, volume)
    output = interpret(runner.card, prepared, runner.predict(prepared.array[None])[0])

    assert prepared.array.shape == runner.input_shape
    assert output.mask is not None and output.mask.shape == volume.shape
    assert output.critical == (output.score >= 0.5)
    # the fixture calls every voxel lesion: the whole head grid, resampled back
    assert output.lesion_voxels > 0.5 * volume.array.size
    assert output.lesion_volume_ml == pytest.approx(
        output.lesion_voxels * float(np.prod(volume.spacing)) / 1000
    )


def test_series_selection_follows_the_card(registry: ModelRegistry, tmp_path: Path) -> None:
    card = registry.get("head-ct-haemorrhage", "production").card
    head = generate_study("head-ct", 1, seed=3)
    chest = generate_study("chest-xr", 1, seed=3)
    few = SeriesData("few", "CT", head.datasets[:5])
    full = SeriesData("full", "CT", head.datasets)
    radiograph = SeriesData("xr", "DX", chest.datasets)

    chosen, reasons = select_series(card.series_selection, [radiograph, few, full])

    assert chosen is full
    assert any("modality DX" in r for r in reasons)
    assert any("5 slices" in r for r in reasons)


def test_batching_is_configurable_per_model_and_reaches_the_replicas(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from core.config import load_settings, settings_env
    from serving.deployments import batch_size, batch_wait_ms

    monkeypatch.setenv("RADCLOUD_HOME", str(tmp_path))
    monkeypatch.setenv(
        "RADCLOUD_SERVING_MODEL_BATCHING", '{"head-ct-haemorrhage": {"max_batch_size": 2}}'
    )
    settings = load_settings()
    assert batch_size(settings, "head-ct-haemorrhage") == 2
    assert batch_wait_ms(settings, "head-ct-haemorrhage") == settings.serving_batch_wait_ms
    assert batch_size(settings, "chest-xr-finding") == settings.serving_max_batch_size

    for name, value in settings_env(settings).items():  # what a replica's environment gets
        monkeypatch.setenv(name, value)
    assert batch_size(load_settings(), "head-ct-haemorrhage") == 2


def test_a_calibrated_card_gives_the_calibrated_probability_and_flags_on_it() -> None:
    card, _ = random_weight_card(
        task_spec(Task.CHEST_XR), dict(SLIM_PARAMS[Task.CHEST_XR]), 0.6, "calibration test"
    )
    study = generate_study("chest-xr", 0, 5)
    prepared = prepare(card, load_series(study.datasets))
    logits = np.zeros(1, dtype=np.float32)  # raw probability 0.5

    plain = interpret(card, prepared, logits)
    calibrated_card = card.model_copy(
        update={"calibration": ScoreCalibration(slope=1.0, intercept=1.0, fitted_on="test")}
    )
    calibrated = interpret(calibrated_card, prepared, logits)

    assert plain.score == pytest.approx(0.5) and not plain.calibrated and not plain.critical
    assert calibrated.calibrated and calibrated.raw_score == pytest.approx(0.5)
    assert calibrated.score == pytest.approx(1.0 / (1.0 + np.exp(-1.0)))  # sigmoid(logit + 1)
    assert calibrated.critical and calibrated.threshold == 0.6  # the threshold is on it
    # the raw score is clipped before the logit: a saturated network stays finite
    assert calibrated_score(calibrated_card, 1.0) < 1.0
    assert calibrated_score(card, 0.3) == 0.3  # no calibration: the raw score


def test_interpreting_leaves_the_prepared_series_as_it_was() -> None:
    """A segmenter's output is mapped back with MONAI's inverse, which consumes the transform
    trace it is given: interpreting must work on a copy, so that the same prepared series can
    be interpreted again (e.g. another model's output, or a retry) with the same result."""
    card, _ = random_weight_card(
        task_spec(Task.HEAD_CT), dict(SLIM_PARAMS[Task.HEAD_CT]), 0.5, "trace test"
    )
    prepared = prepare(card, load_series(generate_study("head-ct", 1, 5).datasets))
    trace = repr(prepared.image.applied_operations)
    logits = np.random.default_rng(0).normal(size=(2, *prepared.array.shape[1:]))

    first = interpret(card, prepared, logits.astype(np.float32))
    assert repr(prepared.image.applied_operations) == trace
    second = interpret(card, prepared, logits.astype(np.float32))

    assert first.mask is not None and second.mask is not None
    assert np.array_equal(first.mask, second.mask) and first.score == second.score
