"""What every benchmark result records about where it ran, and small shared helpers."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "PeakMemory",
    "describe_accelerator",
    "describe_machine",
    "free_ports",
    "percentiles",
    "result_stem",
    "summarise",
    "write_result",
]

RESULTS_DIR = Path(__file__).with_name("results")
_PACKAGES = (
    "radcloud",
    "pydicom",
    "pynetdicom",
    "numpy",
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "ray",
    "monai",
    "matplotlib",
)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")


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
    """The commit measured, with ``+dirty`` when the tree had uncommitted changes.

    ``RADCLOUD_BENCH_COMMIT``, where set, names it instead: a copy of the tree sent to a GPU
    machine (``benchmarks/gpu_run.sh``) may carry no ``.git``, or a stale one.
    """
    if named := os.environ.get("RADCLOUD_BENCH_COMMIT"):
        return named
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


def host_label() -> str:
    """The machine's name in result files: ``RADCLOUD_BENCH_HOST`` where set (a lent GPU
    machine's host name means nothing later), else the host name."""
    return os.environ.get("RADCLOUD_BENCH_HOST") or socket.gethostname()


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, thread settings, library versions and the commit."""
    memory = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "host": host_label(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "threads": {k: os.environ.get(k) for k in _THREAD_VARIABLES},
        "packages": {name: _version(name) for name in _PACKAGES},
        "orthanc": _orthanc_version(),
        "commit": _commit(),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _nvidia_smi() -> dict[str, str] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    name, driver, memory = ([*out.splitlines()[0].split(", "), "", ""])[:3]
    return {"name": name, "driver": driver, "memory": memory}


def describe_accelerator() -> dict[str, Any]:
    """torch's threads and CUDA view, ONNX Runtime's providers, the GPU and its driver.

    Imports torch and onnxruntime (lazily: suites that need neither do not call this).
    """
    import onnxruntime
    import torch

    info: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "onnxruntime_threads": "ONNX Runtime default (one intra-op thread per physical core) "
        "unless a suite sets it (inference: --threads)",
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "gpu": None,
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        smi = _nvidia_smi() or {}
        info["gpu"] = {
            "name": properties.name,
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "multiprocessors": properties.multi_processor_count,
            "capability": f"{properties.major}.{properties.minor}",
            "driver": smi.get("driver"),
            "cudnn": torch.backends.cudnn.version(),  # type: ignore[no-untyped-call]
        }
    return info


class PeakMemory:
    """Peak resident memory of this process (and of torch's CUDA allocator) over a span.

    Linux resets the process's high-water mark (``VmHWM``) when ``5`` is written to
    ``/proc/self/clear_refs``; where that fails, the peak since the process started
    (``getrusage``) is reported and :attr:`since_start` says so.
    """

    def __init__(self) -> None:
        self.since_start = False

    def reset(self) -> None:
        """Start a new span."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.since_start = True
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()

    def host_mib(self) -> float:
        """Peak resident set size of this process in the span, MiB."""
        if not self.since_start:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @staticmethod
    def device_mib() -> float | None:
        """Peak memory torch's CUDA allocator held in the span, MiB (None without CUDA)."""
        cuda = _cuda()
        return None if cuda is None else cuda.max_memory_allocated() / 2**20


def _cuda() -> Any:
    """``torch.cuda`` when torch is imported and sees a GPU, else None."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda


#: Listening ports are drawn between Ray's worker ports (10002-19999 by default) and the kernel's
#: ephemeral range (``net.ipv4.ip_local_port_range``, from 32768 by default). A port that
#: ``bind(0)`` hands out is ephemeral: once it is closed, any outgoing connection may take it as
#: its local port before the server that was meant to listen there binds it (seen: Ray Serve's
#: proxy "failed to bind" on a restart while two test workers were busy connecting).
_LISTEN_PORTS = range(20000, 32768)
_next_port: list[int] = []


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_slice() -> range:
    """This process's share of the listening ports: pytest-xdist workers get disjoint slices,
    so two workers never pick the same port."""
    top = min(_LISTEN_PORTS.stop, _ephemeral_low())
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % workers if worker.isdigit() else 0
    width = (top - _LISTEN_PORTS.start) // workers
    start = _LISTEN_PORTS.start + index * width
    return range(start, start + width)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now, outside the ephemeral range.

    Ports are handed out in turn from this process's slice (from a random start), so a port
    chosen for a server that has not started yet is not chosen again soon."""
    share = _port_slice()
    if not _next_port:
        _next_port.append(random.randrange(len(share)))  # noqa: S311 - not a secret
    ports: list[int] = []
    for _ in range(len(share)):
        if len(ports) == count:
            return ports
        port = share[_next_port[0] % len(share)]
        _next_port[0] += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    raise RuntimeError(f"no {count} free ports in {share.start}-{share.stop - 1}")


def scratch_settings(home: Path, **overrides: Any) -> Any:
    """Settings of a scratch radcloud in ``home`` on free ports (Orthanc's HTTP and DICOM, the
    API, the gateway, its metrics and its STOW-RS door), logging warnings only; ``overrides``
    on top."""
    from core.config import load_settings

    http, dicom, api, gateway, metrics, stow = free_ports(6)
    return load_settings(
        **{
            "home": home,
            "orthanc_http_port": http,
            "orthanc_dicom_port": dicom,
            "api_port": api,
            "gateway_port": gateway,
            "gateway_metrics_port": metrics,
            "gateway_stow_port": stow,
            "log_level": "WARNING",
        }
        | overrides
    )


def register_sender(settings: Any, ae_title: str, hospital: str, host: str = "127.0.0.1") -> None:
    """Register ``ae_title`` as a sender of ``hospital`` on a running scratch radcloud and
    return once its DICOM edge admits it (the Orthanc edge mirrors it within a second)."""
    from core.audit import AuditTrail
    from core.db import Database, upgrade
    from core.secrets import load_secrets
    from core.security import Actor
    from dicom_gateway.edge.peers import wait_until_admitted
    from dicom_gateway.senders import SenderRegistry

    db = Database.from_settings(settings)
    try:
        upgrade(db)
        audit = AuditTrail.from_secrets(db, load_secrets(settings))
        registry = SenderRegistry(db, audit, edge=settings.gateway_edge)
        registry.add_sender(ae_title, hospital, host, actor=Actor.cli())
    finally:
        db.dispose()
    if not wait_until_admitted(settings, [ae_title], timeout_s=15):
        raise RuntimeError(f"the Orthanc edge did not admit {ae_title} within 15 s")


def summarise(samples: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of repeated measurements."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 (median), p95, min, max and count of latency samples; empty without samples.

    The one p95 of every benchmark: the nearest-rank percentile, the smallest sample with at
    least 95 % of the samples at or below it (``ordered[ceil(0.95 n) - 1]``), so it is always a
    measured value.
    """
    ordered = sorted(samples)
    if not ordered:
        return {}

    def rank(q: float) -> float:
        return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]

    return {
        "p50": statistics.median(ordered),
        "p95": rank(0.95),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def result_stem(device: str, out_dir: Path | None = None) -> Path:
    """``<out_dir>/<date>-<host>-<device>``, numbered ``-2``, ``-3`` when a result of that name
    exists already (results are never overwritten)."""
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    stem = f"{day}-{host_label()}-{device}"
    candidate, number = directory / stem, 1
    while candidate.with_name(f"{candidate.name}.json").exists():
        number += 1
        candidate = directory / f"{stem}-{number}"
    return candidate


def write_result(suite: str, device: str, result: dict[str, Any], out_dir: Path | None) -> Path:
    """Write ``result`` as ``<date>-<host>-<device>-<suite>.json`` and return the path."""
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    path = directory / f"{day}-{host_label()}-{device}-{suite}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path
