"""``radcloud demo``, the main job, in a fresh home: it registers the shipped models (no
training). Fixture models stand in for the shipped ones (shipped with ``models.shipping``
into a temporary directory given as ``--shipped``), so the test does not depend on what
``models/shipped/`` holds; ``tests/serving/test_verify.py`` checks those."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from models.shipping import ship
from tests.conftest import RADCLOUD, settings_from_env, stack_env
from tests.fixture_models import register_fixture_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_sends_studies_and_prints_the_triaged_worklist(tmp_path: Path) -> None:
    trained = tmp_path / "trained" / "models"
    register_fixture_models(trained)
    shipped = tmp_path / "shipped"
    for model in ModelRegistry(trained).list_models():
        ship(model, shipped)
    env = stack_env(tmp_path / "home") | {"COLUMNS": "200"}
    settings = settings_from_env(env)
    try:
        demo = subprocess.run(
            [*RADCLOUD, "demo", "--studies", "1", "--timeout-s", "300", "--shipped", str(shipped)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        status = subprocess.run(
            [*RADCLOUD, "status"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        subprocess.run([*RADCLOUD, "down"], env=env, capture_output=True, timeout=120, check=False)

    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    assert "training" not in out  # the shipped models were registered instead
    assert out.count("the shipped model") == 2
    registry = ModelRegistry(settings.paths.models_dir)
    assert {m.name for m in registry.list_models() if m.stage == "production"} == {
        "head-ct-haemorrhage",
        "chest-xr-finding",
    }
    assert "radcloud worklist" in out
    worklist = out[out.index("radcloud worklist") :]
    rows = [line for line in worklist.splitlines() if "head-ct-haemorrhage v1" in line]
    assert rows and "CRITICAL" in rows[0]  # the fixture flags every head CT
    assert "AI score 1.00 (threshold 0.00)" in rows[0]  # uncalibrated: the raw score
    assert "chest-xr-finding v1" in worklist
    first = worklist.index("head-ct-haemorrhage v1")
    assert first < worklist.index("chest-xr-finding v1")  # the critical study is read first
    assert "Services are up" in out and "radcloud down" in out
    assert status.returncode == 0, status.stdout  # the services stayed up
