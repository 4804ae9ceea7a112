"""Whatever command runs first in a new ``RADCLOUD_HOME``, what it creates is private: the home
directory (and any parent it had to create) 0700, the secrets file and the SQLite database
(with its WAL files) 0600, under the usual umask 0022 that would otherwise make them readable
by every local user.

Each command runs as a real ``python -m radcloud`` process, the first in its home.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db import Database, upgrade
from core.files import private_directory
from tests.audit_records import radcloud


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """Umask 0022 (files 0644, directories 0755 by default) for this process and its children."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    """The permission bits of ``root`` and everything under it, by path relative to ``root``."""
    modes = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        modes[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return modes


@pytest.mark.usefixtures("usual_umask")
@pytest.mark.parametrize(
    "command",
    [
        ("db", "upgrade"),
        ("users", "add", "alice", "--role", "radiologist"),
        ("audit", "verify"),
        ("quarantine", "list"),
        ("senders", "list"),
        ("apikeys", "create", "edge-1", "--role", "pacs"),
    ],
)
def test_first_command_creates_a_private_home(tmp_path: Path, command: tuple[str, ...]) -> None:
    home = tmp_path / "not" / "yet" / "home"
    result = radcloud(home, *command)
    assert result.returncode == 0, result.stderr
    assert home.is_dir()
    for parent in (tmp_path / "not", tmp_path / "not" / "yet"):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700, parent
    modes = _modes(home)
    readable_by_others = {path: f"{mode:04o}" for path, mode in modes.items() if mode & 0o077}
    assert readable_by_others == {}, f"radcloud {' '.join(command)}"
    assert modes["."] == 0o700
    if (home / "core.db").exists():
        assert modes["core.db"] == 0o600
    if (home / "secrets.json").exists():
        assert modes["secrets.json"] == 0o600


@pytest.mark.usefixtures("usual_umask")
def test_sqlite_database_and_its_wal_are_created_private(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fresh' / 'app.db'}")
    try:
        upgrade(db)
        with db.session() as session:  # an open connection keeps the -wal and -shm files
            session.connection()
            files = sorted(p.name for p in (tmp_path / "fresh").iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "fresh").iterdir()}
    finally:
        db.dispose()
    assert "app.db" in files
    assert "app.db-wal" in files
    assert all(mode == 0o600 for mode in modes.values()), modes
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700


def test_existing_directories_keep_their_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    private_directory(shared / "home")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "home").stat().st_mode) == 0o700
