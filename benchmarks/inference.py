"""Inference: each production network per backend and batch size, against torch eager on CPU.

``radcloud bench --suite inference [--device cpu|cuda|auto] [--quick]``

Models: the production architectures :mod:`training.tasks` names for the head CT and the
chest radiograph (the result names them and their inputs: ``unet-2.5d`` and, since issue 12,
``resnet-small-2d``; DenseNet-121 before), with seeded random weights (speed does not depend
on training; see :mod:`benchmarks._models`). ``--quick`` uses narrow networks on tiny inputs:
it checks the harness, its figures say nothing about the models.

Backends (:data:`BACKENDS`): ``torch-cpu`` (eager, float32: the **baseline**), ``onnx-cpu``
(ONNX Runtime's CPU provider); with CUDA also ``torch-cuda-amp`` (radcloud's torch runner:
float16 autocast), ``onnx-cuda`` (float32) and ``onnx-tensorrt`` (ONNX Runtime's TensorRT
provider, float16, one engine with a batch profile 1..max). A backend this machine lacks is
skipped with the reason. The torch backends are serving's own
:class:`serving.inference.ModelRunner`; the ONNX Runtime ones are sessions on the registered
``model.onnx`` with one provider each (so ``--threads`` can set their intra-op threads like
torch's). CUDA figures include copying inputs to the device and logits back.

Two modes per (model, backend, batch size), side by side:

- ``compute``: the network on a ready float32 batch;
- ``end_to_end``: what a triage worker does per item as well: parse the SYNTHETIC DICOM
  series from bytes, build the volume, :func:`~serving.inference.prepare` it from the model card
  (orientation, resampling, intensity window, size), run the batch, and
  :func:`~serving.inference.interpret` each item's logits (score, and for the segmenter the
  mask mapped back onto the source grid). Stage seconds are kept per batch.

For each: after ``warmup`` batches, ``repeats`` windows of at least ``window_s`` seconds (at
least one batch each); items per second per window (median, min, max), latency per batch over
every batch timed (p50, p95, min, max), peak host RSS of the process over the measurement, peak
CUDA memory held by torch's allocator (ONNX Runtime's own CUDA arena is not visible to it:
``device_in_use_mib`` reports the whole device's memory in use after the measurement instead).
Larger batch sizes are skipped when the last one measured predicts more than ``max_batch_s``
seconds per batch, or (with ``budget_s``, for a run that must end in time) more than what is
left of the (model, backend, mode)'s even share of the budget; each is recorded in
``not_measured`` with the reason. Every figure of another backend is given as a
ratio to the baseline measured in the same run: at the same batch size, and against the
baseline's best throughput at any batch size.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._backends import (
    BACKENDS,
    PRECISION,
    Backend,
    UnavailableError,
    cuda_available,
    open_backend,
    unavailable_reason,
    wanted_backends,
)
from benchmarks._env import PeakMemory, percentiles, summarise
from benchmarks._models import register_models

__all__ = [
    "BACKENDS",
    "BASELINE",
    "BATCH_SIZES",
    "QUICK_BATCH_SIZES",
    "InferenceConfig",
    "markdown",
    "run_inference",
]

logger = logging.getLogger(__name__)

BASELINE = "torch-cpu"
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCH_SIZES = (1, 2)
MODES = ("compute", "end_to_end")
_UNIT = {"segmentation": "volumes", "classification": "images"}


@dataclass(frozen=True)
class InferenceConfig:
    """How long and how often to measure."""

    batch_sizes: tuple[int, ...] = BATCH_SIZES
    repeats: int = 3
    window_s: float = 2.0
    warmup: int = 2
    max_batch_s: float = 15.0
    budget_s: float | None = None  # whole suite's measuring time, shared evenly; None: no limit
    studies: int = 4  # distinct SYNTHETIC studies per task, cycled to fill a batch

    @classmethod
    def quick(cls) -> InferenceConfig:
        """Tiny windows for ``--quick``."""
        return cls(
            batch_sizes=QUICK_BATCH_SIZES,
            repeats=2,
            window_s=0.2,
            warmup=1,
            max_batch_s=5.0,
            studies=2,
        )


def _series_bytes(task: str, count: int) -> list[list[bytes]]:
    """``count`` SYNTHETIC studies of ``task``, each series as Part 10 files in memory."""
    from imaging.synthetic import generate_study

    corpus = []
    for index in range(count):
        study = generate_study(task, index, seed=4242)
        files = []
        for dataset in study.datasets:
            with io.BytesIO() as buffer:
                dataset.save_as(buffer, enforce_file_format=True)
                files.append(buffer.getvalue())
        corpus.append(files)
    return corpus


def _end_to_end(
    card: Any, series: Sequence[list[bytes]], predict: Callable[[np.ndarray], np.ndarray]
) -> dict[str, float]:
    """One batch the way a triage worker handles it; seconds per stage."""
    import pydicom
    from pydicom.filebase import DicomBytesIO

    from imaging.volume import load_series
    from serving.inference import interpret, prepare

    started = time.perf_counter()
    prepared = [
        prepare(card, load_series([pydicom.dcmread(DicomBytesIO(f)) for f in files]))
        for files in series
    ]
    batch = np.stack([item.array for item in prepared])
    computed = time.perf_counter()
    logits = predict(batch)
    interpreted = time.perf_counter()
    for item, output in zip(prepared, logits, strict=True):
        interpret(card, item, output)
    done = time.perf_counter()
    return {
        "preprocess_s": computed - started,
        "model_s": interpreted - computed,
        "postprocess_s": done - interpreted,
    }


def _device_in_use_mib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def _measure(
    run_batch: Callable[[], dict[str, float] | None], batch: int, config: InferenceConfig
) -> dict[str, Any]:
    """Warm up, then time ``repeats`` windows of ``run_batch``."""
    memory = PeakMemory()
    memory.reset()
    for _ in range(config.warmup):
        run_batch()
    rates: list[float] = []
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    for _ in range(config.repeats):
        window_started = time.perf_counter()
        done = 0
        while True:
            started = time.perf_counter()
            split = run_batch()
            latencies.append(time.perf_counter() - started)
            for key, seconds in (split or {}).items():
                stages.setdefault(key, []).append(seconds)
            done += batch
            if time.perf_counter() - window_started >= config.window_s:
                break
        rates.append(done / (time.perf_counter() - window_started))
    result: dict[str, Any] = {
        "items_per_s": summarise(rates),
        "latency_s": percentiles(latencies),
        "peak_host_rss_mib": round(memory.host_mib(), 1),
        "peak_host_rss_since_start": memory.since_start,
        "peak_device_mib": memory.device_mib(),
        "device_in_use_mib": _device_in_use_mib(),
        "samples": {
            "items_per_s": [round(r, 3) for r in rates],
            "latency_s": [round(x, 6) for x in latencies],
        },
    }
    if stages:
        result["stages_s_median"] = {k: float(np.median(v)) for k, v in stages.items()}
    return result


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _too_long(
    previous: tuple[int, float] | None, batch: int, config: InferenceConfig, deadline: float | None
) -> str | None:
    """Why ``batch`` is not measured (estimated from the last batch size), or None."""
    if previous is None:
        return None
    estimate = previous[1] * batch / previous[0]
    if estimate > config.max_batch_s:
        return (
            f"estimated {estimate:.1f} s per batch from batch {previous[0]} "
            f"> limit {config.max_batch_s:g} s"
        )
    needed = estimate * config.warmup + max(estimate, config.window_s) * config.repeats
    if deadline is not None and time.monotonic() + needed > deadline:
        return f"time budget: about {needed:.0f} s needed, this backend's share was spent"
    return None


def _measure_backend(
    backend: Backend,
    model: Any,
    corpus: list[list[bytes]],
    config: InferenceConfig,
    progress: Callable[[str], None],
    *,
    share_s: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every mode and batch size of one backend on one model (``share_s`` seconds per mode)."""
    card = model.card
    shape = tuple(card.inputs.shape)
    generator = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for mode in MODES:
        previous: tuple[int, float] | None = None
        deadline = None if share_s is None else time.monotonic() + share_s
        for batch in config.batch_sizes:
            key = {"model": model.name, "backend": backend.name, "mode": mode, "batch": batch}
            reason = _too_long(previous, batch, config, deadline)
            if reason is not None:
                skipped += [
                    {**key, "batch": b, "reason": reason} for b in config.batch_sizes if b >= batch
                ]
                break
            progress(f"{model.name} {backend.name} {mode} batch {batch}")
            if mode == "compute":
                data = generator.random((batch, *shape), dtype=np.float32)

                def run_batch(data: np.ndarray = data) -> None:
                    backend.predict(data)

            else:
                items = [corpus[i % len(corpus)] for i in range(batch)]

                def run_batch(items: list[list[bytes]] = items) -> dict[str, float]:  # type: ignore[misc]
                    return _end_to_end(card, items, backend.predict)

            try:
                measured = _measure(run_batch, batch, config)
            except (RuntimeError, MemoryError) as exc:  # out of memory, provider errors
                skipped += [
                    {**key, "batch": b, "reason": _failure(exc)}
                    for b in config.batch_sizes
                    if b >= batch
                ]
                _free_cuda()
                break
            rows.append({**key, **measured})
            previous = (batch, measured["latency_s"]["p50"])
    return rows, skipped


def _free_cuda() -> None:
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``vs_baseline`` to every row of another backend (same run, same model and mode)."""
    base = {(r["model"], r["mode"], r["batch"]): r for r in rows if r["backend"] == BASELINE}
    best: dict[tuple[str, str], float] = {}
    for (model, mode, _), row in base.items():
        rate = row["items_per_s"]["median"]
        best[(model, mode)] = max(best.get((model, mode), 0.0), rate)
    for row in rows:
        if row["backend"] == BASELINE:
            continue
        same = base.get((row["model"], row["mode"], row["batch"]))
        rate = row["items_per_s"]["median"]
        top = best.get((row["model"], row["mode"]))
        row["vs_baseline"] = {
            "throughput_same_batch": rate / same["items_per_s"]["median"] if same else None,
            "latency_p50_same_batch": same["latency_s"]["p50"] / row["latency_s"]["p50"]
            if same
            else None,
            "throughput_vs_best_baseline": rate / top if top else None,
        }


def run_inference(
    *,
    device: str = "cpu",
    config: InferenceConfig | None = None,
    slim: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every available backend on both production networks; return the suite document.

    Parameters
    ----------
    device
        ``cpu`` (the CPU backends) or ``cuda`` (the CPU baseline and every GPU backend present).
    config
        Batch sizes, windows and limits (default :class:`InferenceConfig`).
    slim
        Narrow networks on tiny inputs (``--quick``).
    threads
        CPU threads for torch (``torch.set_num_threads``, which pre- and post-processing use
        too) and for ONNX Runtime's CPU provider; None keeps the libraries' defaults.
    progress
        Called with a line naming each measurement as it starts.

    Raises
    ------
    RuntimeError
        ``device`` is ``cuda`` and torch sees no CUDA device.
    """
    config = config or InferenceConfig()
    say = progress or (lambda line: logger.info("%s", line))
    if device == "cuda" and not cuda_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device")
    if threads:
        import torch

        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    not_measured: list[dict[str, Any]] = []
    skipped_backends: dict[str, str] = {}
    backends: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    wanted = []
    for name in wanted_backends(device):
        if reason := unavailable_reason(name):
            skipped_backends[name] = reason
            logger.warning("%s skipped: %s", name, reason)
        else:
            wanted.append(name)
    share_s = None
    if config.budget_s is not None:
        # shared by the backends this machine has: two models, each mode
        share_s = config.budget_s / (2 * len(wanted) * len(MODES))
    with tempfile.TemporaryDirectory(prefix="radcloud-bench-models-") as scratch:
        registered = register_models(Path(scratch), slim=slim)
        for task, model in registered.items():
            card = model.card
            assert card.architecture is not None  # noqa: S101 - set by register_models
            models[model.name] = {
                "task": task.value,
                "architecture": card.architecture.name,
                "params": dict(card.architecture.params),
                "input": list(card.inputs.shape),
                "unit": _UNIT[card.outputs.kind],
                "weights": "random (seeded): speed only, detects nothing",
            }
            say(f"{model.name}: synthesising {config.studies} SYNTHETIC studies")
            corpus = _series_bytes(task.value, config.studies)
            models[model.name]["study"] = {
                "instances": len(corpus[0]),
                "bytes": sum(len(f) for f in corpus[0]),
            }
            for name in wanted:
                if name in skipped_backends:
                    continue
                try:
                    backend = open_backend(name, model, max(config.batch_sizes), threads)
                except (UnavailableError, RuntimeError, ImportError) as exc:
                    skipped_backends[name] = (
                        str(exc) if isinstance(exc, UnavailableError) else (_failure(exc))
                    )
                    logger.warning("%s skipped: %s", name, skipped_backends[name])
                    continue
                backends.setdefault(
                    name,
                    {
                        "device": backend.device,
                        "providers": backend.providers,
                        "precision": PRECISION[name],
                        "baseline": name == BASELINE,
                        "load_and_first_call_s": {},
                    },
                )["load_and_first_call_s"][model.name] = backend.load_s
                measured, skipped = _measure_backend(
                    backend, model, corpus, config, say, share_s=share_s
                )
                rows += measured
                not_measured += skipped
                del backend
                _free_cuda()
    _ratios(rows)
    if device == "cpu":
        skipped_backends |= {
            name: "not run: --device cpu" for name in BACKENDS if name not in wanted_backends("cpu")
        }
    return {
        "suite": "inference",
        "device": device,
        "baseline": BASELINE,
        "slim": slim,
        "parameters": {
            "batch_sizes": list(config.batch_sizes),
            "repeats": config.repeats,
            "window_s": config.window_s,
            "warmup_batches": config.warmup,
            "max_batch_s": config.max_batch_s,
            "budget_s": config.budget_s,
            "studies_per_task": config.studies,
            "threads": threads or "library defaults",
            "data": "SYNTHETIC studies from imaging.synthetic (seed 4242)",
        },
        "models": models,
        "backends": backends,
        "skipped_backends": skipped_backends,
        "measurements": rows,
        "not_measured": not_measured,
    }


def _cell(stat: dict[str, float], digits: int = 1) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def markdown(result: dict[str, Any]) -> str:
    """Throughput and latency tables, one per model, compute and end-to-end side by side."""
    out: list[str] = []
    rows = result["measurements"]
    index = {(r["model"], r["backend"], r["mode"], r["batch"]): r for r in rows}
    for name, model in result["models"].items():
        unit = model["unit"]
        shape = "x".join(map(str, model["input"]))
        out += [
            f"**{name}** ({model['architecture']}, {shape}, random weights); {unit}/s median "
            "(min-max) and p50 / p95 ms per batch; the ratio is throughput against "
            f"{result['baseline']} at the same batch size:",
            "",
            f"| backend | batch | compute {unit}/s | p50 / p95 ms | vs CPU "
            f"| with pre/post-processing {unit}/s | p50 / p95 ms | vs CPU | compute share "
            "| peak RSS MiB | peak GPU MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for backend in sorted(result["backends"], key=BACKENDS.index):
            for batch in result["parameters"]["batch_sizes"]:
                compute = index.get((name, backend, "compute", batch))
                e2e = index.get((name, backend, "end_to_end", batch))
                if compute is None and e2e is None:
                    continue
                cells = [backend, str(batch)]
                for row in (compute, e2e):
                    if row is None:
                        cells += ["not measured", "", ""]
                        continue
                    lat = row["latency_s"]
                    ratio = (row.get("vs_baseline") or {}).get("throughput_same_batch")
                    cells += [
                        _cell(row["items_per_s"]),
                        f"{_ms(lat['p50'])} / {_ms(lat['p95'])}",
                        "1.00" if backend == result["baseline"] else _ratio(ratio),
                    ]
                share = None
                if e2e is not None and "stages_s_median" in e2e:
                    stages = e2e["stages_s_median"]
                    share = stages["model_s"] / max(sum(stages.values()), 1e-12)
                peak_rss = max(
                    (r["peak_host_rss_mib"] for r in (compute, e2e) if r is not None),
                    default=None,
                )
                gpu = [r["peak_device_mib"] for r in (compute, e2e) if r and r["peak_device_mib"]]
                cells += [
                    "" if share is None else f"{share:.0%}",
                    "" if peak_rss is None else f"{peak_rss:.0f}",
                    f"{max(gpu):.0f}" if gpu else "-",
                ]
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    if result["skipped_backends"]:
        out.append(
            "Skipped: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(result["skipped_backends"].items()))
        )
    limits = sorted({(r["model"], r["backend"], r["mode"]) for r in result["not_measured"]})
    if limits:
        firsts: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in result["not_measured"]:
            firsts.setdefault((r["model"], r["backend"], r["mode"]), r)
        out.append("")
        out.append(
            "Not measured (larger batches): "
            + "; ".join(
                f"{m} {b} {mode} from batch {firsts[(m, b, mode)]['batch']}"
                for m, b, mode in limits
            )
            + f" (a batch was estimated to take over {result['parameters']['max_batch_s']:g} s, "
            "to overrun the time budget, or failed: reasons in the JSON)"
        )
    return "\n".join(out)


def _ms(seconds: float) -> str:
    milliseconds = seconds * 1000
    return f"{milliseconds:.1f}" if milliseconds < 10 else f"{milliseconds:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
