"""A backup's ``manifest.json`` and the archive's ``archive/instances.jsonl``.

``manifest.json`` says what the backup holds (radcloud version, when, the database engine and
migration head, counts, which parts) and the sha256 of every other file in it; a restore
checks every one before it writes anything. ``archive/instances.jsonl`` has one line per
instance: its Orthanc ID, SOP Instance UID, Study Instance UID, the file's path and sha256,
and the archive's attachment key and size (what an incremental backup compares).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.backup.exceptions import BackupCorruptError

__all__ = [
    "MANIFEST",
    "BackupManifest",
    "InstanceRecord",
    "read_instances",
    "sha256_file",
    "verify_files",
]

MANIFEST = "manifest.json"
INSTANCES = "archive/instances.jsonl"
FORMAT = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class InstanceRecord:
    """One archived instance in a backup (a line of ``archive/instances.jsonl``)."""

    orthanc_id: str
    sop_instance_uid: str
    study_instance_uid: str
    sha256: str
    path: str
    attachment_id: str
    size: int


@dataclass
class BackupManifest:
    """What ``manifest.json`` holds (see the module docstring).

    ``parts`` maps each part (``database``, ``archive``, ``models``, ``settings``, ``secrets``)
    to how it is included (e.g. ``"sqlite"``, ``"encrypted"``, ``"absent"``); ``files`` maps
    every file's path in the backup to its sha256.
    """

    radcloud_version: str
    created_at: str
    database_engine: str
    migration_head: str | None
    counts: dict[str, int]
    parts: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)
    incremental_from: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    format: int = FORMAT

    def write(self, directory: Path) -> None:
        """Write ``manifest.json`` into ``directory``."""
        text = json.dumps(asdict(self), indent=2, sort_keys=True)
        (directory / MANIFEST).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def read(cls, directory: Path) -> BackupManifest:
        """Read ``directory``'s manifest.

        Raises
        ------
        BackupCorruptError
            No manifest (not a complete backup), or an unreadable one.
        """
        path = directory / MANIFEST
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except FileNotFoundError as exc:
            raise BackupCorruptError(path, "missing: not a complete radcloud backup") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise BackupCorruptError(path, f"unreadable ({exc})") from exc


def read_instances(directory: Path) -> list[InstanceRecord]:
    """The instances of the backup in ``directory`` (empty when it has no archive part)."""
    path = directory / INSTANCES
    if not path.exists():
        return []
    try:
        with path.open(encoding="utf-8") as handle:
            return [InstanceRecord(**json.loads(line)) for line in handle if line.strip()]
    except (OSError, ValueError, TypeError) as exc:
        raise BackupCorruptError(path, f"unreadable ({exc})") from exc


def verify_files(directory: Path, manifest: BackupManifest) -> None:
    """Check every file the manifest lists against its sha256.

    Raises
    ------
    BackupCorruptError
        Naming the first file that is missing or differs.
    """
    for relative, expected in sorted(manifest.files.items()):
        path = directory / relative
        try:
            actual = sha256_file(path)
        except FileNotFoundError as exc:
            raise BackupCorruptError(path, "listed in the manifest but missing") from exc
        if actual != expected:
            raise BackupCorruptError(path, f"sha256 {actual}, the manifest says {expected}")
