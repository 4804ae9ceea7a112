"""Serving efficiency: a model's throughput through Ray Serve against its raw backend.

``radcloud bench --suite serving [--device cpu|cuda|auto] [--quick]``

The chest model's production network (the architecture :mod:`training.tasks` names for it,
``resnet-small-2d`` on 1x256x256 since issue 12, DenseNet-121 before; random weights, exported
to ONNX; :mod:`benchmarks._models`; ``--quick``: a narrow one on 1x32x32) is registered in a
temporary registry and run three ways, on the requested device:

- **raw**: the backend alone (serving's :class:`serving.inference.ModelRunner` with the
  replica's settings) on full batches, in this process: the ceiling. Measured before and again
  after the serve paths (nothing else running in Ray then), pooled: on a shared machine the
  load can change during a run, and the two halves show whether it did;
- **handle**: radcloud's :class:`serving.deployments.ModelServer` in a local Ray Serve, fed
  single inputs by closed-loop callers through a deployment handle (as the triage workers call
  it: no pixels through HTTP); ``@serve.batch`` assembles the batches;
- **http**: closed-loop HTTP clients (httpx, one connection each) posting raw float32 inputs
  through Serve's HTTP proxy to a small ingress (:mod:`benchmarks._ingress`) that calls the same
  deployment. radcloud's ``/api/infer`` takes DICOM/NIfTI uploads and pre-processes them, far
  too heavy to saturate a model; this path isolates what HTTP and the proxy add.

Both serve paths run at rising concurrency. Efficiency = serve throughput at its best
concurrency / raw throughput at the same batch size, both measured in the same run on the same
machine. Each throughput is the median of ``repeats`` timed windows after a warm-up (min and
max beside it); per-request latencies are pooled over the windows (p50, p95). On a machine with
few cores the callers, the proxy and the replica share the CPUs with the model, and the
efficiency includes that.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._env import describe_machine, free_ports, percentiles, summarise, write_result

__all__ = ["main", "markdown", "run_serving"]

logger = logging.getLogger(__name__)


def _raw(runner: Any, batch: int, seconds: float, repeats: int) -> tuple[list[float], list[float]]:
    """Inputs per second of the bare backend on full batches, and each batch's seconds."""
    data = np.random.default_rng(0).random((batch, *runner.input_shape), dtype=np.float32)
    runner.predict(data)
    rates, latencies = [], []
    for _ in range(repeats):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            began = time.perf_counter()
            runner.predict(data)
            latencies.append(time.perf_counter() - began)
            done += batch
        rates.append(done / (time.perf_counter() - started))
    return rates, latencies


Call = Callable[[], Any]


async def _closed_loop(call: Call, callers: int, seconds: float) -> tuple[float, list[float]]:
    """``callers`` loops awaiting ``call()`` back to back for ``seconds``: rate and latencies."""
    done = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - began)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - started), latencies


async def _sweep(
    make_call: Callable[[int], Any],
    concurrency: tuple[int, ...],
    seconds: float,
    repeats: int,
    warmup_s: float,
) -> dict[str, dict[str, Any]]:
    """Each concurrency's throughput (median of ``repeats`` windows) and latencies."""
    async with make_call(max(concurrency)) as call:
        await _closed_loop(call, max(concurrency), warmup_s)
    measured: dict[str, dict[str, Any]] = {}
    for callers in concurrency:
        rates: list[float] = []
        latencies: list[float] = []
        async with make_call(callers) as call:
            for _ in range(repeats):
                rate, seen = await _closed_loop(call, callers, seconds)
                rates.append(rate)
                latencies += seen
        measured[str(callers)] = {
            "inputs_per_s": summarise(rates),
            "latency_s": percentiles(latencies),
            "samples": {
                "inputs_per_s": [round(r, 3) for r in rates],
                "latency_s": [round(x, 6) for x in latencies],
            },
        }
    return measured


class _HandleCalls:
    """``async with`` → a callable sending one input through the deployment handle."""

    def __init__(self, handle: Any, item: np.ndarray) -> None:
        self.handle, self.item = handle, item

    async def __aenter__(self) -> Call:
        return lambda: self.handle.predict.remote(self.item)

    async def __aexit__(self, *exc: object) -> None:
        return None


class _HttpCalls:
    """``async with`` → a callable posting one input over HTTP (one connection per caller)."""

    def __init__(self, url: str, item: np.ndarray, callers: int) -> None:
        import httpx

        self.url, self.body = url, item.tobytes()
        self.client = httpx.AsyncClient(
            timeout=120,
            limits=httpx.Limits(max_connections=callers, max_keepalive_connections=callers),
        )

    async def __aenter__(self) -> Call:
        async def call() -> None:
            answer = await self.client.post(
                self.url, content=self.body, headers={"Content-Type": "application/octet-stream"}
            )
            answer.raise_for_status()

        return call

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def _efficiency(served: dict[str, dict[str, Any]], raw: float) -> tuple[int, float]:
    best = max(served, key=lambda c: served[c]["inputs_per_s"]["median"])
    return int(best), served[best]["inputs_per_s"]["median"] / raw


def _architecture(model: Any) -> str | None:
    """The registered model's architecture name (its card's)."""
    return model.card.architecture.name if model.card.architecture is not None else None


def _model_options(
    settings: Any, name: str, device: str, env: dict[str, str], quiet: dict[str, Any]
) -> dict[str, Any]:
    """Serving's own options for the model deployment (:mod:`serving.application`), named
    ``model`` and quiet."""
    from serving.application import model_deployment_options

    gpus = 1 if device == "cuda" else 0
    options = model_deployment_options(settings, name, gpus=gpus, runtime_env={"env_vars": env})
    return options | {"name": "model", "logging_config": quiet}


def run_serving(
    *,
    device: str = "cpu",
    slim: bool = False,
    batch: int = 8,
    concurrency: tuple[int, ...] = (1, 8, 16, 32),
    seconds: float = 5.0,
    repeats: int = 3,
    warmup_s: float = 2.0,
) -> dict[str, Any]:
    """Measure raw, handle and HTTP throughput; return the result document.

    Parameters
    ----------
    device
        ``cpu`` or ``cuda``: where the raw runner and the replica run the model.
    slim
        The narrow network on 1x32x32 inputs (``--quick``).
    batch
        ``@serve.batch`` maximum and the raw batch size.
    concurrency
        Closed-loop callers per measurement, rising.
    seconds, repeats
        Length and number of timed windows per measurement.
    warmup_s
        Warm-up before each path.
    """
    import ray
    from ray import serve

    from benchmarks._ingress import RawIngress
    from benchmarks._models import register_models
    from models.registry import ModelRegistry
    from serving.deployments import ModelServer
    from serving.inference import ModelRunner
    from training.tasks import Task

    with tempfile.TemporaryDirectory() as home:
        os.environ["RADCLOUD_HOME"] = home
        os.environ["RADCLOUD_SERVING_MAX_BATCH_SIZE"] = str(batch)
        os.environ["RADCLOUD_SERVING_DEVICE"] = device
        from core.config import load_settings

        settings = load_settings()
        model = register_models(settings.paths.models_dir, slim=slim, tasks=(Task.CHEST_XR,))
        name = model[Task.CHEST_XR].name
        shape = tuple(model[Task.CHEST_XR].card.inputs.shape)

        def measure_raw() -> tuple[dict[str, Any], list[float], list[float]]:
            runner = ModelRunner.from_registry(
                ModelRegistry(settings.paths.models_dir),
                name,
                backend=settings.serving_backend,
                device=device,
            )
            rates, latencies = _raw(runner, batch, seconds, repeats)
            return runner.describe(), rates, latencies

        described, raw_before, latencies_before = measure_raw()
        item = np.random.default_rng(1).random(shape, dtype=np.float32)
        [port] = free_ports(1)
        ray.init(
            address="local",  # never a cluster this machine runs besides
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        try:
            env = {k: v for k, v in os.environ.items() if k.startswith("RADCLOUD_")}
            quiet = {"log_level": "WARNING", "enable_access_log": False}
            serve.start(
                http_options={"host": "127.0.0.1", "port": port},
                logging_config=quiet,
            )
            server: Any = ModelServer
            ingress: Any = RawIngress
            app = ingress.options(
                name="ingress",
                logging_config=quiet,
                max_ongoing_requests=max(4 * batch, 64),
                ray_actor_options={"num_cpus": 0.25},
            ).bind(
                server.options(**_model_options(settings, name, device, env, quiet)).bind(name),
                shape,
            )
            serve.run(app, name="bench", route_prefix="/infer")
            handle = serve.get_deployment_handle("model", app_name="bench")
            url = f"http://127.0.0.1:{port}/infer"
            served = asyncio.run(
                _sweep(
                    lambda _: _HandleCalls(handle, item), concurrency, seconds, repeats, warmup_s
                )
            )
            over_http = asyncio.run(
                _sweep(lambda c: _HttpCalls(url, item, c), concurrency, seconds, repeats, warmup_s)
            )
            stats = handle.stats.remote().result()
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
        _, raw_after, latencies_after = measure_raw()
    raw = raw_before + raw_after
    raw_latencies = latencies_before + latencies_after
    raw_summary = summarise(raw)
    best_handle, handle_efficiency = _efficiency(served, raw_summary["median"])
    best_http, http_efficiency = _efficiency(over_http, raw_summary["median"])
    batches = stats["batch_size_counts"]
    mean_batch = sum(int(k) * v for k, v in batches.items()) / max(sum(batches.values()), 1)
    return {
        "suite": "serving",
        "device": device,
        "slim": slim,
        "machine": describe_machine(),
        "model": {
            "name": name,
            "architecture": _architecture(model[Task.CHEST_XR]),
            "input": list(shape),
            "weights": "random (seeded)",
            "runner": described,
        },
        "batch_size": batch,
        "seconds_per_window": seconds,
        "repeats": repeats,
        "concurrency": list(concurrency),
        "raw_inputs_per_s": raw_summary,
        "raw_batch_latency_s": percentiles(raw_latencies),
        "raw_before_and_after_inputs_per_s": {
            "before": summarise(raw_before),
            "after": summarise(raw_after),
        },
        "raw_samples": {
            "inputs_per_s": [round(r, 3) for r in raw],
            "batch_latency_s": [round(x, 6) for x in raw_latencies],
        },
        "handle": served,
        "http": over_http,
        "saturation_concurrency": {"handle": best_handle, "http": best_http},
        "efficiency": {"handle": handle_efficiency, "http": http_efficiency},
        "goal": "efficiency >= 0.9",
        "mean_batch_size": mean_batch,
        "batch_size_counts": batches,
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table."""
    raw = result["raw_inputs_per_s"]
    lat = result["raw_batch_latency_s"]
    batch = result["batch_size"]
    lines = [
        "| path | callers | inputs/s (median, min-max) | vs raw | latency p50 / p95 ms |",
        "|---|---:|---:|---:|---:|",
        f"| raw {result['model']['runner']['backend']} ({result['model']['runner']['device']}),"
        f" batch {batch} | - | {raw['median']:.1f} ({raw['min']:.1f}-{raw['max']:.1f}) | 1.00 | "
        f"{lat['p50'] * 1000:.0f} / {lat['p95'] * 1000:.0f} (per batch) |",
    ]
    for path, label in (("handle", "Ray Serve handle"), ("http", "HTTP through Serve's proxy")):
        for callers, measured in result[path].items():
            rate, latency = measured["inputs_per_s"], measured["latency_s"]
            lines.append(
                f"| {label}, @serve.batch {batch} | {callers} | "
                f"{rate['median']:.1f} ({rate['min']:.1f}-{rate['max']:.1f}) | "
                f"{rate['median'] / raw['median']:.2f} | "
                f"{latency['p50'] * 1000:.0f} / {latency['p95'] * 1000:.0f} |"
            )
    efficiency = result["efficiency"]
    halves = result.get("raw_before_and_after_inputs_per_s")
    if halves:
        lines.append(
            f"\nRaw backend before the serve paths {halves['before']['median']:.1f} inputs/s, "
            f"after them {halves['after']['median']:.1f} (medians; the table pools both)."
        )
    lines.append(
        f"\nServing efficiency (best concurrency / raw; goal 0.9): handle "
        f"**{efficiency['handle']:.2f}**, HTTP **{efficiency['http']:.2f}**; mean batch "
        f"{result['mean_batch_size']:.1f}"
    )
    return "\n".join(lines)


def main() -> None:
    """Command line entry point (``radcloud bench --suite serving`` writes the full report)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, short windows")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        result = run_serving(device=args.device, **QUICK)
    else:
        result = run_serving(device=args.device)
    path = write_result("serving", args.device, result, args.out)
    print(markdown(result))
    print(f"written to {path}")


#: ``--quick``: the narrow model, two concurrencies, short windows.
QUICK: dict[str, Any] = {
    "slim": True,
    "batch": 4,
    "concurrency": (1, 4),
    "seconds": 0.5,
    "repeats": 1,
    "warmup_s": 0.5,
}


if __name__ == "__main__":
    main()
