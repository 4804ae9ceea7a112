"""Distributed training with Ray Train's ``TorchTrainer``: the same :func:`training.loop.fit`,
run by ``workers`` processes (DDP, one data shard each; ``gpu`` gives each worker a GPU).

Joins the Ray cluster at ``RAY_ADDRESS`` when one is set, else starts a local one. The best
weights come back as a Ray Train checkpoint written by rank 0.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.exceptions import TrainingRunError
from training.loop import FitResult, fit
from training.tasks import TaskSpec

if TYPE_CHECKING:
    from training.pipeline import TrainingConfig

__all__ = ["fit_distributed"]

logger = logging.getLogger(__name__)


def fit_distributed(
    spec: TaskSpec,
    train_items: list[dict[str, Any]],
    val_items: list[dict[str, Any]],
    *,
    config: TrainingConfig,
    cache_dir: Path,
) -> FitResult:
    """Train with ``config.workers`` Ray Train workers and return rank 0's best weights.

    Parameters
    ----------
    spec, train_items, val_items
        As for :func:`training.loop.fit`.
    config
        ``workers``, ``gpu``, ``epochs``, ``batch_size``, ``learning_rate`` and ``seed``.
    cache_dir
        The persistent pre-processing cache (shared by the workers on one machine).
    """
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started_here = not ray.is_initialized()
    if started_here:
        # RAY_ADDRESS names a cluster to train on; without it a Ray of our own, never the one
        # another `ray start` on this machine left in /tmp/ray/ray_current_cluster
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or "local",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )

    def train_loop(_: dict[str, Any]) -> None:
        context = ray.train.get_context()
        result = fit(
            spec,
            train_items,
            val_items,
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            cache_dir=cache_dir,
            device=ray.train.torch.get_device(),
            seed=config.seed + context.get_world_rank(),
            distributed=True,
        )
        metrics = {"best_epoch": result.best_epoch, "seconds": result.seconds}
        if context.get_world_rank() == 0:
            with tempfile.TemporaryDirectory() as directory:
                torch.save(result.state_dict, Path(directory) / "model.pt")
                (Path(directory) / "history.json").write_text(json.dumps(result.history))
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)

    try:
        trainer = TorchTrainer(
            train_loop,
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.gpu),
            run_config=RunConfig(
                name=f"{spec.model_name}-{config.preset}",
                storage_path=str((cache_dir.parent / "ray").absolute()),
            ),
        )
        outcome = trainer.fit()
        if outcome.checkpoint is None:
            run = f"{spec.model_name}-{config.preset}"
            raise TrainingRunError(run, f"Ray Train returned no checkpoint: {outcome.error}")
        with outcome.checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "model.pt", weights_only=True)
            history = json.loads((Path(directory) / "history.json").read_text())
        metrics = outcome.metrics or {}
        logger.info("distributed training with %d workers done: %s", config.workers, metrics)
        return FitResult(
            state, history, int(metrics.get("best_epoch", 0)), float(metrics.get("seconds", 0.0))
        )
    finally:
        if started_here:
            ray.shutdown()
