"""Fixtures shared by the whole suite.

``stack`` starts a real radcloud (Orthanc, the DICOM gateway and the HTTP API) once per session
with ``radcloud up`` on free ports in a temporary ``RADCLOUD_HOME``, and stops it at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.archive import OrthancArchive, open_archive
from core.config import Settings, load_settings
from core.db import Database
from core.secrets import load_secrets
from tests.fixture_models import register_fixture_models
from tests.helpers import free_ports, orthanc_client

RADCLOUD = [sys.executable, "-m", "radcloud"]
STOW_HOSPITAL = "STOW Test Hospital"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Cases marked ``gpu`` are skipped, with the reason, where torch sees no CUDA device."""
    import torch  # lazily: only when collecting

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu: torch sees no CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's RADCLOUD_* variables or a radcloud.toml."""
    for name in list(os.environ):
        if name.startswith("RADCLOUD_"):
            monkeypatch.delenv(name)


PORT_SETTINGS = (
    "api_port",
    "gateway_port",
    "gateway_metrics_port",
    "orthanc_http_port",
    "orthanc_dicom_port",
)


def stack_env(home: Path, **settings: object) -> dict[str, str]:
    """Environment for a radcloud instance in ``home`` on free ports, plus ``settings``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RADCLOUD_")}
    ports = dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True))
    values = {"home": home, "gateway_stable_seconds": 2} | ports | settings
    return clean | {f"RADCLOUD_{key.upper()}": str(value) for key, value in values.items()}


def settings_from_env(env: dict[str, str]) -> Settings:
    """The settings a radcloud process started with ``env`` sees."""
    return load_settings(
        **{
            k.removeprefix("RADCLOUD_").lower(): v
            for k, v in env.items()
            if k.startswith("RADCLOUD_")
        }
    )


@dataclass
class Stack:
    """A running radcloud: its environment, settings and helpers to drive it."""

    env: dict[str, str]
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``radcloud ARGS`` against this instance."""
        result = subprocess.run(
            [*RADCLOUD, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"radcloud {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def token_for(self, role: str) -> str:
        """A bearer token of a user (created on first use) holding ``role``: a platform
        operator, except ``pacs``, which stores for hospital ``STOW_HOSPITAL`` (the hospital
        boundary itself: ``tests/serving/test_tenancy.py``)."""
        if role not in self.tokens:
            name = f"test-{role}"
            scope = ("--hospital", STOW_HOSPITAL) if role == "pacs" else ("--platform-operator",)
            self.cli("users", "add", name, "--role", role, *scope)
            self.tokens[role] = self.cli("token", name).stdout.strip()
        return self.tokens[role]

    def orthanc(self) -> Any:
        """A pyorthanc client for this instance's Orthanc (close it when done)."""
        return orthanc_client(self.settings, load_secrets(self.settings))

    def archive(self) -> OrthancArchive:
        """This instance's image archive (close it when done)."""
        return open_archive(self.settings, load_secrets(self.settings))

    def database(self) -> Database:
        """This instance's application database."""
        return Database(self.settings.sqlalchemy_url)

    def pid(self, component: str) -> int:
        """The pid of a running component, from its pid file."""
        return int((self.settings.paths.run_dir / f"{component}.pid").read_text().split()[0])

    def client(self, role: str | None = None) -> httpx.Client:
        """An HTTP client for the API, authenticated as ``role`` when given."""
        headers = {"Authorization": f"Bearer {self.token_for(role)}"} if role else {}
        return httpx.Client(base_url=self.settings.api_url, headers=headers, timeout=30)


@pytest.fixture
def make_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Stack]]:
    """Start extra radcloud instances of a test's own (e.g. to kill their processes)."""
    started: list[Stack] = []

    def start(before_up: Callable[[Stack], None] | None = None, **settings: object) -> Stack:
        env = stack_env(tmp_path_factory.mktemp("radcloud-own"), **settings)
        running = Stack(env, settings_from_env(env))
        started.append(running)
        if before_up is not None:
            before_up(running)
        running.cli("up")
        return running

    yield start
    for running in started:
        running.cli("down", check=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real radcloud started with ``radcloud up`` (needs Orthanc installed), serving the
    slim fixture models of ``tests/fixture_models.py`` (every head CT critical, no radiograph)."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    home = tmp_path_factory.mktemp("radcloud-home")
    env = stack_env(home)
    running = Stack(env, settings_from_env(env))
    register_fixture_models(running.settings.paths.models_dir)
    try:
        running.cli("up")  # inside: a start that fails stops what it did start
        yield running
    finally:
        running.cli("down", check=False)
