"""``radcloud demo``, the main job, with models already in production (no training)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import RADCLOUD, settings_from_env, stack_env
from tests.fixture_models import register_fixture_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_sends_studies_and_prints_the_triaged_worklist(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home") | {"COLUMNS": "200"}
    settings = settings_from_env(env)
    register_fixture_models(settings.paths.models_dir)
    try:
        demo = subprocess.run(
            [*RADCLOUD, "demo", "--studies", "1", "--timeout-s", "300"],
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
    assert "training" not in out  # production models were there
    assert "radcloud worklist" in out
    rows = [line for line in out.splitlines() if "head-ct-haemorrhage v1" in line]
    assert rows and "CRITICAL" in rows[0]  # the fixture flags every head CT
    assert "chest-xr-finding v1" in out
    first = out.index("head-ct-haemorrhage v1")
    assert first < out.index("chest-xr-finding v1")  # the critical study is read first
    assert "Services are up" in out and "radcloud down" in out
    assert status.returncode == 0, status.stdout  # the services stayed up
