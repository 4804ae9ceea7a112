"""Private files and directories: what radcloud creates under ``RADCLOUD_HOME`` is its own.

``RADCLOUD_HOME`` holds the secrets, the application database (patient IDs, reports, the audit
trail), the spool and the quarantine (whole DICOM instances). Whichever process creates a part
of it first (``radcloud up``, any CLI command, the gateway or the API started on their own), it
creates directories 0700 and files 0600, whatever the process's umask allows: every missing
parent of a directory too, which :meth:`pathlib.Path.mkdir` would create with the umask's mode.
What exists already is left as it is (an operator may have chosen its mode).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "private_directory", "private_file"]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_directory(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700; returns ``path``.

    Existing directories keep their mode. A parent created here is chmod-ed after ``mkdir`` as
    well, so a umask such as 0077 or 0022 never widens nor narrows what is created.
    """
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile: theirs is private too
        directory.chmod(PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist (its directory 0700); returns
    ``path``.

    Used before a library creates the file with its own mode: SQLite creates a database file
    0644 under the usual umask, and its ``-wal`` and ``-shm`` files take the database file's mode.
    """
    private_directory(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return path
    os.fchmod(fd, PRIVATE_FILE_MODE)
    os.close(fd)
    return path
