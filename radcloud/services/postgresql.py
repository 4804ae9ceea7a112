"""radcloud's own PostgreSQL server (``RADCLOUD_POSTGRESQL_MANAGED=true``): the application
database of the scale profile, started and checked by ``radcloud up`` like Orthanc.

The server is Debian's ``postgresql`` (its ``postgres`` program run in the foreground, so the
supervisor owns it like any component); it listens on loopback only, on
``RADCLOUD_POSTGRESQL_PORT``, with its Unix socket in a directory only it can use. Its data
directory (``RADCLOUD_POSTGRESQL_DATA_DIR``, default ``RADCLOUD_HOME/postgresql/data``) is
created by ``initdb`` on the first start with one role, ``radcloud``, whose password is a
generated secret (``database_password`` in ``secrets.json``), SCRAM-SHA-256 authentication for
every connection, and UTF-8. Each ``radcloud up`` then creates the ``radcloud`` database if it
is missing, before the migrations run. PostgreSQL refuses to run as root: as root, its programs
run as the ``postgres`` system user that Debian's package creates, which must be able to reach
the data directory (``RADCLOUD_HOME`` itself is private to root, so a root installation names a
data directory elsewhere, e.g. ``/var/lib/radcloud/postgresql``; ``up`` says so if it cannot).

A deployment with its own PostgreSQL (several machines, a managed service) leaves this off and
names the server with ``RADCLOUD_DATABASE_URL``.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any

from core.config import ENV_PREFIX, MANAGED_DATABASE, ORTHANC_DATABASE, OrthancIndex, Settings
from core.exceptions import ConfigError, DependencyMissingError, StartupError
from core.files import private_directory
from core.secrets import Secrets
from radcloud.services.supervisor import Component

__all__ = [
    "POSTGRESQL_INSTALL",
    "create_database",
    "data_directory",
    "ensure_database",
    "postgresql_component",
]

POSTGRESQL_INSTALL = "apt-get install -y postgresql"
PSYCOPG_INSTALL = "pip install -e '.[postgres]'"
_SERVER_USER = "postgres"  # Debian's system user of the server
_CONNECT_TIMEOUT_S = 2


def data_directory(settings: Settings) -> Path:
    """The managed server's data directory."""
    return settings.postgresql_data_dir or settings.paths.postgresql_dir / "data"


def _programs() -> Path | None:
    """The directory of ``postgres`` and ``initdb`` (Debian keeps them out of ``PATH``, under
    ``/usr/lib/postgresql/VERSION/bin``), the newest version first."""
    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (directory / "postgres").exists() and (directory / "initdb").exists():
            return directory
    found = shutil.which("postgres")
    return Path(found).parent if found else None


def _as_server_user() -> list[str]:
    """The prefix that runs a PostgreSQL program as the server's user when radcloud is root."""
    return ["runuser", "-u", _SERVER_USER, "--"] if os.geteuid() == 0 else []


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        account = pwd.getpwnam(_SERVER_USER)
        os.chown(path, account.pw_uid, account.pw_gid)


def _connect(settings: Settings, secrets: Secrets, database: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(
        host="127.0.0.1",
        port=settings.postgresql_port,
        user=MANAGED_DATABASE,
        password=secrets.database_password,
        dbname=database,
        connect_timeout=_CONNECT_TIMEOUT_S,
        autocommit=True,
    )


def _accepts(settings: Settings, secrets: Secrets) -> bool:
    """Whether the server accepts radcloud's role (the health check)."""
    import psycopg

    try:
        with _connect(settings, secrets) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def create_database(settings: Settings, secrets: Secrets) -> None:
    """Create the application's database on the managed server if it is missing, and Orthanc's
    (``orthanc``) when its index is to live there too (``orthanc_index=postgresql`` without a
    URL of its own)."""
    ensure_database(settings, secrets, MANAGED_DATABASE)
    if settings.orthanc_index is OrthancIndex.POSTGRESQL and not settings.orthanc_postgresql_url:
        ensure_database(settings, secrets, ORTHANC_DATABASE)


def ensure_database(settings: Settings, secrets: Secrets, name: str) -> None:
    """Create the database ``name``, owned by radcloud's role, on the managed server if it is
    missing."""
    from psycopg import sql

    with _connect(settings, secrets) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if exists.fetchone() is None:
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                    sql.Identifier(name), sql.Identifier(MANAGED_DATABASE)
                )
            )


def _prepare(settings: Settings, secrets: Secrets, programs: Path | None) -> None:
    """Check what the server needs, and ``initdb`` its data directory on the first start."""
    if programs is None:
        raise DependencyMissingError("PostgreSQL (postgres, initdb)", POSTGRESQL_INSTALL)
    try:
        import psycopg  # noqa: F401 - the health check and the application's driver
    except ImportError as exc:
        raise DependencyMissingError("psycopg (PostgreSQL driver)", PSYCOPG_INSTALL) from exc
    data = data_directory(settings)
    _traversable_parents(data.parent)
    private_directory(data.parent)
    _give_to_server_user(data.parent)
    sockets = data.parent / "run"
    private_directory(sockets)
    _give_to_server_user(sockets)
    if os.geteuid() == 0 and not _server_user_reaches(data.parent):
        raise ConfigError(
            f"{ENV_PREFIX}POSTGRESQL_DATA_DIR",
            str(data),
            f"a directory the {_SERVER_USER} user, who runs PostgreSQL for root, can reach "
            f"({data.parent} is not; e.g. /var/lib/radcloud/postgresql/data)",
        )
    if (data / "PG_VERSION").exists():
        return
    password_file = data.parent / "initdb-password"
    password_file.write_text(secrets.database_password + "\n")
    password_file.chmod(0o600)
    _give_to_server_user(password_file)
    try:
        initdb = [
            *_as_server_user(),
            str(programs / "initdb"),
            "--pgdata",
            str(data),
            "--username",
            MANAGED_DATABASE,
            "--pwfile",
            str(password_file),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        ]
        done = subprocess.run(initdb, capture_output=True, text=True, check=False, timeout=300)
    finally:
        password_file.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StartupError("postgresql", f"initdb failed:\n{done.stdout}{done.stderr}")


def _traversable_parents(directory: Path) -> None:
    """Create the missing parents of ``directory`` traversable by the server's user (0711: it
    may pass through them, not list them)."""
    missing = [parent for parent in directory.parents if not parent.exists()]
    for parent in reversed(missing):
        parent.mkdir(mode=0o711, exist_ok=True)
        parent.chmod(0o711)


def _server_user_reaches(directory: Path) -> bool:
    check = [*_as_server_user(), "test", "-w", str(directory)]
    return subprocess.run(check, capture_output=True, check=False, timeout=30).returncode == 0


def postgresql_component(settings: Settings, secrets: Secrets) -> Component:
    """The managed PostgreSQL server (``postgres`` in the foreground).

    Parameters
    ----------
    settings, secrets
        The instance's settings (``postgresql_port``, ``postgresql_data_dir``) and the role's
        password.

    Returns
    -------
    Component
        Named ``postgresql``, healthy when radcloud's role can connect; it provides the
        database, so ``up`` starts it before the migrations, and creates the application's
        database once it is healthy.
    """
    programs = _programs()
    data = data_directory(settings)
    port = settings.postgresql_port
    argv = [
        *_as_server_user(),
        str(programs / "postgres") if programs else "postgres",
        "-D",
        str(data),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={data.parent / 'run'}",
    ]
    return Component.create(
        settings,
        name="postgresql",
        argv=argv,
        ports=[(port, f"{ENV_PREFIX}POSTGRESQL_PORT")],
        health=functools.partial(_accepts, settings, secrets),
        url=f"postgresql://127.0.0.1:{port}/{MANAGED_DATABASE}",
        prepare=functools.partial(_prepare, settings, secrets, programs),
        provides_database=functools.partial(create_database, settings, secrets),
    )
