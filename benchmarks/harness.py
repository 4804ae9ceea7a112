"""The benchmark harness: run suites, write one report (JSON, markdown, PNG plots).

``radcloud bench [--suite inference|serving|ingest|e2e|worklist|viewer|federation|load|all]
[--device cpu|cuda|auto] [--quick] [--out DIR]`` (``make bench``) calls :func:`run_bench`, which
writes

- ``<out>/<date>-<host>-<device>.json``: every suite's raw samples and summary, the machine
  (CPU model and cores, memory, thread settings, GPU name and driver when present, library
  versions, the commit), timings of the run and any suite's error;
- ``<stem>.md``: the summary tables;
- ``<stem>-throughput.png`` (throughput vs batch size per backend), ``<stem>-latency.png``
  (latency CDFs), ``<stem>-triage.png`` (time-to-triage stage breakdown) and
  ``<stem>-worklist.png`` (waiting times, FIFO vs prioritised), ``<stem>-federation.png``
  (federated search latency against each node, retrieval MB/s) and ``<stem>-load.png``
  (memory per component under load), for the suites that ran.

A numbered suffix (``-2``) keeps an earlier report of the same day, host and device. A suite
that fails is recorded under ``errors`` and the others still run. ``--quick`` makes every suite
tiny (slim models, short windows): for tests and smoke checks, not for figures.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import _plots
from benchmarks._env import describe_accelerator, describe_machine, result_stem

__all__ = ["SCHEMA", "SUITES", "BenchError", "Timing", "resolve_device", "run_bench"]

logger = logging.getLogger(__name__)

SCHEMA = "radcloud-bench/1"
SUITES = ("inference", "serving", "ingest", "e2e", "worklist", "viewer", "federation", "load")


class BenchError(Exception):
    """A harness run cannot start (bad suite or device)."""


class SuiteSkippedError(Exception):
    """A suite cannot run on this machine as it is (the message says why); not a failure."""


def resolve_device(requested: str) -> str:
    """``cpu`` or ``cuda`` for ``--device cpu|cuda|auto``.

    Raises
    ------
    BenchError
        ``cuda`` was asked for and torch sees no CUDA device, or the value is unknown.
    """
    if requested not in ("cpu", "cuda", "auto"):
        raise BenchError(f'device "{requested}" is not supported: expected cpu, cuda or auto')
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise BenchError("--device cuda: torch sees no CUDA device (a CPU-only torch build?)")
    return "cpu"


@dataclass(frozen=True)
class Timing:
    """Overrides of the suites' own windows (``None``: the suite's default)."""

    window_s: float | None = None  # inference and serving: length of one timed window
    repeats: int | None = None  # inference and serving: timed windows per figure
    budget_s: float | None = None  # inference: the suite's measuring time, shared evenly

    def applied(self) -> dict[str, Any]:
        """The overrides that were set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _inference(
    device: str, quick: bool, threads: int | None, timing: Timing, say: Callable[[str], None]
) -> Any:
    from benchmarks.inference import InferenceConfig, run_inference

    config = InferenceConfig.quick() if quick else InferenceConfig()
    overrides = timing.applied()
    config = replace(config, **overrides)
    return run_inference(device=device, config=config, slim=quick, threads=threads, progress=say)


def _serving(device: str, quick: bool, timing: Timing) -> Any:
    from benchmarks.serving import QUICK, run_serving

    options: dict[str, Any] = dict(QUICK) if quick else {}
    if timing.window_s is not None:
        options["seconds"] = timing.window_s
        options["warmup_s"] = timing.window_s
    if timing.repeats is not None:
        options["repeats"] = timing.repeats
    return run_serving(device=device, **options)


def _ingest(quick: bool) -> Any:
    from benchmarks.ingest import run_ingest

    if quick:
        return run_ingest(40, 1, write=False)
    return run_ingest(write=False)


def _e2e(quick: bool) -> Any:
    from benchmarks.triage import run_triage
    from core.config import load_settings

    if quick:
        return run_triage(None, slim=True, studies=4, interval_s=1.0)
    home = load_settings().home
    if not any((home / "models").glob("*/*")):
        raise SuiteSkippedError(
            f"no trained models in {home / 'models'}: `make demo` trains them "
            "(or use --quick for slim random-weight models)"
        )
    return run_triage(home)


def _worklist(quick: bool, stem: Path) -> Any:
    from benchmarks.worklist import run

    report = run(
        seeds=3 if quick else 20,
        days=1 if quick else None,
        with_sweep=not quick,
        out_dir=stem.parent,
        stem=f"{stem.name}-worklist",
    )
    return {
        "suite": "worklist",
        "synthetic": True,
        "note": report["note"],
        "seeds": report["seeds"],
        "policy": report["policy"],
        "scenarios": {
            name: {k: v for k, v in scenario.items() if k != "per_seed"}
            for name, scenario in report["scenarios"].items()
        },
        "files": report["files"],
    }


def _viewer(quick: bool) -> Any:
    from benchmarks.viewer import CHROMIUM, QUICK, run_viewer

    if not CHROMIUM.is_file():
        raise SuiteSkippedError(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    return run_viewer(**QUICK) if quick else run_viewer()


def _federation(quick: bool, say: Callable[[str], None]) -> Any:
    import shutil

    from benchmarks.federation import QUICK, run_federation

    if shutil.which("Orthanc") is None:
        raise SuiteSkippedError("Orthanc is not installed: `make install` installs it")
    return run_federation(QUICK if quick else None, progress=say)


def _load(quick: bool) -> Any:
    import shutil

    from benchmarks.load import QUICK, run_profiles

    if shutil.which("Orthanc") is None or shutil.which("storescu") is None:
        raise SuiteSkippedError("Orthanc or dcmtk is not installed: `make install` installs them")
    return run_profiles(["sqlite"], **QUICK) if quick else run_profiles(["sqlite", "postgresql"])


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_bench(
    suites: Sequence[str],
    *,
    device: str = "auto",
    quick: bool = False,
    out_dir: Path | None = None,
    threads: int | None = None,
    timing: Timing | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``suites`` and write the report; return it (``files`` names what was written).

    Parameters
    ----------
    suites
        Names from :data:`SUITES`, or ``all``.
    device
        ``cpu``, ``cuda`` or ``auto`` (CUDA when torch sees it).
    quick
        Tiny inputs and short windows.
    out_dir
        Where the files go (default ``benchmarks/results``).
    threads
        CPU threads for the inference suite's torch and ONNX Runtime (default: theirs).
    timing
        Shorter or longer windows, and a time budget for the inference suite.
    progress
        Called with a line as each measurement starts.

    Raises
    ------
    BenchError
        An unknown suite, or CUDA asked for and absent.
    """
    chosen = list(SUITES) if "all" in suites else list(dict.fromkeys(suites))
    unknown = [s for s in chosen if s not in SUITES]
    if unknown or not chosen:
        raise BenchError(
            f'suite "{", ".join(unknown) or "(none)"}" is not known: expected one of '
            f"{', '.join(SUITES)} or all"
        )
    resolved = resolve_device(device)
    timing = timing or Timing()
    say = progress or (lambda line: logger.info("%s", line))
    stem = result_stem(resolved, out_dir)
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    skipped: dict[str, str] = {}
    durations: dict[str, float] = {}
    runners: dict[str, Callable[[], Any]] = {
        "inference": lambda: _inference(resolved, quick, threads, timing, say),
        "serving": lambda: _serving(resolved, quick, timing),
        "ingest": lambda: _ingest(quick),
        "e2e": lambda: _e2e(quick),
        "worklist": lambda: _worklist(quick, stem),
        "viewer": lambda: _viewer(quick),
        "federation": lambda: _federation(quick, say),
        "load": lambda: _load(quick),
    }
    if threads:
        import torch

        torch.set_num_threads(threads)  # before describing the machine, which records it
    machine = describe_machine()
    machine["accelerator"] = describe_accelerator()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "command": " ".join(["radcloud bench", *sys.argv[2:]])
        if sys.argv[1:2] == ["bench"]
        else " ".join(sys.argv),
        "requested_device": device,
        "device": resolved,
        "quick": quick,
        "timing_overrides": timing.applied(),
        "suites": chosen,
        "machine": machine,
        "started": started.isoformat(timespec="seconds"),
        "finished": None,
        "complete": False,
        "duration_s": durations,
        "results": results,
        "errors": errors,
        "skipped": skipped,
        "files": {},
    }
    for suite in chosen:
        say(f"suite {suite}")
        began = time.perf_counter()
        try:
            document = runners[suite]()
        except SuiteSkippedError as exc:
            skipped[suite] = str(exc)
        except Exception as exc:  # recorded in the report; the other suites still run
            logger.exception("suite %s failed", suite)
            errors[suite] = _failure(exc)
        else:
            document.pop("machine", None)  # once, at the top
            results[suite] = document
        durations[suite] = round(time.perf_counter() - began, 1)
        # Written after every suite: a run stopped by a time limit keeps what it measured.
        report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        report["complete"] = suite == chosen[-1]
        report["files"] = _write(report, stem)
    return report


def _write(report: dict[str, Any], stem: Path) -> dict[str, Any]:
    """Plots, markdown and JSON beside each other; returns their file names."""
    from benchmarks._report import render

    results = report["results"]
    label = (
        f"{report['machine']['host']}, {report['device']}, commit {report['machine']['commit']}"
        + (" (--quick: slim models, not figures)" if report["quick"] else "")
    )
    plots: dict[str, str] = {}
    if "inference" in results:
        path = stem.with_name(f"{stem.name}-throughput.png")
        _plots.throughput(results["inference"], path, f"Inference throughput: {label}")
        plots["throughput"] = path.name
    latency = _plots.latency_cdf(
        results.get("inference"),
        results.get("serving"),
        stem.with_name(f"{stem.name}-latency.png"),
        f"Latency: {label}",
    )
    if latency is not None:
        plots["latency_cdf"] = latency.name
    if "e2e" in results:
        path = stem.with_name(f"{stem.name}-triage.png")
        _plots.triage_stages(results["e2e"], path, f"Time to triage by stage: {label}")
        plots["triage_stages"] = path.name
    if "worklist" in results:
        plots["worklist"] = results["worklist"]["files"]["png"]
    if "federation" in results:
        from benchmarks.federation import plot

        path = stem.with_name(f"{stem.name}-federation.png")
        plot(results["federation"], path, f"Federation (SYNTHETIC, loopback): {label}")
        plots["federation"] = path.name
    if "load" in results:
        from benchmarks._load_memory import plot_memory

        path = stem.with_name(f"{stem.name}-load.png")
        plot_memory(results["load"], path, f"Memory per component under load: {label}")
        plots["load"] = path.name
    files = {
        "directory": str(stem.parent),
        "json": f"{stem.name}.json",
        "markdown": f"{stem.name}.md",
        "plots": plots,
    }
    if "worklist" in results:
        files["worklist_json"] = results["worklist"]["files"]["json"]
    report["files"] = files
    stem.with_name(f"{stem.name}.md").write_text(render(report))
    stem.with_name(f"{stem.name}.json").write_text(
        json.dumps(report, indent=1, sort_keys=True) + "\n"
    )
    return files
