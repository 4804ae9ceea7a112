"""A real PostgreSQL for the tests: radcloud's own managed server
(:mod:`radcloud.services.postgresql`, started by a :class:`~radcloud.services.Supervisor` as
``radcloud up`` does), with a fresh database per test."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

from core.config import Settings, load_settings
from core.db import database_url
from core.secrets import load_secrets
from radcloud.services import Supervisor
from radcloud.services.postgresql import ensure_database, postgresql_component
from tests.helpers import free_port

__all__ = ["PostgresServer", "running_postgresql"]


@dataclass
class PostgresServer:
    """The running server: its settings (``postgresql_managed``) and supervisor."""

    settings: Settings
    supervisor: Supervisor

    @property
    def url(self) -> str:
        """The application database's URL, password included."""
        return database_url(self.settings)

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        ensure_database(self.settings, load_secrets(self.settings), name)
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def running_postgresql(home: Path) -> Iterator[PostgresServer]:
    """Start a managed PostgreSQL with its home in ``home`` (its data directory in a temporary
    directory the ``postgres`` user can reach: pytest's are private to root); stop and remove
    it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="radcloud-pg-"))
    root.chmod(0o711)
    settings = load_settings(
        home=home,
        postgresql_managed=True,
        postgresql_port=free_port(),
        postgresql_data_dir=root / "postgresql" / "data",
        log_level="WARNING",
    )
    supervisor = Supervisor(settings, [postgresql_component(settings, load_secrets(settings))])
    try:
        supervisor.up()
        yield PostgresServer(settings, supervisor)
    finally:
        supervisor.down()
        shutil.rmtree(root, ignore_errors=True)
