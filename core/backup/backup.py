"""``radcloud backup``: an online, consistent snapshot of one radcloud into a directory.

The order is what makes it consistent while ingest goes on:

1. the application database first (:mod:`core.backup._database`: one consistent snapshot);
2. then the image archive, every instance Orthanc holds when it is walked
   (:mod:`core.backup._archive_copy`). Ingest only adds instances, so every study and instance
   the database snapshot names is already in the archive when the archive is copied: the copy
   may hold more (instances that arrived after the snapshot, which the restored gateway's
   change cursor does not count again), never less (unless an instance is deleted between the
   two steps);
3. the model registry (``models_dir``), the settings (the TOML file and the effective
   non-secret settings) and, only sealed with the operator's passphrase, ``secrets.json``.

Everything is written into ``DIR.partial`` and renamed to ``DIR`` once ``manifest.json`` (the
sha256 of every file) is written: a backup that failed (the archive down, a full disk) leaves
no directory that looks complete, and its ``.partial`` is removed.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from core import __version__
from core.archive import ArchiveError, OrthancArchive
from core.backup._archive_copy import copy_archive
from core.backup._database import snapshot_database
from core.backup._secrets_box import seal_secrets
from core.backup.exceptions import BackupArchiveError, BackupError, BackupSpaceError
from core.backup.manifest import (
    INSTANCES,
    MANIFEST,
    BackupManifest,
    InstanceRecord,
    read_instances,
    sha256_file,
)
from core.config import Settings, config_file, secret_setting_names, settings_env
from core.db import Database

__all__ = ["BackupResult", "create_backup", "newest_backup"]

logger = logging.getLogger(__name__)

SECRETS_SEALED = "secrets/secrets.json.sealed"
SETTINGS_DIR = "settings"
MODELS_DIR = "models"


@dataclass(frozen=True)
class BackupResult:
    """A finished backup: where it is, its manifest, and how its instances got there."""

    path: Path
    manifest: BackupManifest
    fetched: int
    linked: int


def newest_backup(parent: Path) -> Path | None:
    """The newest complete backup (one with a manifest) directly under ``parent``."""
    found: list[tuple[str, Path]] = []
    if not parent.is_dir():
        return None
    for candidate in parent.iterdir():
        if candidate.is_dir() and (candidate / MANIFEST).is_file():
            try:
                created = str(json.loads((candidate / MANIFEST).read_text())["created_at"])
            except (OSError, ValueError, KeyError):
                continue
            found.append((created, candidate))
    return max(found)[1] if found else None


def _previous(since: Path) -> dict[str, tuple[Path, InstanceRecord]]:
    BackupManifest.read(since)  # a complete backup, or BackupCorruptError
    return {record.orthanc_id: (since, record) for record in read_instances(since)}


def _copy_models(settings: Settings, directory: Path) -> str:
    source = settings.paths.models_dir
    if not source.is_dir() or not any(source.iterdir()):
        return "empty"
    shutil.copytree(source, directory / MODELS_DIR, symlinks=True)
    return "included"


def _copy_settings(settings: Settings, directory: Path, passphrase: bytes | None) -> str:
    """The effective non-secret settings, and the TOML file: as it is when it holds no secret
    setting, sealed with the passphrase when it does (left out without one)."""
    target = directory / SETTINGS_DIR
    target.mkdir(mode=0o700)
    environment = settings_env(settings)
    (target / "environment.json").write_text(json.dumps(environment, indent=2, sort_keys=True))
    toml = config_file()
    if toml is None:
        return "environment"
    content = toml.read_bytes()
    secret_keys = set(tomllib.loads(content.decode())) & secret_setting_names()
    if not secret_keys:
        (target / "radcloud.toml").write_bytes(content)
        return "environment, radcloud.toml"
    if passphrase is None:
        logger.warning(
            "%s holds secret settings (%s) and no passphrase was given: it is left out",
            toml,
            ", ".join(sorted(secret_keys)),
        )
        return "environment (radcloud.toml left out: it holds secrets)"
    (target / "radcloud.toml.sealed").write_bytes(seal_secrets(content, passphrase))
    return "environment, radcloud.toml (sealed: it holds secrets)"


def _seal(settings: Settings, directory: Path, passphrase: bytes | None) -> str:
    if passphrase is None:
        return "absent"
    sealed = directory / SECRETS_SEALED
    sealed.parent.mkdir(mode=0o700)
    sealed.write_bytes(seal_secrets(settings.paths.secrets_file.read_bytes(), passphrase))
    return "encrypted"


def _hashes(directory: Path, instances: list[InstanceRecord]) -> dict[str, str]:
    known = {record.path: record.sha256 for record in instances}
    files: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            relative = path.relative_to(directory).as_posix()
            files[relative] = known.get(relative) or sha256_file(path)
    return files


def create_backup(
    settings: Settings,
    db: Database,
    archive: OrthancArchive,
    out: Path,
    *,
    since: Path | None = None,
    full: bool = False,
    passphrase: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> BackupResult:
    """Back up this radcloud into the new directory ``out`` (see the module docstring).

    Parameters
    ----------
    settings, db, archive
        The radcloud backed up: its settings, application database and image archive.
    out
        The backup's directory; it must not exist (``out.partial`` is written first).
    since
        A previous backup whose unchanged instance files are linked instead of fetched; by
        default the newest complete backup beside ``out``.
    full
        Fetch every instance (no previous backup is looked for).
    passphrase
        Seals ``secrets.json`` into the backup; without it the secrets are left out.
    progress
        Called with the number of instances copied so far.

    Raises
    ------
    BackupArchiveError
        The archive did not answer (before or during the copy).
    BackupSpaceError
        The device of ``out`` is full.
    BackupError
        ``out`` exists, the database snapshot failed, a previous backup is incomplete.
    """
    out = out.absolute()
    if out.exists():
        raise BackupError(f"{out} exists: a backup goes into a new directory")
    partial = out.with_name(out.name + ".partial")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} is not a directory")
    previous_dir = None if full else (since or newest_backup(out.parent))
    previous = _previous(previous_dir) if previous_dir is not None else None
    try:
        archive.latest_change()  # fail before writing anything when the archive is down
    except ArchiveError as exc:
        raise BackupArchiveError(archive.url, str(exc)) from exc
    if partial.exists():
        shutil.rmtree(partial)  # a failed run's leftover: never a complete backup
    partial.mkdir(mode=0o700)
    try:
        return _write(
            settings,
            db,
            archive,
            out=out,
            partial=partial,
            previous_dir=previous_dir,
            previous=previous,
            passphrase=passphrase,
            progress=progress,
        )
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise BackupSpaceError(out) from exc
        raise BackupError(f"writing the backup {out} failed: {exc}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _write(
    settings: Settings,
    db: Database,
    archive: OrthancArchive,
    *,
    out: Path,
    partial: Path,
    previous_dir: Path | None,
    previous: dict[str, tuple[Path, InstanceRecord]] | None,
    passphrase: bytes | None,
    progress: Callable[[int], None] | None,
) -> BackupResult:
    timings: dict[str, float] = {}
    started = time.monotonic()
    snapshot = snapshot_database(db, partial)  # first: see the module docstring
    timings["database"] = round(time.monotonic() - started, 3)
    mark = time.monotonic()
    copy = copy_archive(archive, partial, previous, progress=progress)
    timings["archive"] = round(time.monotonic() - mark, 3)
    with (partial / INSTANCES).open("w", encoding="utf-8") as handle:
        for record in copy.instances:
            handle.write(json.dumps(asdict(record), sort_keys=True) + "\n")
    parts = {
        "database": snapshot.engine,
        "archive": "incremental" if copy.linked else "full",
        "models": _copy_models(settings, partial),
        "settings": _copy_settings(settings, partial, passphrase),
        "secrets": _seal(settings, partial, passphrase),
    }
    studies = {record.study_instance_uid for record in copy.instances}
    counts = snapshot.counts | {
        "instances": len(copy.instances),
        "archive_studies": len(studies),
        "instances_fetched": copy.fetched,
        "instances_linked": copy.linked,
    }
    files = _hashes(partial, copy.instances)
    timings["total"] = round(time.monotonic() - started, 3)
    manifest = BackupManifest(
        radcloud_version=__version__,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        database_engine=snapshot.engine,
        migration_head=snapshot.migration_head,
        counts=counts,
        parts=parts,
        files=files,
        incremental_from=str(previous_dir) if previous_dir is not None else None,
        timings_s=timings,
    )
    manifest.write(partial)
    partial.rename(out)
    logger.info(
        "backup %s: %d instances (%d fetched, %d linked)",
        out,
        len(copy.instances),
        copy.fetched,
        copy.linked,
    )
    return BackupResult(out, manifest, copy.fetched, copy.linked)
