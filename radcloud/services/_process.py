"""Process bookkeeping for the supervisor: pid files, liveness, log tails, stopping.

A pid file holds the pid and the process's start time from ``/proc/<pid>/stat``, so that a
recycled pid is never mistaken for, or signalled as, a component.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from core.files import private_directory

__all__ = [
    "alive",
    "log_tail",
    "read_pid_file",
    "terminate",
    "track_child",
    "write_pid_file",
]

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 20

# Popen objects of the processes this interpreter started, kept so they can be reaped (a dead
# child stays a zombie, and looks alive, until its parent waits for it).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def track_child(process: subprocess.Popen[bytes]) -> None:
    """Keep ``process`` so that :func:`alive` can reap it once it exits."""
    _CHILDREN[process.pid] = process


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces
    return fields[19] if len(fields) > 19 else None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] == "Z"


def alive(pid: int, start_time: str | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process, and the same one if ``start_time``."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours, whatever the pid file says
    if _is_zombie(pid):
        return False
    return start_time is None or _start_time(pid) in (None, start_time)


def read_pid_file(path: Path) -> tuple[int, str | None] | None:
    """``(pid, start_time)`` from a pid file; ``None`` when it is missing or malformed."""
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        logger.warning("ignoring malformed pid file %s", path)
        return None
    return pid, (lines[1] if len(lines) > 1 else None)


def write_pid_file(path: Path, pid: int) -> None:
    """Atomically write ``pid`` and its start time to ``path``."""
    private_directory(path.parent)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(f"{pid}\n{_start_time(pid) or ''}\n")
    tmp.replace(path)


def log_tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``path`` after byte ``offset``."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    tail = text.rstrip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(no output)"


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL after ``timeout_s`` seconds."""
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive(pid) and not (group and _group_alive(pid)):
                return
            time.sleep(0.05)
        if sig is signal.SIGTERM:
            logger.warning("pid %d ignored SIGTERM for %g s; sending SIGKILL", pid, wait_s)
    logger.error("pid %d survived SIGKILL", pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
