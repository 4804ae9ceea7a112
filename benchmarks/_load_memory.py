"""The load suite's memory record: every radcloud process's resident memory, each second.

A thread walks the process tree of each supervised component (from its pid file: Orthanc, the
gateway, the API, the managed PostgreSQL) and of this process (the load tools: the locust
process and the storescu senders), and sums the resident set size (RSS) per role. The API's
tree is Ray's: its processes are told apart by name (GCS, raylet, workers, dashboard and other
helpers). Shared pages are counted in each process that maps them, so a sum over-states what
the machine spent, by the same measure in every sample.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil

__all__ = ["MemorySampler", "plot_memory"]

_MIB = 2**20


_RAY_ROLES = (  # the API's Ray processes by name: (part of the name or command, role)
    ("gcs_server", "ray GCS"),
    ("raylet", "ray raylet"),
    ("ray::", "ray workers"),
    ("default_worker.py", "ray workers"),
)


def _role(component: str, process: psutil.Process, root: bool) -> str:
    """The role a process plays, for the memory record."""
    if component != "api":
        return "orthanc" if component.startswith("orthanc") else component
    if root:
        return "api (Serve driver)"
    try:
        described = f"{process.name()} {' '.join(process.cmdline()[:3])}"
    except psutil.Error:
        described = ""
    return next((role for part, role in _RAY_ROLES if part in described), "ray (other)")


def _tree(pid: int) -> list[tuple[psutil.Process, bool]]:
    try:
        root = psutil.Process(pid)
        return [(root, True), *((child, False) for child in root.children(recursive=True))]
    except psutil.Error:
        return []


class MemorySampler:
    """Samples, every ``interval_s``, the RSS of each component's processes (a thread).

    Parameters
    ----------
    supervisor
        The scratch platform's :class:`radcloud.services.Supervisor`.
    """

    def __init__(self, supervisor: Any, interval_s: float = 1.0) -> None:
        self.supervisor = supervisor
        self.interval_s = interval_s
        self.t: list[float] = []
        self.series: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._pids: dict[str, int] = {}
        self._started = 0.0

    def start(self) -> None:
        """Find the components' processes and start sampling."""
        self._pids = {s.name: s.pid for s in self.supervisor.status() if s.pid is not None}
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (harmless twice)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample(self) -> dict[str, float]:
        """One sample: MiB per role."""
        totals: dict[str, float] = {}
        counted: set[int] = set()
        groups = [*self._pids.items(), ("load tools", psutil.Process().pid)]
        for component, pid in groups:
            for process, root in _tree(pid):
                if process.pid in counted or (component == "load tools" and root):
                    continue  # a component spawned by the harness; the harness itself
                counted.add(process.pid)
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue  # exited meanwhile
                role = _role(component, process, root)
                totals[role] = totals.get(role, 0.0) + rss / _MIB
        return totals

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic() - self._started
            values = self.sample()
            index = len(self.t)
            self.t.append(round(at, 1))
            for role in values.keys() - self.series.keys():
                self.series[role] = [0.0] * index
            for role, series in self.series.items():
                series.append(round(values.get(role, 0.0), 1))
            self._stop.wait(self.interval_s)

    def document(self) -> dict[str, Any]:
        """The series (seconds, MiB per role), each role's peak and the peak of the sum."""
        totals = [sum(values) for values in zip(*self.series.values(), strict=True)]
        return {
            "interval_s": self.interval_s,
            "samples": len(self.t),
            "t_s": self.t,
            "rss_mib": self.series,
            "peak_mib": {role: max(series, default=0.0) for role, series in self.series.items()},
            "first_mib": {role: series[0] for role, series in self.series.items() if series},
            "last_mib": {role: series[-1] for role, series in self.series.items() if series},
            "peak_total_mib": round(max(totals, default=0.0), 1),
            "note": "RSS summed per role; shared pages count in every process that maps them",
        }


def plot_memory(document: dict[str, Any], path: Path, title: str) -> Path:
    """RSS per role over time (log scale), one panel per profile, each role in the same colour
    in every panel (matplotlib, Agg: a PNG file)."""
    from benchmarks._plots import _pyplot

    plt = _pyplot()
    runs = {profile: document["runs"][profile] for profile in document["profiles"]}
    roles = sorted({role for run in runs.values() for role in run["memory"]["rss_mib"]})
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {role: palette[n % len(palette)] for n, role in enumerate(roles)}
    fig, axes = plt.subplots(
        1, len(runs), figsize=(7 * len(runs), 4.8), squeeze=False, constrained_layout=True
    )
    for ax, (profile, run) in zip(axes[0], runs.items(), strict=True):
        memory = run["memory"]
        for role, series in sorted(memory["rss_mib"].items(), key=lambda kv: -max(kv[1] or [0])):
            peak = max(series or [0])
            ax.plot(memory["t_s"], series, color=colours[role], label=f"{role} (peak {peak:.0f})")
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel("resident memory (MiB, log scale)")
        ax.set_title(f"{profile}: {run['parameters']['profile']}", fontsize=9)
        ax.legend(fontsize=7, loc="center right", framealpha=0.8)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
