"""Small models registered for serving tests: the real cards of the two tasks, slim networks
with seeded random weights, and a chosen operating threshold (0: every study is critical,
above 1: none is). They exercise the whole serving path in seconds; they detect nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmarks._models import random_weight_card
from models.networks import build_network
from models.registry import ModelRegistry, RegisteredModel
from training.tasks import Task, task_spec

__all__ = ["SLIM_PARAMS", "register_fixture_models", "register_fixture_version"]

SLIM_PARAMS: dict[Task, dict[str, Any]] = {
    Task.HEAD_CT: {"channels": [4, 8, 8, 8], "num_res_units": 1},
    Task.CHEST_XR: {"block_inplanes": [4, 4, 4, 4]},
}
_SHA = "0" * 64  # no training data


def _favour_lesion(network: torch.nn.Module) -> None:
    """Make the segmenter call every voxel lesion (a SEG is then always written)."""
    last = [
        m for m in network.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ][-1]
    with torch.no_grad():
        last.bias += torch.tensor([-20.0, 20.0])


def register_fixture_version(
    models_dir: Path, task: Task, threshold: float, **metrics: float
) -> RegisteredModel:
    """Register the next version (staged) of the slim model of ``task``; ``metrics`` replace
    figures of its card (e.g. ``auc=0.1``: a card below the production's floor)."""
    spec = task_spec(task)
    params = {**spec.architecture_params, **SLIM_PARAMS[task]}
    card, config = random_weight_card(
        spec, params, threshold, "serving test fixture: random weights"
    )
    if metrics:
        card = card.model_copy(update={"metrics": card.metrics.model_copy(update=metrics)})
    torch.manual_seed(0)
    network = build_network(card.architecture)
    if task is Task.HEAD_CT:
        _favour_lesion(network)
    return ModelRegistry(models_dir).register(
        card,
        network,
        torch.rand(1, *card.inputs.shape),
        metrics={"fixture": True},
        training_config=config.to_json(),
        data_manifest_sha256=_SHA,
    )


def register_fixture_models(
    models_dir: Path,
    thresholds: dict[Task, float] | None = None,
    tasks: tuple[Task, ...] = (Task.HEAD_CT, Task.CHEST_XR),
) -> dict[str, str]:
    """Register and promote one slim model per task in ``models_dir``; return name → version.

    ``thresholds`` sets each card's operating threshold (default: head CT 0.0, so every head CT
    is flagged critical; chest X-ray 1.0, so no radiograph is). The head CT segmenter marks
    every voxel as lesion.
    """
    defaults = {Task.HEAD_CT: 0.0, Task.CHEST_XR: 1.0} | (thresholds or {})
    registry = ModelRegistry(models_dir)
    versions = {}
    for task in tasks:
        model = register_fixture_version(models_dir, task, defaults[task])
        registry.promote(model.name, model.version)
        versions[model.name] = str(model.version)
    return versions
