"""radcloud's own PostgreSQL (``RADCLOUD_POSTGRESQL_MANAGED``, issue 18): started by ``up``
before the migrations, on loopback only, its role's password a generated secret, its data kept
across restarts; and the whole radcloud on it, from a study sent with storescu to its triage
on the worklist. The database-touching suites run on it too (the ``database_url`` fixture)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from sqlalchemy import make_url, select, text

from core.config import load_settings
from core.db import Database, current_revision, head_revision
from core.db.models import OutboxEvent
from core.exceptions import ConfigError
from core.secrets import load_secrets
from imaging.synthetic import generate_study
from radcloud.services import Supervisor
from radcloud.services.postgresql import postgresql_component
from tests.conftest import Stack
from tests.fixture_models import register_fixture_models
from tests.helpers import free_port
from tests.postgres import PostgresServer, running_postgresql
from tests.serving.test_transport import _listening
from tests.serving.test_triage_e2e import push, results


def _listening_on(pid: int, port: int) -> set[str]:
    """The addresses the process tree of ``pid`` listens on at ``port``."""
    root = psutil.Process(pid)
    return {ip for ip, at, _ in _listening([root, *root.children(recursive=True)]) if at == port}


def test_up_starts_it_first_and_migrates_the_application_database_on_it(
    postgresql_server: PostgresServer,
) -> None:
    settings = postgresql_server.settings
    [status] = postgresql_server.supervisor.status()
    assert (status.name, status.healthy) == ("postgresql", True)
    assert status.pid is not None
    assert _listening_on(status.pid, settings.postgresql_port) == {"127.0.0.1"}
    db = Database.from_settings(settings)
    try:
        assert db.engine.dialect.name == "postgresql"
        assert current_revision(db) == head_revision()
    finally:
        db.dispose()
    assert make_url(settings.sqlalchemy_url).password is None  # a secret, not a setting


def test_a_wrong_password_is_refused(postgresql_server: PostgresServer) -> None:
    url = make_url(postgresql_server.url).set(drivername="postgresql", password="guessed")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=5)


def test_the_data_outlives_a_restart(tmp_path: Path) -> None:
    with running_postgresql(tmp_path / "home") as server:
        db = Database(server.url)
        with db.engine.begin() as connection:
            connection.execute(
                text("INSERT INTO hospitals (name, created_at) VALUES ('Kept', '2026-12-07')")
            )
        db.dispose()
        assert server.supervisor.down() == ["postgresql"]
        assert not server.supervisor.status()[0].running
        server.supervisor.up()
        db = Database(server.url)
        with db.engine.connect() as connection:
            names = connection.execute(text("SELECT name FROM hospitals")).scalars().all()
        db.dispose()
        assert names == ["Kept"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_data_directory_the_server_user_cannot_reach_is_refused_with_the_setting_to_change(
    tmp_path: Path,
) -> None:
    # pytest's temporary directories are private to root
    settings = load_settings(
        home=tmp_path / "home",
        postgresql_managed=True,
        postgresql_port=free_port(),
        postgresql_data_dir=tmp_path / "pg" / "data",
    )
    supervisor = Supervisor(settings, [postgresql_component(settings, load_secrets(settings))])
    with pytest.raises(ConfigError, match="RADCLOUD_POSTGRESQL_DATA_DIR"):
        supervisor.up()
    assert not supervisor.status()[0].running
    assert not (tmp_path / "pg" / "data").exists()


def test_a_database_url_and_the_managed_server_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RADCLOUD_POSTGRESQL_MANAGED"):
        load_settings(
            home=tmp_path,
            postgresql_managed=True,
            database_url="postgresql+psycopg://someone@db.example/radcloud",
        )


@pytest.mark.slow
def test_the_whole_radcloud_runs_on_it_from_storescu_to_the_worklist(
    make_stack: Any, tmp_path: Path
) -> None:
    """``radcloud up`` with the managed PostgreSQL holding the application database and
    Orthanc's index: the gateway's claim and study event, the triage's results, the worklist
    and Orthanc's instances are rows in PostgreSQL; ``down`` stops it last."""
    root = Path(tempfile.mkdtemp(prefix="radcloud-pg-e2e-"))  # pytest's is private to root
    root.chmod(0o711)
    try:
        _whole_radcloud_on_postgresql(make_stack, tmp_path, root / "data")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _whole_radcloud_on_postgresql(make_stack: Any, tmp_path: Path, data: Path) -> None:
    own: Stack = make_stack(
        before_up=lambda s: register_fixture_models(s.settings.paths.models_dir),
        postgresql_managed=True,
        postgresql_port=free_port(),
        postgresql_data_dir=data,
        orthanc_index="postgresql",
    )
    own.add_sender("PGSENDER", "PostgreSQL Hospital")
    head = generate_study("head-ct", 5, seed=44, positive=True)
    push(own, tmp_path / "head", head.datasets, sender="PGSENDER")
    (result,) = results(own, head.study_instance_uid)
    assert result["status"] == "succeeded" and result["critical"] is True
    db = own.database()
    try:
        assert db.engine.dialect.name == "postgresql"
        with db.session() as session:
            [event] = session.scalars(
                select(OutboxEvent).where(OutboxEvent.key == head.study_instance_uid)
            ).all()
            assert event.payload["instance_count"] == len(head.datasets)
    finally:
        db.dispose()
    with own.client("radiologist") as client:
        items = client.get("/api/worklist", params={"limit": 500}).json()["items"]
    [item] = [i for i in items if i["study_instance_uid"] == head.study_instance_uid]
    assert item["priority_class"] == "critical"
    # Orthanc's index is the managed server's "orthanc" database: the study's instances, its
    # SEG and SR (resource type 3: instance) are rows there
    orthanc_index = make_url(Database.from_settings(own.settings).url).set(
        drivername="postgresql", database="orthanc"
    )
    with psycopg.connect(orthanc_index.render_as_string(hide_password=False)) as connection:
        [(instances,)] = connection.execute(
            "SELECT count(*) FROM resources WHERE resourcetype = 3"
        ).fetchall()
    assert instances == len(head.datasets) + 2
    own.cli("down")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host="127.0.0.1", port=own.settings.postgresql_port, user="x", connect_timeout=5
        )
