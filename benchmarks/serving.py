"""Serving efficiency: a model's throughput through Ray Serve against its raw backend.

``python -m benchmarks.serving [--quick] [--out DIR]``

One model (by default DenseNet-121 2D at the chest model's 1x128x128 input, random weights,
exported to ONNX; nothing is downloaded) is registered in a temporary registry and run:

- **raw**: the backend alone (ONNX Runtime, the replica's settings) on full batches, in this
  process: the ceiling;
- **serve**: radcloud's :class:`serving.deployments.ModelServer` in a local Ray Serve, fed single
  inputs by closed-loop callers through a deployment handle (as the triage workers call it:
  no pixels through HTTP), at rising concurrency; ``@serve.batch`` assembles the batches.

Efficiency = serve throughput at saturation / raw throughput at the same batch size, both
measured in the same run on the same machine. Each figure is the median of ``repeats`` timed
windows after a warm-up; min and max are reported beside it. On a machine with few cores the
callers share the CPUs with the model, which the efficiency then includes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._env import describe_machine, summarise, write_result

__all__ = ["main", "run_serving"]

logger = logging.getLogger(__name__)


def _register(models_dir: Path, architecture: str, shape: tuple[int, ...]) -> str:
    """Register and promote a random-weight model of ``architecture``; return its name."""
    import torch

    from models.card import (
        InputSpec,
        IntensityNormalization,
        ModelCard,
        OperatingThreshold,
        OutputSpec,
        TrainingData,
        default_series_selection,
    )
    from models.card import Task as ModelTask
    from models.networks import architecture_ref, build_network
    from models.registry import ModelRegistry

    ref = architecture_ref(architecture)
    card = ModelCard(
        name="bench-model",
        task=ModelTask.CHEST_XR_TRIAGE,
        description="benchmark model: random weights, not for any use",
        architecture=ref,
        inputs=InputSpec(
            modality="DX",
            body_part="CHEST",
            normalization=IntensityNormalization(method="none"),
            shape=shape,
            axes="CWH",
        ),
        outputs=OutputSpec(
            kind="classification",
            activation="sigmoid",
            shape=(1,),
            channel_def={0: "finding"},
            meaning="logit",
        ),
        threshold=OperatingThreshold(value=0.5, method="none (benchmark)"),
        training_data=TrainingData(source="none: random weights (benchmark)"),
        intended_use="benchmark only",
        series_selection=default_series_selection(ModelTask.CHEST_XR_TRIAGE),
    )
    torch.manual_seed(0)
    registry = ModelRegistry(models_dir)
    model = registry.register(
        card,
        build_network(ref),
        torch.rand(1, *shape),
        metrics={},
        training_config={},
        data_manifest_sha256="0" * 64,
    )
    registry.promote(model.name, model.version)
    return model.name


def _raw(runner: Any, batch: int, seconds: float, repeats: int) -> list[float]:
    """Inputs per second of the bare backend on full batches."""
    data = np.random.default_rng(0).random((batch, *runner.input_shape), dtype=np.float32)
    runner.predict(data)
    rates = []
    for _ in range(repeats):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            runner.predict(data)
            done += batch
        rates.append(done / (time.perf_counter() - started))
    return rates


async def _closed_loop(handle: Any, shape: tuple[int, ...], callers: int, seconds: float) -> float:
    item = np.random.default_rng(1).random(shape, dtype=np.float32)
    done = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await handle.predict.remote(item)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - started)


def run_serving(
    *,
    architecture: str = "densenet121-2d",
    shape: tuple[int, ...] = (1, 128, 128),
    batch: int = 8,
    concurrency: tuple[int, ...] = (8, 16, 32),
    seconds: float = 5.0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Measure raw and served throughput; return the result document."""
    import ray
    from ray import serve

    from models.registry import ModelRegistry
    from serving.deployments import ModelServer
    from serving.inference import ModelRunner

    with tempfile.TemporaryDirectory() as home:
        os.environ["RADCLOUD_HOME"] = home
        os.environ["RADCLOUD_SERVING_MAX_BATCH_SIZE"] = str(batch)
        os.environ["RADCLOUD_SERVING_DEVICE"] = "cpu"
        from radcloud.config import load_settings

        settings = load_settings()
        name = _register(settings.paths.models_dir, architecture, shape)
        runner = ModelRunner.from_registry(ModelRegistry(settings.paths.models_dir), name)
        raw = _raw(runner, batch, seconds, repeats)
        del runner
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
        try:
            env = {k: v for k, v in os.environ.items() if k.startswith("RADCLOUD_")}
            deployment: Any = ModelServer
            app = deployment.options(
                name="bench",
                max_ongoing_requests=max(2 * batch, 8),
                ray_actor_options={"num_cpus": 0.5, "runtime_env": {"env_vars": env}},
            ).bind(name)
            handle = serve.run(app, name="bench", route_prefix=None)
            asyncio.run(_closed_loop(handle, shape, max(concurrency), 2.0))  # warm-up
            served: dict[str, dict[str, float]] = {}
            for callers in concurrency:
                rates = [
                    asyncio.run(_closed_loop(handle, shape, callers, seconds))
                    for _ in range(repeats)
                ]
                served[str(callers)] = summarise(rates)
            stats = handle.stats.remote().result()
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
    raw_summary = summarise(raw)
    best = max(served, key=lambda c: served[c]["median"])
    batches = stats["batch_size_counts"]
    mean_batch = sum(int(k) * v for k, v in batches.items()) / max(sum(batches.values()), 1)
    return {
        "suite": "serving",
        "machine": describe_machine(),
        "model": {"architecture": architecture, "input": list(shape), "backend": "onnx (CPU)"},
        "batch_size": batch,
        "seconds_per_window": seconds,
        "repeats": repeats,
        "raw_inputs_per_s": raw_summary,
        "serve_handle_inputs_per_s": served,
        "saturation_concurrency": int(best),
        "efficiency": served[best]["median"] / raw_summary["median"],
        "mean_batch_size": mean_batch,
        "batch_size_counts": batches,
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table."""
    raw = result["raw_inputs_per_s"]
    lines = [
        "| path | callers | inputs/s (median, min-max) | vs raw |",
        "|---|---:|---:|---:|",
        f"| raw ONNX Runtime, batch {result['batch_size']} | - | {raw['median']:.1f} "
        f"({raw['min']:.1f}-{raw['max']:.1f}) | 1.00 |",
    ]
    for callers, rate in result["serve_handle_inputs_per_s"].items():
        lines.append(
            f"| Ray Serve handle, @serve.batch {result['batch_size']} | {callers} | "
            f"{rate['median']:.1f} ({rate['min']:.1f}-{rate['max']:.1f}) | "
            f"{rate['median'] / raw['median']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, short windows")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        result = run_serving(shape=(1, 32, 32), batch=4, concurrency=(4,), seconds=1.0, repeats=1)
    else:
        result = run_serving()
    path = write_result("serving", "cpu", result, args.out)
    print(markdown(result))
    print(f"efficiency {result['efficiency']:.2f}; written to {path}")


if __name__ == "__main__":
    main()
