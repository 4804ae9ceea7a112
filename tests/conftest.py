"""Fixtures shared by the whole suite.

``stack`` starts a real radcloud (Orthanc, the DICOM gateway and the HTTP API) once per session
with ``radcloud up`` on free ports in a temporary ``RADCLOUD_HOME``, and stops it at the end.
Its DICOM edge is the default, Orthanc with radcloud's plugin. ``pynetdicom_doors`` is the same
radcloud's DICOM doors with ``RADCLOUD_GATEWAY_EDGE=pynetdicom`` (Orthanc and the gateway
process with its own DIMSE service and spool; no API, no Ray), also once per session: the DIMSE
suites run against both through :func:`stack_with_edge` (README "The ingest edge").
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
from sqlalchemy import select

from core.archive import OrthancArchive, open_archive
from core.config import GatewayEdge, Settings, load_settings
from core.db import Database
from core.db.models import OutboxEvent
from core.secrets import load_secrets
from dicom_gateway.edge.peers import peer_name
from radcloud.services import Supervisor, gateway_component, orthanc_components
from radcloud.services.postgresql import postgresql_component
from tests.fixture_models import register_fixture_models
from tests.helpers import free_ports, orthanc_client, wait_until
from tests.postgres import PostgresServer, running_postgresql

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


_HOMES = pytest.StashKey[list[Path]]()
_LOG_TAIL_LINES = 60


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the tails of the logs of the radcloud instances it
    started (:func:`make_stack`): CI keeps only what pytest prints."""
    report = yield
    if report.failed:
        for home in item.stash.get(_HOMES, []):
            report.sections.append((f"radcloud logs of {home.name}", log_tails(home)))
    return report


def log_tails(home: Path) -> str:
    """The last lines of every log of the radcloud in ``home``."""
    tails = []
    for log in sorted((home / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        tails.append(f"----- {log.name} (last {len(lines)} lines) -----")
        tails.extend(lines)
    return "\n".join(tails)


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
    "gateway_stow_port",
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
    supervisor: Supervisor | None = None  # only Orthanc and the gateway (start_dicom_doors)

    @property
    def edge(self) -> GatewayEdge:
        """Who answers DICOM on the gateway's port."""
        return self.settings.gateway_edge

    def up(self) -> None:
        """Start what is not running (after a kill): ``radcloud up``, or this stack's own
        components."""
        if self.supervisor is not None:
            self.supervisor.up()
        else:
            self.cli("up")

    def down(self) -> None:
        """Stop every component."""
        if self.supervisor is not None:
            self.supervisor.down()
        else:
            self.cli("down", check=False)

    def orthanc_peers(self) -> set[str]:
        """The names of Orthanc's DICOM peers (where the Orthanc edge mirrors registrations)."""
        secrets = load_secrets(self.settings)
        answer = httpx.get(
            f"{self.settings.orthanc_url}/modalities",
            auth=(secrets.orthanc_user, secrets.orthanc_password),
            timeout=10,
        )
        answer.raise_for_status()
        return set(answer.json())

    def _mirrored(self, ae_title: str) -> None:
        """On the Orthanc edge, wait until its plugin mirrored ``ae_title`` into Orthanc's peers
        (within a second); the pynetdicom edge reads the registry at each association."""
        if self.edge is GatewayEdge.ORTHANC:
            name = peer_name(ae_title)
            assert wait_until(lambda: name in self.orthanc_peers(), timeout_s=15), ae_title

    def add_sender(self, ae_title: str, hospital: str, host: str = "127.0.0.1") -> None:
        """Register a sender (unless it is) with ``radcloud senders add``; once it returns, the
        edge admits it."""
        self.cli_unless_exists("senders", "add", ae_title, "--hospital", hospital, "--host", host)
        self._mirrored(ae_title)

    def add_destination(self, ae_title: str, port: int, hospital: str | None = None) -> None:
        """Register a C-MOVE destination on 127.0.0.1 with ``radcloud destinations add``;
        once it returns, the edge can send to it."""
        scope = ("--hospital", hospital) if hospital else ()
        self.cli(
            "destinations", "add", ae_title, "--host", "127.0.0.1", "--port", str(port), *scope
        )
        self._mirrored(ae_title)

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

    def cli_unless_exists(self, *args: str) -> None:
        """Run ``radcloud ARGS`` (an ``add``), content when what it adds already exists: an
        exact check, where looking for a name in a listing's text also matches another name
        that contains it (a rule "NHS-4711" hid a missing rule "NHS")."""
        result = self.cli(*args, check=False)
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise AssertionError(
                f"radcloud {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )

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
        return Database.from_settings(self.settings)

    def ready_events(self, study_instance_uid: str) -> list[OutboxEvent]:
        """The ``study.ready`` events of a study in this instance's outbox."""
        db = self.database()
        try:
            with db.session() as session:
                return list(
                    session.scalars(
                        select(OutboxEvent).where(
                            OutboxEvent.key == study_instance_uid,
                            OutboxEvent.topic == "study.ready",
                        )
                    )
                )
        finally:
            db.dispose()

    def pid(self, component: str) -> int:
        """The pid of a running component, from its pid file."""
        return int((self.settings.paths.run_dir / f"{component}.pid").read_text().split()[0])

    def client(self, role: str | None = None) -> httpx.Client:
        """An HTTP client for the API, authenticated as ``role`` when given."""
        headers = {"Authorization": f"Bearer {self.token_for(role)}"} if role else {}
        return httpx.Client(base_url=self.settings.api_url, headers=headers, timeout=30)


def start_dicom_doors(home: Path, **settings: object) -> Stack:
    """Only Orthanc and the gateway process of a radcloud in ``home`` (no API, no Ray: seconds
    to start), under a :class:`Supervisor` of its own; ``settings`` as for :func:`stack_env`
    (``gateway_edge`` chooses the DICOM edge; ``postgresql_managed`` adds radcloud's own
    PostgreSQL, ``orthanc_nodes`` the archive nodes)."""
    env = stack_env(home, **settings)
    config = settings_from_env(env)
    secrets = load_secrets(config)
    database = [postgresql_component(config, secrets)] if config.postgresql_managed else []
    supervisor = Supervisor(
        config, [*database, *orthanc_components(config, secrets), gateway_component(config)]
    )
    running = Stack(env, config, supervisor=supervisor)
    supervisor.up()  # a start that fails stops what it did start
    return running


@pytest.fixture
def make_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    """Start extra radcloud instances of a test's own (e.g. to kill their processes);
    ``doors_only=True``: Orthanc and the gateway only (:func:`start_dicom_doors`). When the
    test fails, its report carries the tails of their logs."""
    started: list[Stack] = []

    def start(
        before_up: Callable[[Stack], None] | None = None,
        *,
        doors_only: bool = False,
        **settings: object,
    ) -> Stack:
        home = tmp_path_factory.mktemp("radcloud-own")
        request.node.stash.setdefault(_HOMES, []).append(home)
        if doors_only:
            assert before_up is None
            started.append(start_dicom_doors(home, **settings))
            return started[-1]
        env = stack_env(home, **settings)
        running = Stack(env, settings_from_env(env))
        started.append(running)
        if before_up is not None:
            before_up(running)
        running.cli("up")
        return running

    yield start
    for running in started:
        running.down()


@pytest.fixture(scope="session")
def postgresql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL, radcloud's managed server, once per session (per xdist worker)."""
    with running_postgresql(tmp_path_factory.mktemp("postgresql-home")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty application database of each engine: SQLite in ``tmp_path``, and a new
    database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    server: PostgresServer = request.getfixturevalue("postgresql_server")
    return server.new_database()


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


@pytest.fixture(scope="session")
def pynetdicom_doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The pynetdicom edge (``gateway_edge=pynetdicom``: the gateway process's own DIMSE
    service, its spool and forwarder) in front of an Orthanc, once per session: the DIMSE
    suites' stack for that edge. No API and no Ray: the suites that need them run on ``stack``
    (the default edge), and those about the spool's STOW-RS path start their own."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    home = tmp_path_factory.mktemp("radcloud-pynetdicom")
    running = start_dicom_doors(home, gateway_edge="pynetdicom")
    try:
        yield running
    finally:
        running.down()


EDGES = list(GatewayEdge)
"""Parameters of a fixture run once per DICOM edge (``ids=edge_id``)."""


def edge_id(edge: GatewayEdge) -> str:
    return f"edge={edge}"


def stack_with_edge(request: pytest.FixtureRequest, edge: GatewayEdge) -> Stack:
    """The session's stack whose DICOM edge is ``edge``: ``stack`` (Orthanc, the default; the
    whole radcloud) or ``pynetdicom_doors``. Both start on first use and live for the
    session."""
    running: Stack = request.getfixturevalue(
        "stack" if edge is GatewayEdge.ORTHANC else "pynetdicom_doors"
    )
    return running
