"""The training loop shared by single-process runs and Ray Train workers.

MONAI ``PersistentDataset`` caches the deterministic pre-processing on disk (so later epochs and
retrainings skip decoding and resampling); random augmentation runs after the cache. With CUDA,
the forward pass runs under automatic mixed precision. Inside a Ray Train worker the model and
loaders are wrapped by ``ray.train.torch`` (DDP, distributed sampling).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, MetaTensor, PersistentDataset
from monai.transforms import Compose

from training.metrics import dice, roc_auc
from training.tasks import TaskSpec

__all__ = ["FitResult", "Predictions", "fit", "predict", "select_device"]

logger = logging.getLogger(__name__)

# RandCropByPosNegLabeld says so for every study without a lesion: expected, not a problem.
warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)

ProgressCallback = Callable[[int, int, dict[str, float]], None]


def _plain(value: Any) -> torch.Tensor:
    """A plain tensor: MONAI's MetaTensor would route every operation of the forward and
    backward pass through ``__torch_function__`` (measured: most of the step time on CPU)."""
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def select_device(prefer_gpu: bool = True) -> torch.device:
    """CUDA when present (and wanted), else CPU."""
    return torch.device("cuda" if prefer_gpu and torch.cuda.is_available() else "cpu")


@dataclass
class Predictions:
    """Per-study outputs on an evaluation set."""

    studies: list[str]
    labels: list[int]
    scores: list[float]
    dices: list[float] = field(default_factory=list)  # positive studies, segmentation only

    @property
    def auc(self) -> float:
        """ROC AUC of the triage scores; NaN when the set holds only one class."""
        if len(set(self.labels)) < 2:
            return float("nan")
        return roc_auc(self.labels, self.scores)

    @property
    def mean_dice(self) -> float | None:
        """Mean Dice over positive studies (segmentation tasks)."""
        return float(np.mean(self.dices)) if self.dices else None


@dataclass
class FitResult:
    """What training produced."""

    state_dict: dict[str, torch.Tensor]
    history: dict[str, list[float]]
    best_epoch: int
    seconds: float


def _dataset(spec: TaskSpec, items: list[dict[str, Any]], cache_dir: Path, train: bool) -> Any:
    # One flat chain: PersistentDataset caches up to the first random transform, and a nested
    # Compose counts as random, which would cache nothing (and mix cache entries of the
    # training and evaluation pipelines). Flat, both cache the same deterministic prefix.
    steps = [*spec.preprocess().flatten().transforms]  # type: ignore[no-untyped-call]
    if train:
        steps += spec.augment().flatten().transforms  # type: ignore[no-untyped-call]
    transform = Compose(steps)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return PersistentDataset(items, transform=transform, cache_dir=cache_dir)


def predict(
    spec: TaskSpec,
    model: torch.nn.Module,
    items: list[dict[str, Any]],
    cache_dir: Path,
    device: torch.device,
) -> Predictions:
    """Score every item (whole images, no augmentation)."""
    loader = DataLoader(_dataset(spec, items, cache_dir, train=False), batch_size=1, num_workers=0)
    model.eval()
    result = Predictions([], [], [])
    with torch.no_grad():
        for item, batch in zip(items, loader, strict=True):
            image = _plain(batch["image"]).to(device)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                output = model(image)
            result.studies.append(item["study"])
            result.labels.append(int(item["label"]))
            result.scores.append(float(spec.study_score(output)[0]))
            if spec.segmentation and int(item["label"]) == 1:
                predicted = output.argmax(dim=1)[0].cpu().numpy()
                result.dices.append(dice(predicted, batch["mask"][0, 0].numpy() > 0.5))
    return result


def fit(
    spec: TaskSpec,
    train_items: list[dict[str, Any]],
    val_items: list[dict[str, Any]],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    cache_dir: Path,
    device: torch.device,
    seed: int = 0,
    on_epoch: ProgressCallback | None = None,
    distributed: bool = False,
) -> FitResult:
    """Train ``spec``'s network; keep the weights of the best validation epoch.

    Parameters
    ----------
    spec
        The task.
    train_items, val_items
        MONAI dictionary items (:func:`training.data.to_monai_items`).
    epochs, batch_size, learning_rate
        Optimisation (Adam, cosine schedule).
    cache_dir
        Where the persistent pre-processing cache lives.
    device
        Where to train.
    seed
        Seed of weights, sampling and augmentation.
    on_epoch
        Called after each epoch with (epoch, epochs, metrics) — progress bars.
    distributed
        Running inside a Ray Train worker: wrap model and loader with ``ray.train.torch``.

    Returns
    -------
    FitResult
        The best weights (by validation score: Dice for segmentation, else AUC) and history.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    started = time.perf_counter()
    model = spec.network().to(device)
    loader: torch.utils.data.DataLoader[Any] = DataLoader(
        _dataset(spec, train_items, cache_dir, train=True),
        batch_size=batch_size,
        shuffle=True,
        num_workers=0,
    )
    if distributed:
        import ray.train.torch as ray_torch

        model = ray_torch.prepare_model(model)
        loader = ray_torch.prepare_data_loader(loader)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(epochs, 1))
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
    loss_function = spec.loss().to(device)  # class weights are buffers: onto the device too
    history: dict[str, list[float]] = {"train loss": [], "validation AUC": []}
    if spec.segmentation:
        history["validation Dice"] = []
    best, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    inner = getattr(model, "module", None)  # DistributedDataParallel wraps the network
    base: torch.nn.Module = inner if isinstance(inner, torch.nn.Module) else model
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for batch in loader:
            image = _plain(batch["image"]).to(device)
            target = _plain(batch["mask"] if spec.segmentation else batch["label"]).to(device)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                output = model(image)
                if not spec.segmentation:
                    output, target = output.reshape(-1), target.float().reshape(-1)
                loss: torch.Tensor = loss_function(output, target)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimiser)
            scaler.update()
            losses.append(float(loss.detach()))
        schedule.step()
        validation = predict(spec, base, val_items, cache_dir, device)
        metrics = {"train loss": float(np.mean(losses)), "validation AUC": validation.auc}
        if spec.segmentation:
            metrics["validation Dice"] = validation.mean_dice or 0.0
        for name, value in metrics.items():
            history[name].append(value)
        score = float(np.nansum([metrics.get("validation Dice", 0.0), metrics["validation AUC"]]))
        if score > best:
            best, best_epoch = score, epoch
            best_state = copy.deepcopy(base.state_dict())
        logger.info("epoch %d/%d %s", epoch, epochs, metrics)
        if on_epoch is not None:
            on_epoch(epoch, epochs, metrics)
    return FitResult(best_state, history, best_epoch, time.perf_counter() - started)
