"""Models the benchmarks run: the production architectures with random weights.

Speed does not depend on what a network learnt, so the suites register the two production
networks of :mod:`training.tasks` (the head-CT 2.5D UNet and the chest DenseNet-121) with seeded
random weights and the real model cards (pre-processing, outputs, series selection) in a scratch
registry; nothing is trained or downloaded. ``slim`` (``--quick``) narrows the networks and the
inputs so that a whole harness run takes a minute or two: those figures measure the harness,
not the models. The approach is the one of the serving tests' fixture models, copied here so
that benchmarks never import from ``tests``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from models.card import ArchitectureRef, ModelCard
from models.networks import build_network
from models.registry import ModelRegistry, RegisteredModel
from training.pipeline import Preset, TrainingConfig
from training.registration import build_card
from training.tasks import Task, TaskSpec, task_spec

__all__ = ["BENCH_TASKS", "random_weight_card", "register_models"]

BENCH_TASKS = (Task.HEAD_CT, Task.CHEST_XR)

_SLIM_PARAMS: dict[Task, dict[str, Any]] = {
    Task.HEAD_CT: {"channels": [4, 8, 8, 8], "num_res_units": 1},
    Task.CHEST_XR: {"block_inplanes": [4, 4, 4, 4]},
}
_SLIM_SIZE: dict[Task, tuple[int, ...]] = {Task.HEAD_CT: (32, 32, 8), Task.CHEST_XR: (32, 32)}
_SHA = "0" * 64


def random_weight_card(
    spec: TaskSpec, params: dict[str, Any], threshold: float, description: str
) -> tuple[ModelCard, TrainingConfig]:
    """The task's real model card around ``spec.architecture`` built with ``params``, with
    untrained metrics and the operating ``threshold`` (and the training config it names)."""
    config = TrainingConfig(
        spec.task, Preset.TINY, studies=0, epochs=0, batch_size=1, learning_rate=0
    )
    extra = {
        "metrics": {"test": {"auc": 0.5, "sensitivity": 0.0, "specificity": 0.0}},
        "threshold": threshold,
        "data_sha256": _SHA,
        "split_counts": {},
        "baseline": {"auc": 0.5},
        "history": {},
        "synthetic": True,
    }
    architecture = ArchitectureRef(name=spec.architecture, params=params)
    card = build_card(spec, config, extra).model_copy(
        update={"architecture": architecture, "description": description}
    )
    return card, config


def register_models(
    models_dir: Path,
    *,
    slim: bool = False,
    threshold: float = 0.5,
    tasks: tuple[Task, ...] = BENCH_TASKS,
) -> dict[Task, RegisteredModel]:
    """Register and promote one random-weight model per task in ``models_dir``.

    Parameters
    ----------
    models_dir
        A registry directory (created when missing).
    slim
        Narrow networks and small inputs (``--quick``) instead of the production ones.
    threshold
        The cards' operating threshold.
    tasks
        Which tasks.

    Returns
    -------
    dict
        Task → the production version registered for it.
    """
    registry = ModelRegistry(models_dir)
    registered: dict[Task, RegisteredModel] = {}
    for task in tasks:
        spec = task_spec(task)
        params = dict(spec.architecture_params)
        if slim:
            spec = replace(spec, spatial_size=_SLIM_SIZE[task])
            params |= _SLIM_PARAMS[task]
        card, config = random_weight_card(
            spec, params, threshold, "benchmark model: random weights, detects nothing"
        )
        torch.manual_seed(0)
        model = registry.register(
            card,
            build_network(card.architecture),  # type: ignore[arg-type]
            torch.rand(1, *card.inputs.shape),
            metrics={"benchmark": True},
            training_config=config.to_json(),
            data_manifest_sha256=_SHA,
        )
        registry.promote(model.name, model.version)
        registered[task] = registry.get(model.name, "production")
    return registered
