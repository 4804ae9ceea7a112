"""Test DICOM data: synthetic slices from ``imaging.synthetic``, or pydicom's test files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom.data import get_testdata_file

from core.audit import AuditTrail
from core.db import Database, upgrade
from dicom_gateway.ownership import StudyOwnership
from imaging.synthetic import ct_slice


def pydicom_file(name: str) -> bytes:
    """A pydicom test file's bytes."""
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path).read_bytes()


def synthetic_ct(
    study_uid: str | None = None,
    series_uid: str | None = None,
    *,
    instance: int = 1,
    drop: tuple[str, ...] = (),
    **kwargs: Any,
) -> bytes:
    """A small synthetic CT slice (see :func:`imaging.synthetic.ct_slice`)."""
    return ct_slice(study_uid, series_uid, instance_number=instance, omit=drop, **kwargs)


def study_ownership(directory: Path, db: Database | None = None) -> StudyOwnership:
    """The intake's owner check over ``db`` (a new SQLite database in ``directory`` if none)."""
    if db is None:
        directory.mkdir(parents=True, exist_ok=True)
        db = Database(f"sqlite:///{directory / 'ownership.db'}")
        upgrade(db)
    return StudyOwnership(db, AuditTrail(db, "test-audit-key-" + "k" * 32, "test-chain-key"))
