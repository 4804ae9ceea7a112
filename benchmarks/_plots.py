"""PNG plots of a harness run (matplotlib, Agg backend: files only, no display)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["latency_cdf", "throughput", "triage_stages"]

_MODE_STYLE = {"compute": "-", "end_to_end": "--"}
_MODE_LABEL = {"compute": "model compute", "end_to_end": "with pre/post-processing"}
_TRIAGE_STAGES = (
    ("completeness_wait_s", "completeness wait"),
    ("queue_s", "queue"),
    ("fetch_s", "fetch from Orthanc"),
    ("preprocess_s", "pre-processing"),
    ("inference_s", "inference"),
    ("postprocess_s", "post-processing"),
    ("writeback_s", "SEG/SR write-back"),
)


def _ordered(backends: dict[str, Any]) -> list[str]:
    """Backends in the suite's order (baseline first), whatever order a JSON file kept."""
    from benchmarks._backends import BACKENDS

    return sorted(backends, key=lambda b: BACKENDS.index(b) if b in BACKENDS else len(BACKENDS))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ScalarFormatter() -> Any:  # noqa: N802 - stands for matplotlib's class
    """Plain numbers on log axes (``30``, not ``3 x 10^1``)."""
    from matplotlib.ticker import ScalarFormatter as Formatter

    return Formatter()


def throughput(inference: dict[str, Any], path: Path, title: str) -> Path:
    """Items per second against batch size, one panel per model, one colour per backend;
    solid: model compute, dashed: with pre- and post-processing; bars: min-max of windows."""
    plt = _pyplot()
    models = list(inference["models"])
    fig, axes = plt.subplots(
        1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False, constrained_layout=True
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, model in zip(axes[0], models, strict=True):
        for number, backend in enumerate(_ordered(inference["backends"])):
            for mode, style in _MODE_STYLE.items():
                rows = sorted(
                    (
                        r
                        for r in inference["measurements"]
                        if r["model"] == model and r["backend"] == backend and r["mode"] == mode
                    ),
                    key=lambda r: r["batch"],
                )
                if not rows:
                    continue
                batch = [r["batch"] for r in rows]
                median = np.array([r["items_per_s"]["median"] for r in rows])
                low = median - np.array([r["items_per_s"]["min"] for r in rows])
                high = np.array([r["items_per_s"]["max"] for r in rows]) - median
                ax.errorbar(
                    batch,
                    median,
                    yerr=[low, high],
                    fmt=style,
                    marker="o",
                    markersize=4,
                    capsize=2,
                    color=colours[number % len(colours)],
                    label=f"{backend}, {_MODE_LABEL[mode]}",
                )
        unit = inference["models"][model]["unit"]
        shape = "x".join(map(str, inference["models"][model]["input"]))
        sizes = sorted({r["batch"] for r in inference["measurements"] if r["model"] == model})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"{unit} per second")
        ax.set_title(f"{model} ({shape})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cdf(ax: Any, samples: list[float], label: str, style: str, colour: str) -> None:
    ordered = np.sort(np.asarray(samples, dtype=float)) * 1000
    if len(ordered) == 0:
        return
    fraction = np.arange(1, len(ordered) + 1) / len(ordered)
    ax.step(ordered, fraction, style, where="post", label=label, color=colour)


def latency_cdf(
    inference: dict[str, Any] | None, serving: dict[str, Any] | None, path: Path, title: str
) -> Path | None:
    """Latency distributions: per model at batch 1 for each backend and mode; per serving path
    at one caller and at its best concurrency. None when neither suite ran."""
    plt = _pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels: list[tuple[str, list[tuple[list[float], str, str, str]]]] = []
    if inference:
        backends = _ordered(inference["backends"])
        for model in inference["models"]:
            curves = [
                (
                    r["samples"]["latency_s"],
                    f"{r['backend']}, {_MODE_LABEL[r['mode']]}",
                    _MODE_STYLE[r["mode"]],
                    colours[backends.index(r["backend"]) % len(colours)],
                )
                for r in inference["measurements"]
                if r["model"] == model and r["batch"] == 1
            ]
            if curves:
                panels.append((f"{model}: one item per batch", curves))
    if serving:
        curves = [
            (
                serving["raw_samples"]["batch_latency_s"],
                f"raw, batch {serving['batch_size']}",
                ":",
                colours[0],
            )
        ]
        for number, (key, label) in enumerate((("handle", "handle"), ("http", "HTTP")), 1):
            best = str(serving["saturation_concurrency"][key])
            for callers in sorted({min(serving[key], key=int), best}, key=int):
                curves.append(
                    (
                        serving[key][callers]["samples"]["latency_s"],
                        f"{label}, {callers} caller(s)",
                        "-" if callers == best else "--",
                        colours[number],
                    )
                )
        panels.append((f"serving {serving['model']['name']}: per request", curves))
    if not panels:
        return None
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False, constrained_layout=True
    )
    for ax, (name, curves) in zip(axes[0], panels, strict=True):
        for samples, label, style, colour in curves:
            _cdf(ax, samples, label, style, colour)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of calls at most this long")
        ax.set_title(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def triage_stages(e2e: dict[str, Any], path: Path, title: str) -> Path:
    """Median seconds per stage of time to triage, one stacked bar per task."""
    plt = _pyplot()
    tasks = sorted({r["task"] for r in e2e["records"] if r["status"] == "succeeded"})
    medians: dict[str, list[float]] = {key: [] for key, _ in _TRIAGE_STAGES}
    for task in tasks:
        records = [r for r in e2e["records"] if r["task"] == task and r["status"] == "succeeded"]
        for key, _ in _TRIAGE_STAGES:
            if key == "queue_s":
                values = [
                    r["triage_s"] - r["total_s"]
                    for r in records
                    if r.get("triage_s") is not None and r.get("total_s") is not None
                ]
            else:
                values = [r[key] for r in records if r.get(key) is not None]
            medians[key].append(max(0.0, statistics.median(values)) if values else 0.0)
    fig, ax = plt.subplots(figsize=(10, 2.2 + 0.9 * max(len(tasks), 1)), constrained_layout=True)
    left = np.zeros(len(tasks))
    for key, label in _TRIAGE_STAGES:
        widths = np.array(medians[key])
        ax.barh(tasks, widths, left=left, label=label)
        left += widths
    ax.set_xlabel("seconds (median per stage; last instance received → result)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
