"""What every benchmark result records about where it ran, and small shared helpers."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["describe_machine", "free_ports", "summarise", "write_result"]

RESULTS_DIR = Path(__file__).with_name("results")
_PACKAGES = ("radcloud", "pydicom", "pynetdicom", "torch", "onnxruntime", "ray", "monai")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    ).stdout.strip()


def _commit() -> str | None:
    """The commit measured, with ``+dirty`` when the tree had uncommitted changes."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _orthanc_version() -> str | None:
    try:
        out = subprocess.run(
            ["Orthanc", "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except OSError:
        return None
    return out.splitlines()[0] if out else None


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, thread settings, library versions and the commit."""
    memory = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE")},
        "packages": {name: _version(name) for name in _PACKAGES},
        "orthanc": _orthanc_version(),
        "commit": _commit(),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def summarise(samples: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of repeated measurements."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def write_result(suite: str, device: str, result: dict[str, Any], out_dir: Path | None) -> Path:
    """Write ``result`` as ``<date>-<host>-<device>-<suite>.json`` and return the path."""
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    path = directory / f"{day}-{socket.gethostname()}-{device}-{suite}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path
