"""Secrets generated at first start into ``RADCLOUD_HOME/secrets.json`` (mode 0600).

No secret has a default value. ``RADCLOUD_JWT_SECRET`` may override the token signing key (at
least 32 characters outside dev mode); everything else is generated here and never leaves the
file. The file is created atomically with ``O_EXCL`` so two processes starting together agree.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from radcloud.config import Mode, Settings
from radcloud.exceptions import SecretsError

__all__ = ["Secrets", "load_secrets"]

_FIELDS = ("jwt_signing_key", "audit_hmac_key", "orthanc_password")


@dataclass(frozen=True, repr=False)
class Secrets:
    """Generated credentials; ``repr`` never shows them."""

    jwt_signing_key: str
    audit_hmac_key: str
    orthanc_password: str
    orthanc_user: str = "radcloud"

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


def _generate() -> dict[str, str]:
    return {name: secrets.token_urlsafe(48) for name in _FIELDS}


def _write_new(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(_generate(), handle)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # atomic, and fails if another process won the race
    except FileExistsError:
        pass  # the other process's file stands; ours is discarded below
    finally:
        tmp.unlink()


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
        When the file is readable by group or others, unreadable, or incomplete.
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
        values = {name: str(data[name]) for name in _FIELDS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SecretsError(path, f"unreadable or incomplete ({exc})") from exc
    if settings.jwt_secret:
        values["jwt_signing_key"] = settings.jwt_secret
    return Secrets(**values)
