"""Errors of backup and restore (:mod:`core.backup`)::

BackupError
├── BackupArchiveError(url, reason)          the archive did not answer during a backup
├── BackupSpaceError(path)                   no space left where the backup is written
├── BackupCorruptError(path, reason)         a file's hash differs from the manifest
├── RestoreTargetNotEmptyError(home, found)  the home already holds data (``--force``)
└── RestoreSecretsError(reason)              no secrets to restore, or the wrong ones
"""

from __future__ import annotations

from pathlib import Path

from core.exceptions import RadcloudError

__all__ = [
    "BackupArchiveError",
    "BackupCorruptError",
    "BackupError",
    "BackupSpaceError",
    "RestoreSecretsError",
    "RestoreTargetNotEmptyError",
]


class BackupError(RadcloudError):
    """Root of the backup and restore errors."""


class BackupArchiveError(BackupError):
    """The image archive could not be read (or written, on restore): nothing complete was left.

    Parameters
    ----------
    url
        The archive's address.
    reason
        What went wrong.
    """

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"the image archive at {url} failed: {reason}")


class BackupSpaceError(BackupError):
    """No space left on the device that holds ``path`` (ENOSPC)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"no space left on the device of {path}: free space or choose another --out"
        )


class BackupCorruptError(BackupError):
    """A backup's file is missing or does not match the manifest's sha256."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"backup file {path} is corrupt: {reason}")


class RestoreTargetNotEmptyError(BackupError):
    """The home a restore would write into already holds data."""

    def __init__(self, home: Path, found: str) -> None:
        self.home = home
        self.found = found
        super().__init__(
            f"{home} already holds data ({found}): restore into a fresh RADCLOUD_HOME, or give "
            "--force to replace it"
        )


class RestoreSecretsError(BackupError):
    """The secrets cannot be restored: none given, a wrong passphrase, or not the backup's."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
