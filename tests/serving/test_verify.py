"""``radcloud models verify`` (serving.verify): the shipped models reach the floors their cards
set on fresh synthetic studies, and a broken model does not.

The floors are the card's figures minus three standard errors of a set of the size drawn here
(see the serving.verify docstring): with 20 positive and 20 negative chest radiographs and a
card AUC of 0.95 the AUC floor is about 0.84 (Hanley-McNeil standard error 0.037); with 10 and
10 head CTs about 0.79. A corrupted model scores near chance (AUC about 0.5), far below.
The seed is fixed (serving.verify.DEFAULT_SEED, never used in training), so for a given bundle
the outcome is the same on every run: a failure means the bundle or serving's code changed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from models.bundle import WEIGHTS_FILE
from models.card import Metrics
from models.registry import ModelRegistry, RegisteredModel
from models.shipping import SHIPPED_DIR, shipped_bundles
from serving.verify import DEFAULT_SEED, floors, verify_model
from tests.conftest import RADCLOUD
from tests.fixture_models import register_fixture_models
from training.tasks import TASKS, Task

SHIPPED = shipped_bundles()
# studies per check: head CTs take seconds each to synthesise on a CPU, radiographs a fraction
STUDIES = {"head-ct-haemorrhage": 20, "chest-xr-finding": 40}
CORRUPTED_STUDIES = 16


@pytest.fixture(scope="module")
def fixture_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    models = tmp_path_factory.mktemp("home") / "models"
    register_fixture_models(models, tasks=(Task.CHEST_XR,), thresholds={Task.CHEST_XR: 1.0})
    return ModelRegistry(models)


def test_verify_scores_through_serving_and_fails_a_model_below_its_card(
    fixture_registry: ModelRegistry,
) -> None:
    model = fixture_registry.get("chest-xr-finding", "production")

    result = verify_model(model, studies=12, seed=3, resamples=200)

    assert (result.positives, result.negatives) == (6, 6)
    # threshold 1.0: serving's interpret flags nothing
    assert result.sensitivity.value == 0.0 and result.specificity.value == 1.0
    assert result.auc.low <= result.auc.value <= result.auc.high
    assert result.dice is None  # a classifier
    assert result.passed  # the fixture's card claims nothing (AUC 0.5, sensitivity 0)

    claims = model.card.model_copy(
        update={"metrics": Metrics(auc=0.95, sensitivity=0.9, specificity=0.9)}
    )
    boastful = verify_model(
        dataclasses.replace(model, card=claims), studies=12, seed=3, resamples=200
    )
    assert not boastful.passed
    assert any(f.startswith("sensitivity 0.000 < floor") for f in boastful.failures)


def test_floors_are_the_card_minus_three_standard_errors(
    fixture_registry: ModelRegistry,
) -> None:
    card = fixture_registry.get("chest-xr-finding", 1).card.model_copy(
        update={"metrics": Metrics(auc=0.95, sensitivity=1.0, specificity=0.8, dice=0.7)}
    )

    found = floors(card, positives=20, negatives=20, dice_sd=0.2)

    q1, q2 = 0.95 / 1.05, 2 * 0.95**2 / 1.95  # Hanley and McNeil (1982)
    variance = (0.95 * 0.05 + 19 * (q1 - 0.95**2) + 19 * (q2 - 0.95**2)) / 400
    assert found["auc"] == pytest.approx(0.95 - 3 * variance**0.5)
    assert found["auc"] == pytest.approx(0.84, abs=0.01)
    assert found["sensitivity"] == pytest.approx(1.0 - 3 * (0.95 * 0.05 / 20) ** 0.5)
    assert found["specificity"] == pytest.approx(0.8 - 3 * (0.8 * 0.2 / 20) ** 0.5)
    assert found["dice"] == pytest.approx(0.7 - 3 * 0.2 / 20**0.5)
    assert "dice" not in floors(card, positives=20, negatives=20)  # no measured spread


def test_every_demo_task_has_a_shipped_model() -> None:
    expected = {spec.model_name for spec in TASKS.values()}
    assert expected <= set(SHIPPED), (
        f"models/shipped/ has {sorted(SHIPPED)}: expected {sorted(expected)} "
        "(ship them with `radcloud models ship NAME VERSION --registry HOME`)"
    )
    size = sum(f.stat().st_size for f in SHIPPED_DIR.rglob("*") if f.is_file())
    assert size <= 25_000_000, f"models/shipped/ holds {size / 1e6:.1f} MB: the budget is 25 MB"


@pytest.fixture(scope="module")
def shipped_registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """The shipped bundles imported as `radcloud demo` imports them."""
    registry = ModelRegistry(tmp_path_factory.mktemp("shipped-home") / "models")
    for path in SHIPPED.values():
        registry.import_bundle(path)
    return registry


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_model_reaches_the_floor_its_card_sets(
    shipped_registry: ModelRegistry, name: str
) -> None:
    model = shipped_registry.get(name)
    assert model.card.metrics.auc is not None and model.card.threshold is not None

    result = verify_model(model, studies=STUDIES.get(name, 20), seed=DEFAULT_SEED)

    assert result.passed, f"{name}: " + "; ".join(result.failures)
    if model.card.metrics.dice is not None:
        assert result.dice is not None and "dice" in result.floors


def _corrupted(bundle: Path, destination: Path) -> Path:
    """A copy of ``bundle`` whose learnt weights carry noise as large as themselves."""
    copy = shutil.copytree(bundle, destination / bundle.name)
    state = torch.load(copy / WEIGHTS_FILE, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if value.is_floating_point() and "running" not in key:
            weights = value.float()
            noise = torch.randn(weights.shape, generator=generator) * weights.std().nan_to_num()
            state[key] = (weights + noise).to(value.dtype)
    torch.save(state, copy / WEIGHTS_FILE)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_corrupted_bundle_fails_verification(tmp_path: Path, name: str) -> None:
    registry = ModelRegistry(tmp_path / "home" / "models")
    model: RegisteredModel = registry.import_bundle(_corrupted(SHIPPED[name], tmp_path))

    result = verify_model(model, studies=CORRUPTED_STUDIES, seed=DEFAULT_SEED, resamples=200)

    assert not result.passed


@pytest.mark.slow
def test_the_verify_command_prints_intervals_and_exits_1_below_the_floor(
    fixture_registry: ModelRegistry, tmp_path: Path
) -> None:
    home = fixture_registry.root.parent
    command = [*RADCLOUD, "models", "verify", "chest-xr-finding", "--studies", "8"]
    env = os.environ | {"COLUMNS": "200"}
    saved = tmp_path / "scores.json"
    passed = subprocess.run(
        [*command, "--registry", str(home), "--save", str(saved)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert "95 % interval" in passed.stdout and "passed" in passed.stdout
    written = json.loads(saved.read_text())
    assert written["passed"] is True and len(written["studies"]) == 8
    assert {s["label"] for s in written["studies"]} == {0, 1}
    assert all(0.0 <= s["score"] <= 1.0 for s in written["studies"])

    # a bundle whose card claims sensitivity 0.95 for the random-weight fixture is refused: its
    # threshold 1.0 flags no radiograph (its AUC on 8 studies is chance, so it proves nothing)
    model = fixture_registry.get("chest-xr-finding", 1)
    claims = model.card.model_copy(update={"metrics": Metrics(auc=0.95, sensitivity=0.95)})
    boastful = tmp_path / "bundle"
    shutil.copytree(model.path, boastful)
    (boastful / "card.json").write_text(claims.to_json())
    other = ModelRegistry(tmp_path / "home" / "models")
    other.promote("chest-xr-finding", other.import_bundle(boastful).version)
    failed = subprocess.run(
        [*command, "--registry", str(tmp_path / "home")],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failed.returncode == 1 and "below its floor" in failed.stderr
    assert "sensitivity 0.000 < floor" in failed.stderr
