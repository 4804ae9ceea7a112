"""Backup and restore of one radcloud (issue 18, item 4).

:func:`create_backup` writes an online, consistent backup into a new directory (the
application database first, then every instance of the archive, the model registry, the
settings and, sealed with a passphrase, the secrets; :mod:`core.backup.backup`);
:func:`restore_backup` brings one back into a fresh home (:mod:`core.backup.restore`).
Errors: see :mod:`core.backup.exceptions`.
"""

from core.backup._secrets_box import read_passphrase
from core.backup.backup import BackupResult, create_backup, newest_backup
from core.backup.exceptions import (
    BackupArchiveError,
    BackupCorruptError,
    BackupError,
    BackupSpaceError,
    RestoreSecretsError,
    RestoreTargetNotEmptyError,
)
from core.backup.manifest import BackupManifest, InstanceRecord, read_instances
from core.backup.restore import RESTORED_SETTINGS, RestoreResult, check_restorable, restore_backup

__all__ = [
    "RESTORED_SETTINGS",
    "BackupArchiveError",
    "BackupCorruptError",
    "BackupError",
    "BackupManifest",
    "BackupResult",
    "BackupSpaceError",
    "InstanceRecord",
    "RestoreResult",
    "RestoreSecretsError",
    "RestoreTargetNotEmptyError",
    "check_restorable",
    "create_backup",
    "newest_backup",
    "read_instances",
    "read_passphrase",
    "restore_backup",
]
