"""Training on synthetic studies made in memory (the default source of ``radcloud train``).

A run's size is a time budget (:data:`STREAM_PRESETS`): the network trains on fresh studies
(:class:`training.stream.StudyPool`) until the budget is spent, validating every few minutes and
checkpointing after each validation into ``RADCLOUD_HOME/training/<task>/checkpoints/
<preset>-s<seed>.pt``; the same command started again resumes from that checkpoint (after a
crash, a stop, or a finished run, which then goes straight to evaluation).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imaging.synthetic import GENERATOR_VERSION
from training.loop import FitResult, StreamSchedule, fit_stream, select_device
from training.stream import StudyPool, StudySet, balanced_positive, render_study, split_seed
from training.tasks import Task, task_spec

__all__ = [
    "STREAM_PRESETS",
    "StreamConfig",
    "StreamPreset",
    "checkpoint_path",
    "fit_synthetic",
    "stream_preset",
    "train_synthetic",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamPreset:
    """Sizes of a synthetic run: time budget, pool, evaluation sets."""

    minutes: float
    pool: int
    refresh_every: int
    batch_studies: int
    learning_rate: float
    validate_every_min: float
    validation_studies: int  # model selection during training
    calibration_studies: int  # Platt scaling and the operating threshold (validation seed)
    test_positives: int
    test_negatives: int


STREAM_PRESETS: dict[tuple[Task, str], StreamPreset] = {
    (Task.HEAD_CT, "tiny"): StreamPreset(0.3, 4, 2, 2, 2e-3, 0.15, 4, 6, 3, 3),
    (Task.HEAD_CT, "demo"): StreamPreset(6.0, 24, 2, 2, 2e-3, 1.5, 16, 40, 40, 40),
    (Task.HEAD_CT, "full"): StreamPreset(60.0, 48, 2, 2, 2e-3, 6.0, 24, 120, 300, 300),
    (Task.CHEST_XR, "tiny"): StreamPreset(0.3, 16, 1, 8, 2e-3, 0.15, 8, 12, 4, 4),
    (Task.CHEST_XR, "demo"): StreamPreset(4.0, 256, 1, 16, 2e-3, 1.0, 60, 100, 60, 60),
    (Task.CHEST_XR, "full"): StreamPreset(40.0, 128, 1, 16, 2e-3, 4.0, 60, 300, 300, 300),
}


def stream_preset(task: Task | str, preset: str) -> StreamPreset:
    """The sizes of ``preset`` for ``task``."""
    return STREAM_PRESETS[(Task(task), str(preset))]


def checkpoint_path(home: Path, task: Task | str, preset: str, seed: int) -> Path:
    """Where a synthetic run of ``task``/``preset``/``seed`` keeps its resumable state."""
    return home / "training" / Task(task).value / "checkpoints" / f"{preset}-s{seed}.pt"


def fit_synthetic(
    task: Task | str,
    preset: str,
    home: Path,
    *,
    seed: int = 0,
    gpu: bool = False,
    minutes: float | None = None,
    on_epoch: object | None = None,
) -> FitResult:
    """Train (or resume training) ``task`` on fresh synthetic studies for the preset's budget.

    Parameters
    ----------
    task, preset
        What to train, how long (``minutes`` overrides the preset's budget).
    home
        ``RADCLOUD_HOME`` (the checkpoint lives under it).
    seed
        Training dataset seed (validation and test use :func:`training.stream.split_seed`).
    gpu
        Train on CUDA when present.
    on_epoch
        Called after each validation with (number, -1, metrics).
    """
    spec = task_spec(task)
    sizes = stream_preset(task, preset)
    schedule = StreamSchedule(
        minutes=sizes.minutes if minutes is None else minutes,
        batch_studies=sizes.batch_studies,
        learning_rate=sizes.learning_rate,
        validate_every_s=sizes.validate_every_min * 60.0,
    )
    checkpoint = checkpoint_path(home, task, preset, seed)
    pool_size = sizes.pool
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        if saved["elapsed"] >= schedule.minutes * 60.0:
            pool_size = 0  # finished: straight to the final validation, no training studies
    pool = StudyPool(spec, seed, pool_size, refresh_every=sizes.refresh_every)
    validation_seed = split_seed(seed, StudySet.VALIDATION)
    validation = [
        render_study(spec, validation_seed, index, balanced_positive(validation_seed, index, 0.5))
        for index in range(sizes.validation_studies)
    ]
    return fit_stream(
        spec,
        pool,
        validation,
        schedule,
        device=select_device(gpu),
        checkpoint=checkpoint,
        seed=seed,
        on_epoch=on_epoch,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class StreamConfig:
    """A synthetic run's parameters, as recorded with the model."""

    task: Task
    preset: str
    seed: int
    minutes: float
    gpu: bool
    command: str

    def to_json(self) -> dict[str, object]:
        """A JSON-serialisable dict (the preset's sizes included)."""
        sizes = stream_preset(self.task, self.preset)
        return {
            "task": self.task.value,
            "preset": self.preset,
            "seed": self.seed,
            "minutes": self.minutes,
            "gpu": self.gpu,
            "command": self.command,
            "sizes": sizes.__dict__,
        }


def _heldout(
    task: Task, part: StudySet, seed: int, home: Path, *, positives: int, negatives: int
) -> Path:
    from training.heldout import HeldoutSet, write_heldout

    selection = HeldoutSet(task, part, seed, positives, negatives)
    return write_heldout(selection, home, oracle=part is StudySet.TEST)


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()} {platform.processor() or 'cpu'}, {os.cpu_count()} cores (shared)"


def train_synthetic(
    task: Task | str,
    preset: str,
    *,
    home: Path,
    register: Callable[..., str] | None = None,
    on_epoch: object | None = None,
    seed: int = 0,
    gpu: bool = False,
    minutes: float | None = None,
    results_dir: Path | None = None,
    render_heldout: bool = True,
) -> dict[str, Any]:
    """Train (resuming), evaluate on held-out studies, register: the synthetic pipeline.

    Returns the results (also written to ``results_dir/<model>-<preset>-s<seed>.json`` when
    given, with the ROC, reliability and training-curve plots beside it).
    ``render_heldout=False`` evaluates on the held-out studies already stored (a set cut short
    by a deadline) instead of rendering the preset's counts.
    """
    from training.evaluation import score_heldout, test_report
    from training.metrics import plot_curves, plot_quality_vs_time, quality_at

    task = Task(task)
    spec = task_spec(task)
    sizes = stream_preset(task, preset)
    budget = sizes.minutes if minutes is None else minutes
    command = f"radcloud train --task {task.value} --preset {preset} --seed {seed}" + (
        f" (minutes {budget:g})" if minutes is not None else ""
    )
    config = StreamConfig(task, preset, seed, budget, gpu, command)
    fitted = fit_synthetic(
        task, preset, home, seed=seed, gpu=gpu, minutes=budget, on_epoch=on_epoch
    )
    evaluation_started = time.perf_counter()  # fitted.seconds counts resumed runs' time too
    model = spec.network()
    model.load_state_dict(fitted.state_dict)
    half = sizes.calibration_studies // 2 if render_heldout else 0
    validation_dir = _heldout(task, StudySet.VALIDATION, seed, home, positives=half, negatives=half)
    test_dir = _heldout(
        task,
        StudySet.TEST,
        seed,
        home,
        positives=sizes.test_positives if render_heldout else 0,
        negatives=sizes.test_negatives if render_heldout else 0,
    )
    validation = score_heldout(spec, model, validation_dir)
    test = score_heldout(spec, model, test_dir)
    name = f"{spec.model_name}-{preset}-s{seed}"
    out_dir = results_dir or (home / "training" / task.value / "results")
    results = test_report(spec, validation, test, plots_dir=out_dir, name=name)
    results["plots"].append(
        str(plot_curves(fitted.history, out_dir / f"{name}-curves.png", f"{name} (validation)"))
    )
    results["plots"].append(
        str(plot_quality_vs_time(fitted.history, out_dir / f"{name}-time.png", name))
    )
    results |= {
        "config": config.to_json(),
        "history": fitted.history,
        # what a shorter run of the same schedule had by then (validation set, CPU minutes)
        "quality_vs_time": quality_at(fitted.history),
        "machine": _machine(),
        "training_seconds": fitted.history["seconds"][-1] if fitted.history["seconds"] else 0.0,
        "evaluation_seconds": time.perf_counter() - evaluation_started,
        "synthetic": True,
        "heldout": {"validation": str(validation_dir), "test": str(test_dir)},
    }
    if register is not None:
        results["version"] = register(spec, config, model.cpu(), _card_facts(results), str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def _card_facts(results: dict[str, Any]) -> dict[str, Any]:
    """What :func:`training.registration.build_card` reads, from a synthetic run's results."""
    test = results["test"]
    card_extra = {
        "auc_ci_low": test["auc_95ci"][0],
        "auc_ci_high": test["auc_95ci"][1],
        "test_positives": test["positives"],
        "test_negatives": test["negatives"],
        "training_minutes": results["training_seconds"] / 60.0,
    }
    for key, value in results.get("oracle", {}).items():
        if isinstance(value, float):
            card_extra[f"oracle_{key}"] = value
    config = results["config"]
    return {
        "metrics": {key: results[key] for key in ("test", "validation", "breakdown")},
        "baseline": results["baseline"],
        # the data is pinned by the generator version and the seeds: their digest
        "data_sha256": hashlib.sha256(
            json.dumps(
                {"generator": GENERATOR_VERSION, "config": config, "heldout": results["heldout"]},
                sort_keys=True,
            ).encode()
        ).hexdigest(),
        "synthetic": True,
        "split_counts": {
            "validation": results["validation"]["studies"],
            "test": test["positives"] + test["negatives"],
        },
        "threshold": test["threshold"],
        "calibration": results["calibration"],
        "history": results["history"],
        "card_extra": card_extra,
        "source": (
            f"trained by radcloud: {config['command']} (seed {config['seed']}), "
            f"{results['training_seconds'] / 60:.0f} min on {results['machine']}"
        ),
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m training.stream_run``: train (resuming), evaluate and register, with a time
    budget other than the preset's (``radcloud train`` runs the preset's)."""
    import argparse

    from training.registration import registry_callback

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--task", required=True, choices=[task.value for task in Task])
    parser.add_argument("--preset", default="full", choices=["tiny", "demo", "full"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--home", type=Path, required=True, help="RADCLOUD_HOME")
    parser.add_argument("--results", type=Path, default=None, help="results folder")
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--no-render", action="store_true", help="stored held-out studies only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = train_synthetic(
        args.task,
        args.preset,
        home=args.home,
        register=None if args.no_register else registry_callback(args.home / "models"),
        seed=args.seed,
        minutes=args.minutes,
        results_dir=args.results,
        render_heldout=not args.no_render,
    )
    logger.info("test %s; version %s", results["test"], results.get("version"))


if __name__ == "__main__":
    main()
