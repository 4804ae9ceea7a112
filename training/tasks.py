"""What each task trains: pre-processing (MONAI dictionary transforms), network, loss, and how a
study's triage score (and lesion mask) come out of the network.

``head-ct``: one 2.5D UNet (``models.slice_stack``: a 2D UNet over three-slice axial stacks)
segments the lesion; the study's triage score is the mean of the ``top_k`` highest lesion
probabilities. One segmenter rather than a separate classifier because voxel-level supervision
learns small lesions from far fewer studies than a study-level label does, and serving gets
score and outline from one forward pass. 2.5D rather than 3D because the slices are thick (4-5
mm): on 2 CPU cores a 3D UNet (16-128 channels, 64x64x32 crops) reached validation Dice 0.09 in
7 minutes, the 2.5D UNet 0.39 in 2 minutes (same SYNTHETIC data).

``chest-xr``: a 2D DenseNet121 classifies the radiograph (probability of a finding).

Pre-processing parameters go into the model card, so serving reproduces them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from monai import transforms as mt
from monai.losses import DiceCELoss

from models.card import ArchitectureRef, InputSpec, IntensityNormalization
from models.networks import build_network, get_architecture
from models.preprocessing import card_transforms
from models.slice_stack import SliceStackd

__all__ = ["LESION_WEIGHT", "TASKS", "Task", "TaskSpec", "task_spec"]

LESION_WEIGHT = 10.0


class Task(StrEnum):
    """Training tasks."""

    HEAD_CT = "head-ct"
    CHEST_XR = "chest-xr"


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific the training loop needs."""

    task: Task
    model_name: str
    architecture: str
    architecture_params: dict[str, Any]
    segmentation: bool
    spacing: tuple[float, ...]
    spatial_size: tuple[int, ...]
    window: tuple[float, float] | None  # width, level (modality units); None: per-image scaling
    train_crop: tuple[int, ...] | None = None
    slice_context: int | None = None  # 2.5D: neighbouring slices each side; None: not 2.5D
    crops_per_study: int = 4
    top_k: int = 16
    modality: str = "CT"
    body_part: str = "HEAD"
    extra: dict[str, Any] = field(default_factory=dict)

    def architecture_ref(self) -> ArchitectureRef:
        """The network as the model card names it (``models.networks``)."""
        return ArchitectureRef(name=self.architecture, params=dict(self.architecture_params))

    def network(self) -> torch.nn.Module:
        """A freshly initialised network (random weights: nothing is downloaded), built the
        way the model registry rebuilds it."""
        return build_network(self.architecture_ref())

    def loss(self) -> torch.nn.Module:
        """The training loss."""
        if self.segmentation:
            # Lesions are ~0.3 % of a head (~2 % of a slice through one): the Dice term scores
            # the lesion channel only and the cross-entropy weighs lesion voxels 10x (without
            # both, the network settles on "background everywhere": measured, validation Dice
            # 0.00 vs 0.09 after 5 epochs).
            return DiceCELoss(
                to_onehot_y=True,
                softmax=True,
                include_background=False,
                weight=torch.tensor([1.0, LESION_WEIGHT]),
            )
        return torch.nn.BCEWithLogitsLoss()

    def keys(self) -> list[str]:
        """Dictionary keys holding images."""
        return ["image", "mask"] if self.segmentation else ["image"]

    def input_spec(self) -> InputSpec:
        """The model card's input specification (serving builds its pre-processing from it)."""
        if self.window is not None:
            width, level = self.window
            normalization = IntensityNormalization(
                method="window", window_width=width, window_level=level
            )
        else:
            normalization = IntensityNormalization(method="percentile", percentiles=(1.0, 99.0))
        return InputSpec(
            modality=self.modality,
            body_part=self.body_part,
            spacing_mm=self.spacing or None,
            orientation="RAS" if self.segmentation else None,
            normalization=normalization,
            shape=(1, *self.spatial_size),
            # RAS after LoadImage (+ Orientation for volumes): x (columns), y (rows), z
            axes="CWHD" if self.segmentation else "CWH",
        )

    def preprocess(self) -> mt.Compose:
        """Deterministic pre-processing: load, orient, resample, scale, size (cached)."""
        keys = self.keys()
        steps: list[Any] = [mt.LoadImaged(keys=keys, reader="NibabelReader", image_only=True)]
        if self.segmentation:
            steps.append(mt.EnsureChannelFirstd(keys=keys))
        else:
            steps += [
                mt.SqueezeDimd(keys=keys, dim=-1, update_meta=False),  # (x, y, 1) → (x, y)
                mt.EnsureChannelFirstd(keys=keys, channel_dim="no_channel"),
            ]
        label_keys = [key for key in keys if key != "image"]
        steps += card_transforms(self.input_spec(), label_keys=label_keys)
        return mt.Compose(steps)

    def augment(self) -> mt.Compose:
        """Random augmentation applied after the cache, training only."""
        keys = self.keys()
        steps: list[Any] = []
        if self.segmentation and self.slice_context is not None:
            # Slices centred on lesion voxels three times as often as on background ones (a
            # study without a lesion gives background slices only): with 1:1, lesion slices
            # were a fifth of the training slices and the 2.5D net learnt them more slowly
            # (demo run: test Dice 0.23; a 1:1 balance over slices reached 0.40).
            steps.append(
                mt.RandCropByPosNegLabeld(
                    keys=keys,
                    label_key="mask",
                    spatial_size=(-1, -1, 2 * self.slice_context + 1),
                    pos=3,
                    neg=1,
                    num_samples=self.crops_per_study,
                )
            )
            steps.append(SliceStackd("image", ["mask"], self.slice_context))
            steps.append(mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0))
        elif self.segmentation and self.train_crop is not None:
            steps.append(
                mt.RandCropByPosNegLabeld(
                    keys=keys,
                    label_key="mask",
                    spatial_size=self.train_crop,
                    pos=3,
                    neg=1,
                    num_samples=self.crops_per_study,
                )
            )
            steps.append(mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0))
        else:
            steps.append(mt.RandAffined(keys=keys, prob=0.5, rotate_range=0.1, scale_range=0.1))
        steps.append(mt.RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5))
        return mt.Compose(steps)

    def study_score(self, output: torch.Tensor) -> torch.Tensor:
        """Triage scores (batch,) from network outputs."""
        if not self.segmentation:
            return torch.sigmoid(output.float()).reshape(-1)
        lesion = torch.softmax(output.float(), dim=1)[:, 1].reshape(output.shape[0], -1)
        return lesion.topk(min(self.top_k, lesion.shape[1]), dim=1).values.mean(dim=1)

    def card_inputs(self) -> dict[str, Any]:
        """Pre-processing as recorded in the model card (serving reproduces it)."""
        return {
            "modality": self.modality,
            "body_part": self.body_part,
            "spacing_mm": list(self.spacing),
            "spatial_size": list(self.spatial_size),
            "orientation": "RAS" if self.segmentation else "as acquired",
            "intensity": (
                {"window_width": self.window[0], "window_level": self.window[1], "range": [0, 1]}
                if self.window
                else {"percentiles": [1, 99], "range": [0, 1]}
            ),
        }


TASKS: dict[Task, TaskSpec] = {
    Task.HEAD_CT: TaskSpec(
        task=Task.HEAD_CT,
        model_name="head-ct-haemorrhage",
        architecture="unet-2.5d",
        # the registry's defaults for the architecture (models.networks), defined there only
        architecture_params=dict(get_architecture("unet-2.5d").params),
        segmentation=True,
        spacing=(2.0, 2.0, 5.0),
        spatial_size=(128, 128, 32),
        window=(200.0, 60.0),  # -40 to 160 HU: blood, brain and CSF apart; bone saturates
        slice_context=1,
        crops_per_study=8,
        top_k=64,
    ),
    Task.CHEST_XR: TaskSpec(
        task=Task.CHEST_XR,
        model_name="chest-xr-finding",
        architecture="densenet121-2d",
        architecture_params={"spatial_dims": 2, "in_channels": 1, "out_channels": 1},
        segmentation=False,
        spacing=(),
        spatial_size=(128, 128),
        window=None,
        modality="DX",
        body_part="CHEST",
    ),
}


def task_spec(task: Task | str) -> TaskSpec:
    """The specification of ``task``."""
    return TASKS[Task(task)]
