"""The archive's part of a backup: every instance's file, read through the archive seam, and
its way back on restore.

A backup walks the archive's list of instances (:meth:`OrthancArchive.list_instance_attachments`,
pages of :data:`PAGE`) and fetches each file (``GET /instances/{id}/file``) on a few threads.
Against a previous backup, an instance whose Orthanc ID, attachment key and size are unchanged
is not fetched: the previous backup's file is checked against its recorded sha256 and
hard-linked (copied where a link is impossible, e.g. on another file system).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom

from core.archive import (
    ArchiveError,
    ArchiveNotFoundError,
    ArchiveRejectedError,
    InstanceAttachment,
    OrthancArchive,
)
from core.backup.exceptions import BackupArchiveError, BackupError
from core.backup.manifest import InstanceRecord, sha256_file

__all__ = ["ArchiveCopy", "copy_archive", "upload_archive"]

logger = logging.getLogger(__name__)

PAGE = 1000
WORKERS = 4
FILES = "archive/files"


@dataclass
class ArchiveCopy:
    """What :func:`copy_archive` did: the instances in the backup, how many files were fetched
    from the archive and how many were linked from the previous backup."""

    instances: list[InstanceRecord]
    fetched: int = 0
    linked: int = 0


def _walk(archive: OrthancArchive) -> Iterator[InstanceAttachment]:
    seen: set[str] = set()
    since = 0
    while True:
        page = archive.list_instance_attachments(since=since, limit=PAGE)
        for item in page:
            if item.archive_id not in seen:  # a deletion meanwhile shifts the offsets
                seen.add(item.archive_id)
                yield item
        if len(page) < PAGE:
            return
        since += len(page)


def _uids(data: bytes, orthanc_id: str) -> tuple[str, str]:
    try:
        dataset = pydicom.dcmread(
            BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["SOPInstanceUID", "StudyInstanceUID"],
        )
        return str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID)
    except (pydicom.errors.InvalidDicomError, AttributeError, ValueError) as exc:
        raise BackupError(f"instance {orthanc_id}: the archive's file is not DICOM: {exc}") from exc


def _relative(orthanc_id: str) -> str:
    return f"{FILES}/{orthanc_id[:2]}/{orthanc_id}.dcm"


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        shutil.copyfile(source, target)


def _reuse(
    item: InstanceAttachment, previous: dict[str, tuple[Path, InstanceRecord]], directory: Path
) -> InstanceRecord | None:
    """The previous backup's record of ``item``, linked into ``directory``, when the archive's
    file is unchanged and the previous copy still has its sha256."""
    found = previous.get(item.archive_id)
    if found is None:
        return None
    base, record = found
    if (record.attachment_id, record.size) != (item.attachment_id, item.size):
        return None
    source = base / record.path
    try:
        if sha256_file(source) != record.sha256:
            logger.warning("%s differs from its recorded sha256: fetched again", source)
            return None
    except FileNotFoundError:
        return None
    target = directory / record.path
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _link(source, target)
    return record


def _fetch(
    archive: OrthancArchive, item: InstanceAttachment, directory: Path
) -> InstanceRecord | None:
    try:
        data = archive.retrieve_instance(item.archive_id)
    except ArchiveNotFoundError:
        logger.info("instance %s was deleted during the backup: left out", item.archive_id)
        return None
    sop_instance_uid, study_instance_uid = _uids(data, item.archive_id)
    relative = _relative(item.archive_id)
    target = directory / relative
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.write_bytes(data)
    return InstanceRecord(
        orthanc_id=item.archive_id,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
        sha256=hashlib.sha256(data).hexdigest(),
        path=relative,
        attachment_id=item.attachment_id,
        size=len(data),
    )


def copy_archive(
    archive: OrthancArchive,
    directory: Path,
    previous: dict[str, tuple[Path, InstanceRecord]] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> ArchiveCopy:
    """Copy every instance's file of ``archive`` into ``directory``.

    Parameters
    ----------
    archive
        radcloud's archive.
    directory
        The backup being written; files go to ``archive/files/<2>/<orthanc id>.dcm``.
    previous
        The previous backup's records by Orthanc ID, with that backup's directory: unchanged
        instances are linked from it instead of fetched.
    progress
        Called with the number of instances done so far, now and then.

    Raises
    ------
    BackupArchiveError
        The archive did not answer (Orthanc down) or failed.
    """
    copy = ArchiveCopy(instances=[])
    reuse = previous or {}

    def one(item: InstanceAttachment) -> tuple[InstanceRecord | None, bool]:
        record = _reuse(item, reuse, directory)
        if record is not None:
            return record, False
        return _fetch(archive, item, directory), True

    try:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="backup") as pool:
            for record, fetched in pool.map(one, _walk(archive)):
                if record is None:
                    continue
                copy.instances.append(record)
                if fetched:
                    copy.fetched += 1
                else:
                    copy.linked += 1
                if progress is not None and len(copy.instances) % 100 == 0:
                    progress(len(copy.instances))
    except ArchiveError as exc:
        raise BackupArchiveError(archive.url, str(exc)) from exc
    return copy


def upload_archive(
    archive: OrthancArchive,
    directory: Path,
    instances: list[InstanceRecord],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Store every instance of a backup into ``archive``; returns how many were stored.

    Raises
    ------
    BackupArchiveError
        The archive refused an instance, answered another Orthanc ID than the backup's (the
        application database's references would break), or did not answer.
    """

    def one(record: InstanceRecord) -> None:
        data = (directory / record.path).read_bytes()
        try:
            stored = archive.store_instance(data)
        except ArchiveRejectedError as exc:
            raise BackupArchiveError(archive.url, f"instance {record.orthanc_id}: {exc}") from exc
        if stored.archive_id != record.orthanc_id:
            raise BackupArchiveError(
                archive.url,
                f"instance {record.sop_instance_uid} was stored as {stored.archive_id}, the "
                f"backup's Orthanc ID is {record.orthanc_id}",
            )

    done = 0
    try:
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="restore") as pool:
            for _ in pool.map(one, instances):
                done += 1
                if progress is not None and done % 100 == 0:
                    progress(done)
    except ArchiveError as exc:
        raise BackupArchiveError(archive.url, str(exc)) from exc
    return done
