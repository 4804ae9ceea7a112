"""Turn a finished training run into a model card and a *staged* registry version."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.card import (
    DEMO_INTENDED_USE,
    Metrics,
    ModelCard,
    OperatingThreshold,
    OutputSpec,
    ScoreCalibration,
    SeriesSelection,
    TrainingData,
)
from models.card import Task as ModelTask
from models.registry import ModelRegistry
from training.tasks import Task, TaskSpec

__all__ = ["build_card", "registry_callback"]

logger = logging.getLogger(__name__)

_MODEL_TASKS = {
    Task.HEAD_CT: ModelTask.HEAD_CT_LESION_SEG,
    Task.CHEST_XR: ModelTask.CHEST_XR_TRIAGE,
}


def _defined(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def build_card(spec: TaskSpec, config: Any, extra: dict[str, Any]) -> ModelCard:
    """The model card of a training run (``extra``: metrics, threshold, data facts, and, for a
    run calibrated on validation studies, ``calibration``: Platt slope and intercept, to which
    the threshold then applies; ``source``: command, seed, machine and time)."""
    test = extra["metrics"]["test"]
    synthetic = bool(extra.get("synthetic"))
    platt = extra.get("calibration")
    calibration = (
        ScoreCalibration(
            slope=float(platt["slope"]),
            intercept=float(platt["intercept"]),
            fitted_on="validation studies (SYNTHETIC, a seed never used in training)",
        )
        if platt
        else None
    )
    if spec.segmentation:
        outputs = OutputSpec(
            kind="segmentation",
            activation="softmax",
            shape=(2, *spec.spatial_size),
            channel_def={0: "background", 1: "haemorrhage"},
            study_score_top_k=spec.top_k,
            meaning=(
                "per-voxel logits; softmax channel 1 is the probability of acute haemorrhage. "
                f"Study triage score: mean of the {spec.top_k} highest channel-1 probabilities"
            ),
        )
        applies_to = f"mean of the {spec.top_k} highest lesion probabilities (softmax channel 1)"
        if calibration is not None:
            applies_to = f"Platt-calibrated probability of the {applies_to}"
        selection = SeriesSelection(
            modalities=["CT"],
            body_parts=["HEAD", "BRAIN"],
            dimensionality="3d",
            orientation="axial",
            min_slices=16,
            max_slice_thickness_mm=6.0,
        )
    else:
        outputs = OutputSpec(
            kind="classification",
            activation="sigmoid",
            shape=(1,),
            channel_def={0: "finding"},
            meaning="logit; sigmoid is the probability of a finding (opacity or pneumothorax)",
        )
        applies_to = "sigmoid probability of output channel 0"
        if calibration is not None:
            applies_to = f"Platt-calibrated {applies_to}"
        selection = SeriesSelection(
            modalities=["DX", "CR"], body_parts=["CHEST"], dimensionality="2d", min_slices=1
        )
    source = "SYNTHETIC studies from imaging.synthetic" if synthetic else "labelled folder source"
    return ModelCard(
        name=spec.model_name,
        task=_MODEL_TASKS[spec.task],
        description=(
            f"{'Synthetic demo model: not for clinical use. ' if synthetic else ''}"
            f"{spec.architecture} trained by radcloud ({config.preset} preset)"
        ),
        architecture=spec.architecture_ref(),
        inputs=spec.input_spec(),
        outputs=outputs,
        threshold=OperatingThreshold(
            value=float(min(max(extra["threshold"], 0.0), 1.0)),
            applies_to=applies_to,
            method="highest threshold with sensitivity >= 0.9 on the validation patients",
        ),
        calibration=calibration,
        training_data=TrainingData(
            source=source,
            manifest_sha256=extra.get("data_sha256"),
            counts=extra["split_counts"],
        ),
        metrics=Metrics(
            evaluated_on="held-out test patients" + (" (SYNTHETIC)" if synthetic else ""),
            auc=_defined(test["auc"]),
            sensitivity=_defined(test["sensitivity"]),
            specificity=_defined(test["specificity"]),
            dice=_defined(test.get("lesion_dice")),
            extra={
                "baseline_auc": float(extra["baseline"]["auc"]),
                **{k: float(v) for k, v in extra.get("card_extra", {}).items()},
            },
        ),
        source=extra.get("source", "trained by radcloud"),
        intended_use=DEMO_INTENDED_USE if synthetic else "research use; not for clinical use",
        series_selection=selection,
    )


def registry_callback(
    models_dir: Path,
) -> Callable[[TaskSpec, Any, torch.nn.Module, dict[str, Any], str], str]:
    """A ``register`` function for :func:`training.pipeline.train` that stores the model as the
    next staged version in the registry at ``models_dir`` and returns its version."""

    def register(
        spec: TaskSpec, config: Any, model: torch.nn.Module, extra: dict[str, Any], run_dir: str
    ) -> str:
        card = build_card(spec, config, extra)
        example = torch.rand(1, 1, *spec.spatial_size)
        registered = ModelRegistry(models_dir).register(
            card,
            model.eval(),
            example,
            metrics={**extra["metrics"], "baseline": extra["baseline"], "run": run_dir},
            training_config={**config.to_json(), "history": extra["history"]},
            data_manifest_sha256=str(extra["data_sha256"]),
        )
        logger.info("registered %s version %s (staged)", registered.name, registered.version)
        return str(registered.version)

    return register
