"""``radcloud restore``: a backup (:mod:`core.backup.backup`) brought back into a fresh home.

In order: every file is checked against the manifest (nothing is written otherwise); the
home must hold no data (``force`` replaces it); the secrets are put in place (from the
backup, sealed, with the passphrase; from a file the operator keeps; or the home's own); the
model registry and the settings; the application database (the SQLite file, or
``pg_restore`` into the configured PostgreSQL, which the caller starts); then the caller
starts the archive (Orthanc) and every instance is stored into it through the archive seam.
Orthanc's IDs are hashes of the instances' UIDs, so the database's ``orthanc_id`` references
hold; the followers of Orthanc's change feed (the gateway's completeness tracker) are moved
to the restored feed's end, so restored instances are not counted as arrivals again. Last,
the counts are compared with the manifest's and the audit chain is verified with the
restored secrets: a chain that does not verify means the secrets are not the backup's.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update

from core.archive import open_archive
from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.backup._archive_copy import upload_archive
from core.backup._database import restore_postgresql, restore_sqlite
from core.backup._secrets_box import open_secrets
from core.backup.backup import MODELS_DIR, SECRETS_SEALED, SETTINGS_DIR
from core.backup.exceptions import (
    BackupError,
    RestoreSecretsError,
    RestoreTargetNotEmptyError,
)
from core.backup.manifest import BackupManifest, read_instances, verify_files
from core.config import Settings
from core.db import Database
from core.db.models import AuditEvent, ChangeCursor, Report, Study, WorklistItem
from core.files import private_directory
from core.secrets import Secrets, load_secrets
from core.security import Actor

__all__ = ["RESTORED_SETTINGS", "RestoreResult", "check_restorable", "restore_backup"]

logger = logging.getLogger(__name__)

RESTORED_SETTINGS = "restored-settings"
_NOT_DATA = {"secrets.json", "secrets.lock"}
_NOT_DATA_DIRS = {"logs", "run"}
_MODELS = {
    "studies": Study,
    "worklist_items": WorklistItem,
    "reports": Report,
    "audit_events": AuditEvent,
}


@dataclass(frozen=True)
class RestoreResult:
    """A finished restore: the manifest it followed and what the restored radcloud holds."""

    manifest: BackupManifest
    instances: int
    counts: dict[str, int]
    audit_records: int


def _data_in(home: Path) -> str | None:
    """The first file of ``home`` that is data (not the secrets, logs or pid files)."""
    if not home.is_dir():
        return None
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home)
        if relative.parts[0] in _NOT_DATA_DIRS or not path.is_file():
            continue
        if len(relative.parts) == 1 and relative.name in _NOT_DATA:
            continue
        return str(relative)
    return None


def check_restorable(settings: Settings, backup: Path, *, force: bool) -> BackupManifest:
    """Check ``backup`` against its manifest and the target home; nothing is written.

    Raises
    ------
    BackupCorruptError
        A file is missing or its sha256 differs (named).
    RestoreTargetNotEmptyError
        The home holds data and ``force`` is not given.
    BackupError
        The backup's database engine is not the configured one.
    """
    manifest = BackupManifest.read(backup)
    verify_files(backup, manifest)
    engine = "sqlite" if settings.sqlalchemy_url.startswith("sqlite") else "postgresql"
    if manifest.database_engine != engine:
        raise BackupError(
            f"the backup's database is {manifest.database_engine}, this radcloud's is {engine}: "
            "restore into a radcloud configured like the one backed up"
        )
    found = _data_in(settings.home)
    if found is not None and not force:
        raise RestoreTargetNotEmptyError(settings.home, found)
    return manifest


def _secrets(
    settings: Settings,
    backup: Path,
    manifest: BackupManifest,
    secrets_file: Path | None,
    passphrase: bytes | None,
) -> None:
    """Put ``secrets.json`` in place (mode 0600)."""
    target = settings.paths.secrets_file
    if secrets_file is not None:
        try:
            content = secrets_file.read_bytes()
        except OSError as exc:
            raise RestoreSecretsError(f"cannot read --secrets {secrets_file}: {exc}") from exc
    elif manifest.parts.get("secrets") == "encrypted" and passphrase is not None:
        content = open_secrets((backup / SECRETS_SEALED).read_bytes(), passphrase)
    elif target.is_file():
        return  # the home's own: the audit chain's check below tells if they are not the backup's
    elif manifest.parts.get("secrets") == "encrypted":
        raise RestoreSecretsError(
            "the backup's secrets are sealed: give --passphrase-file (or --secrets FILE)"
        )
    else:
        raise RestoreSecretsError(
            "the backup holds no secrets: give --secrets FILE (the backed-up radcloud's "
            f"secrets.json) or put it at {target} first; without the same keys the audit "
            "chain cannot be verified and tokens and pseudonyms change"
        )
    private_directory(target.parent)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    target.chmod(0o600)


def _files(settings: Settings, backup: Path) -> None:
    """The model registry and the settings files."""
    models = backup / MODELS_DIR
    if models.is_dir():
        target = settings.paths.models_dir
        if target.exists():
            shutil.rmtree(target)
        private_directory(target.parent)
        shutil.copytree(models, target, symlinks=True)
    restored = settings.home / RESTORED_SETTINGS
    if restored.exists():
        shutil.rmtree(restored)
    shutil.copytree(backup / SETTINGS_DIR, restored)
    restored.chmod(0o700)


def _counts(db: Database) -> dict[str, int]:
    with db.session() as session:
        return {
            name: int(session.scalar(select(func.count()).select_from(model)) or 0)
            for name, model in _MODELS.items()
        }


def restore_backup(
    settings: Settings,
    backup: Path,
    *,
    start_database: Callable[[], None],
    start_archive: Callable[[], None],
    secrets_file: Path | None = None,
    passphrase: bytes | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RestoreResult:
    """Restore ``backup`` into the home of ``settings`` (see the module docstring).

    Parameters
    ----------
    settings
        The target radcloud (its home, ports, database).
    backup
        A complete backup's directory.
    start_database
        Starts the database server where radcloud runs one (the managed PostgreSQL) and
        migrates it; called before a PostgreSQL restore.
    start_archive
        Starts the archive (Orthanc) of the target; called once the database is in place.
    secrets_file, passphrase
        Where the secrets come from (see :func:`_secrets`).
    force
        Replace what the home holds.
    progress
        Called with the number of instances stored so far.

    Raises
    ------
    BackupCorruptError, RestoreTargetNotEmptyError, RestoreSecretsError, BackupArchiveError,
    BackupError
        As their names say; nothing is written before the checks pass.
    """
    manifest = check_restorable(settings, backup, force=force)
    instances = read_instances(backup)
    _secrets(settings, backup, manifest, secrets_file, passphrase)
    secrets = load_secrets(settings)
    _files(settings, backup)
    snapshot = backup / _snapshot_file(manifest)
    if manifest.database_engine == "sqlite":
        restore_sqlite(snapshot, settings.paths.database_file)
        start_database()
    else:
        start_database()
        db = Database.from_settings(settings)
        try:
            restore_postgresql(snapshot, db)
        finally:
            db.dispose()
    db = Database.from_settings(settings)
    try:
        counts = _counts(db)  # before the chain's check, which is itself audited
        _compare(manifest, counts)
        records = _verify_chain(db, secrets)
    finally:
        db.dispose()
    start_archive()
    with open_archive(settings, secrets, timeout_s=120) as archive:
        stored = upload_archive(archive, backup, instances, progress=progress)
        held = archive.get_statistics().instances
        latest = archive.latest_change()
    if held < len(instances):
        raise BackupError(f"the archive holds {held} instances after the restore of {stored}")
    db = Database.from_settings(settings)
    try:
        with db.session() as session:
            session.execute(update(ChangeCursor).values(position=latest))
        AuditTrail.from_secrets(db, secrets).record(
            AuditEventCode.IMPORT,
            actor=Actor.cli(),
            action=AuditAction.CREATE,
            resource_type="backup",
            resource_id=str(backup),
            detail={
                "change": "restored",
                "instances": stored,
                "created_at": manifest.created_at,
                "audit_records_verified": records,
            },
        )
    finally:
        db.dispose()
    return RestoreResult(manifest, stored, counts, records)


def _snapshot_file(manifest: BackupManifest) -> str:
    for name in manifest.files:
        if name.startswith("database/"):
            return name
    raise BackupError("the backup has no database snapshot")


def _compare(manifest: BackupManifest, counts: dict[str, int]) -> None:
    for name, count in counts.items():
        expected = manifest.counts.get(name)
        if expected is not None and count != expected:
            raise BackupError(
                f"the restored database has {count} {name}, the backup's manifest {expected}"
            )


def _verify_chain(db: Database, secrets: Secrets) -> int:
    # unaudited and unsealed: with another radcloud's key, writing would take the chain for an
    # unkeyed one and seal it with a checkpoint
    report = AuditTrail(db, secrets.audit_hmac_key, secrets.audit_chain_key).check()
    if report.first_bad is not None:
        raise RestoreSecretsError(
            f"the restored audit trail does not verify with these secrets (record "
            f"{report.first_bad.seq}: {report.first_bad.reason}): they are not the backed-up "
            "radcloud's secrets.json"
        )
    return report.records
