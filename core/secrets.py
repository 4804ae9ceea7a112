"""Secrets generated at first start into ``RADCLOUD_HOME/secrets.json`` (mode 0600).

No secret has a default value. ``RADCLOUD_JWT_SECRET`` may override the token signing key (at
least 32 characters outside dev mode); everything else is generated here and never leaves the
file. The file is created atomically with ``O_EXCL`` so two processes starting together agree.
A secret added in a later radcloud version (``deid_hmac_key``) is generated into an older file
on first use, under an exclusive lock (``secrets.lock``) and by atomic replacement, so
processes starting together agree on it too. ``notify_signing_key`` (signs critical-finding
webhooks) and ``gateway_ingest_key`` (authenticates the API process to the gateway's internal
STOW endpoint, :mod:`dicom_gateway.stow`) and ``audit_chain_key`` (keys the audit chain's
HMACs, :mod:`core.audit`) and ``database_password`` (the managed PostgreSQL's, when radcloud
runs one) are added the same way.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from core.config import Mode, Settings
from core.exceptions import SecretsError
from core.files import private_directory

__all__ = ["Secrets", "load_secrets"]

_FIELDS = (
    "jwt_signing_key",
    "audit_hmac_key",
    "orthanc_password",
    "deid_hmac_key",
    "notify_signing_key",
    "gateway_ingest_key",
    "audit_chain_key",
    "database_password",
)
# generated into files written before they existed
_ADDED_LATER = (
    "deid_hmac_key",
    "notify_signing_key",
    "gateway_ingest_key",
    "audit_chain_key",
    "database_password",
)


@dataclass(frozen=True, repr=False)
class Secrets:
    """Generated credentials; ``repr`` never shows them."""

    jwt_signing_key: str
    audit_hmac_key: str
    orthanc_password: str
    deid_hmac_key: str
    """Keys the pseudonyms and UIDs of de-identified exports (``imaging.deid``)."""
    notify_signing_key: str
    """Signs critical-finding webhooks (``serving.notify``); receivers verify with it."""
    gateway_ingest_key: str
    """The API's bearer key at the gateway's internal STOW endpoint (``dicom_gateway.stow``)."""
    audit_chain_key: str
    """Keys the audit chain's MACs (``core.audit``): the database holds none of it, so a record
    rewritten in the table no longer verifies."""
    database_password: str
    """The managed PostgreSQL's password for radcloud's role (``postgresql_managed``,
    :mod:`radcloud.services.postgresql`)."""
    orthanc_user: str = "radcloud"

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


def _generate(names: tuple[str, ...] = _FIELDS) -> dict[str, str]:
    return {name: secrets.token_urlsafe(48) for name in names}


def _write_private(path: Path, data: dict[str, str]) -> Path:
    """Write ``data`` as JSON to a new 0600 file beside ``path``, fsync-ed; returns it."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def _write_new(path: Path) -> None:
    private_directory(path.parent)
    tmp = _write_private(path, _generate())
    try:
        os.link(tmp, path)  # atomic, and fails if another process won the race
    except FileExistsError:
        pass  # the other process's file stands; ours is discarded below
    finally:
        tmp.unlink()


def _add_missing(path: Path) -> dict[str, str]:
    """Generate the secrets of ``_ADDED_LATER`` that ``path`` lacks; returns the file's content.

    Runs under an exclusive ``flock`` and re-reads the file inside it, so of several processes
    only the first generates; the file is replaced atomically (readers see old or new).
    """
    lock = os.open(path.with_name("secrets.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data: dict[str, str] = json.loads(path.read_text())
        missing = tuple(name for name in _ADDED_LATER if name not in data)
        if missing:
            tmp = _write_private(path, data | _generate(missing))
            tmp.replace(path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            data = json.loads(path.read_text())
        return data
    finally:
        os.close(lock)  # releases the lock


def load_secrets(settings: Settings) -> Secrets:
    """Load the instance's secrets, generating them on first use.

    Parameters
    ----------
    settings
        The validated settings; ``settings.paths.secrets_file`` is read or created.

    Returns
    -------
    Secrets
        The secrets, with ``jwt_signing_key`` replaced by ``settings.jwt_secret`` if set.

    Raises
    ------
    SecretsError
        When the file is readable by group or others, unreadable, or incomplete (a secret
        added in a later version is generated instead, see the module docstring).
    """
    path = settings.paths.secrets_file
    if not path.exists():
        _write_new(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        if settings.mode is Mode.PROD:
            raise SecretsError(
                path, f"permissions are {mode:04o}, expected 0600 (run: chmod 600 {path})"
            )
        path.chmod(0o600)
    try:
        data = json.loads(path.read_text())
        original = [name for name in _FIELDS if name not in _ADDED_LATER]
        values = {name: str(data[name]) for name in original}
        if any(name not in data for name in _ADDED_LATER):
            data = _add_missing(path)
        values |= {name: str(data[name]) for name in _ADDED_LATER}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SecretsError(path, f"unreadable or incomplete ({exc})") from exc
    if settings.jwt_secret:
        values["jwt_signing_key"] = settings.jwt_secret
    return Secrets(**values)
