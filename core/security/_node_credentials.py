"""Remote nodes' credentials in ``RADCLOUD_HOME/node-credentials.json`` (mode 0600), private to
:mod:`core.nodes`.

Like ``secrets.json`` (:mod:`core.secrets`): never in the database, never in a log or a
``repr``. Each change rewrites the file atomically (a new 0600 file, fsync-ed, renamed over
the old one) under an exclusive lock (``node-credentials.lock``), so concurrent commands
never lose each other's change and readers see the old file or the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.exceptions import SecretsError
from core.files import private_directory

__all__ = ["NodeCredentialStore", "NodeCredentials"]

FILE_NAME = "node-credentials.json"


@dataclass(frozen=True, repr=False)
class NodeCredentials:
    """How radcloud authenticates at a remote node: HTTP basic, a bearer token, or neither.
    ``repr`` never shows them."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("a node is authenticated by a username and password, or a token")
        if (self.username is None) != (self.password is None):
            raise ValueError("a username needs a password, and a password a username")

    @property
    def kind(self) -> str:
        """``basic``, ``token`` or ``none`` (what the database and ``list`` may show)."""
        if self.token is not None:
            return "token"
        return "basic" if self.username is not None else "none"

    def __repr__(self) -> str:
        return f"NodeCredentials(<{self.kind}, redacted>)"

    def to_json(self) -> dict[str, str]:
        """The non-empty fields (what the file holds)."""
        fields = {"username": self.username, "password": self.password, "token": self.token}
        return {key: value for key, value in fields.items() if value is not None}


class NodeCredentialStore:
    """The credentials file of one ``RADCLOUD_HOME``.

    Parameters
    ----------
    home
        ``settings.home``; the file is ``home / "node-credentials.json"``.
    """

    def __init__(self, home: Path) -> None:
        self.path = home / FILE_NAME
        self._lock_path = home / "node-credentials.lock"

    def _read(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise SecretsError(
                self.path, f"permissions are {mode:04o}, expected 0600 (run: chmod 600 {self.path})"
            )
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise SecretsError(self.path, f"unreadable ({exc})") from exc
        if not isinstance(data, dict):
            raise SecretsError(self.path, "expected a JSON object of node names")
        return data

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, str]]]:
        """The file's content, under the lock; what the caller leaves in it is written back."""
        private_directory(self.path.parent)
        lock = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            self._write(data)
        finally:
            os.close(lock)

    def _write(self, data: dict[str, dict[str, str]]) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def get(self, name: str) -> NodeCredentials | None:
        """The credentials of node ``name``; ``None`` when it has none stored."""
        entry = self._read().get(name)
        if not isinstance(entry, dict):
            return None
        try:
            return NodeCredentials(entry.get("username"), entry.get("password"), entry.get("token"))
        except ValueError as exc:
            raise SecretsError(self.path, f'the entry of "{name}" is invalid: {exc}') from exc

    def put(self, name: str, credentials: NodeCredentials) -> None:
        """Store (or replace) the credentials of node ``name``; none stored for ``kind`` none."""
        with self._locked() as data:
            if credentials.kind == "none":
                data.pop(name, None)
            else:
                data[name] = credentials.to_json()

    def delete(self, name: str) -> bool:
        """Forget node ``name``'s credentials; whether there were any."""
        with self._locked() as data:
            return data.pop(name, None) is not None
