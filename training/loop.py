"""The training loop shared by single-process runs and Ray Train workers.

MONAI ``PersistentDataset`` caches the deterministic pre-processing on disk (so later epochs and
retrainings skip decoding and resampling); random augmentation runs after the cache. With CUDA,
the forward pass runs under automatic mixed precision. Inside a Ray Train worker the model and
loaders are wrapped by ``ray.train.torch`` (DDP, distributed sampling).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, MetaTensor, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose

from models.slice_stack import slice_stacks
from training.metrics import dice, roc_auc
from training.tasks import TaskSpec

__all__ = [
    "FitResult",
    "Predictions",
    "StreamSchedule",
    "fit",
    "fit_stream",
    "predict",
    "select_device",
    "study_predictions",
]

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
    # keyed by the transforms too: a changed window or spacing must not reuse old tensors
    return PersistentDataset(
        items, transform=transform, cache_dir=cache_dir, hash_transform=pickle_hashing
    )


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


def _training_batch(
    spec: TaskSpec, studies: list[Any], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of one step from pool studies: for the 2.5D segmenter,
    ``crops_per_study`` slice stacks per study drawn uniformly (a left-right flip half of the
    time); for a classifier, the images and labels."""
    if not spec.segmentation:
        images = torch.stack([study.image for study in studies])
        labels = torch.tensor([float(study.label) for study in studies])
        return images, labels
    context = spec.slice_context or 0
    inputs, targets = [], []
    for study in studies:
        stacks = slice_stacks(study.image[None], context)  # (D, 2c+1, H, W)
        depth = stacks.shape[0]
        chosen = torch.as_tensor(rng.choice(depth, size=min(spec.crops_per_study, depth)))
        image, mask = stacks[chosen], study.mask[0].permute(2, 0, 1)[chosen][:, None]
        if rng.random() < 0.5:
            image, mask = image.flip(-2), mask.flip(-2)  # x is the first spatial axis (RAS)
        inputs.append(image)
        targets.append(mask)
    return torch.cat(inputs), torch.cat(targets)


def study_predictions(
    spec: TaskSpec, model: torch.nn.Module, studies: list[Any], device: torch.device
) -> Predictions:
    """Scores (and network-grid Dice of positives) of prepared studies: validation."""
    model.eval()
    result = Predictions([], [], [])
    with torch.no_grad():
        for study in studies:
            output = model(study.image[None].to(device)).float().cpu()
            result.studies.append(str(study.index))
            result.labels.append(int(study.label))
            result.scores.append(float(spec.study_score(output)[0]))
            if spec.segmentation and study.label == 1 and study.mask is not None:
                predicted = output.argmax(dim=1)[0].numpy()
                result.dices.append(dice(predicted, study.mask[0].numpy() > 0.5))
    return result


@dataclass(frozen=True)
class StreamSchedule:
    """How long and how a stream run trains."""

    minutes: float  # wall-clock training budget (validation included)
    batch_studies: int
    learning_rate: float
    validate_every_s: float


def _lr_at(schedule: StreamSchedule, elapsed: float) -> float:
    """Cosine decay over the time budget (a resumed run continues on the same curve)."""
    fraction = min(elapsed / max(schedule.minutes * 60.0, 1e-6), 1.0)
    return schedule.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * fraction)))


def fit_stream(
    spec: TaskSpec,
    pool: Any,
    validation: list[Any],
    schedule: StreamSchedule,
    *,
    device: torch.device,
    checkpoint: Path,
    seed: int = 0,
    on_epoch: ProgressCallback | None = None,
) -> FitResult:
    """Train on fresh pool studies (:class:`training.stream.StudyPool`) for a time budget.

    Validation runs every ``validate_every_s`` seconds and at the end; after each, the state
    (weights, optimiser, elapsed time, the pool's next study, history, best weights) goes to
    ``checkpoint``, and a run started with an existing ``checkpoint`` resumes from it, so a
    crash or a stop loses at most one validation interval. The best validation weights (AUC +
    Dice) are returned. History rows carry the elapsed wall and process CPU seconds: quality
    against training time.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = spec.network().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=schedule.learning_rate)
    loss_function = spec.loss().to(device)
    history: dict[str, list[float]] = {"seconds": [], "cpu seconds": [], "train loss": []}
    history |= {"validation AUC": [], "studies generated": []}
    if spec.segmentation:
        history["validation Dice"] = []
    elapsed, cpu_before, step, best = 0.0, 0.0, 0, -1.0
    best_state = copy.deepcopy(model.state_dict())
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        elapsed, cpu_before, step = saved["elapsed"], saved["cpu"], saved["step"]
        history, best, best_state = saved["history"], saved["best"], saved["best_state"]
        pool.next_index = max(pool.next_index, saved["next_index"])
        rng = np.random.default_rng([seed, step])
        logger.info(
            "resuming %s at %.0f s, step %d (%s)", spec.model_name, elapsed, step, checkpoint
        )
    started, cpu_started = time.perf_counter() - elapsed, time.process_time() - cpu_before
    losses: list[float] = []
    last_validation = elapsed
    budget = schedule.minutes * 60.0
    while True:
        elapsed = time.perf_counter() - started
        done = elapsed >= budget
        if done or elapsed - last_validation >= schedule.validate_every_s:
            metrics = _validate(spec, model, validation, device)
            metrics |= {"seconds": elapsed, "cpu seconds": time.process_time() - cpu_started}
            metrics |= {"train loss": float(np.mean(losses)) if losses else float("nan")}
            metrics["studies generated"] = float(pool.generated)
            for name in history:
                history[name].append(metrics.get(name, float("nan")))
            score = float(
                np.nansum([metrics.get("validation Dice", 0.0), metrics["validation AUC"]])
            )
            if score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
            logger.info("%s %.0f s: %s", spec.model_name, elapsed, metrics)
            if on_epoch is not None:
                on_epoch(len(history["seconds"]), -1, metrics)
            _save(
                checkpoint,
                {
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "elapsed": time.perf_counter() - started,
                    "cpu": time.process_time() - cpu_started,
                    "step": step,
                    "history": history,
                    "best": best,
                    "best_state": best_state,
                    "next_index": pool.next_index,
                    "done": done,
                },
            )
            last_validation, losses = elapsed, []
            if done:
                break
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(schedule, elapsed)
        batch = _training_batch(spec, pool.draw(schedule.batch_studies, rng), rng)
        losses.append(
            _step(
                spec,
                model,
                optimiser=optimiser,
                loss_function=loss_function,
                batch=batch,
                device=device,
            )
        )
        step += 1
    best_epoch = int(np.nanargmax(_scores(history))) + 1 if history["seconds"] else 0
    return FitResult(best_state, history, best_epoch, time.perf_counter() - started)


def _step(
    spec: TaskSpec,
    model: torch.nn.Module,
    *,
    optimiser: torch.optim.Optimizer,
    loss_function: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
) -> float:
    """One optimisation step; returns the loss."""
    model.train()
    image, target = batch[0].to(device), batch[1].to(device)
    optimiser.zero_grad(set_to_none=True)
    output = model(image)
    if not spec.segmentation:
        output = output.reshape(-1)
    loss: torch.Tensor = loss_function(output, target)
    loss.backward()  # type: ignore[no-untyped-call]
    optimiser.step()
    return float(loss.detach())


def _save(checkpoint: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (a crash mid-write keeps the previous checkpoint)."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    partial = checkpoint.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(checkpoint)


def _scores(history: dict[str, list[float]]) -> list[float]:
    dices = history.get("validation Dice", [0.0] * len(history["validation AUC"]))
    return [float(np.nansum([a, d])) for a, d in zip(history["validation AUC"], dices, strict=True)]


def _validate(
    spec: TaskSpec, model: torch.nn.Module, studies: list[Any], device: torch.device
) -> dict[str, float]:
    predictions = study_predictions(spec, model, studies, device)
    metrics = {"validation AUC": predictions.auc}
    if spec.segmentation:
        metrics["validation Dice"] = predictions.mean_dice or 0.0
    return metrics
