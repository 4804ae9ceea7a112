"""What each task trains: pre-processing (MONAI dictionary transforms), network, loss, and how a
study's triage score (and lesion mask) come out of the network.

``head-ct``: one 2.5D UNet (``models.slice_stack``: a 2D UNet over three-slice axial stacks)
segments the lesion on the scan's native grid (no resampling: 4-5 mm slices as acquired); the
study's triage score is the mean of the ``top_k`` (4) highest lesion probabilities, fewer voxels
than the smallest labelled bleed (3 voxels, ~0.05 ml), so a small bleed is not diluted. One
segmenter rather than a separate classifier because voxel-level supervision learns small lesions
from far fewer studies than a study-level label does, and serving gets score and outline from
one forward pass. The loss is unweighted cross-entropy plus a batch-level soft Dice over slices
drawn uniformly (lesion prevalence as in the data), so the 0.5 cut-off of the mask means a
lesion probability of one half.

``chest-xr``: a small 2D ResNet classifies the radiograph at its full 256-pixel resolution
(a one-pixel pleural line survives).

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

__all__ = ["TASKS", "Task", "TaskSpec", "task_spec"]


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

    @property
    def architecture_params(self) -> dict[str, Any]:
        """The network's parameters: those of :data:`models.networks.ARCHITECTURES` (defined
        there only)."""
        return dict(get_architecture(self.architecture).params)

    def architecture_ref(self) -> ArchitectureRef:
        """The network as the model card names it (``models.networks``)."""
        return ArchitectureRef(name=self.architecture, params=self.architecture_params)

    def network(self) -> torch.nn.Module:
        """A freshly initialised network (random weights: nothing is downloaded), built the
        way the model registry rebuilds it."""
        return build_network(self.architecture_ref())

    def loss(self) -> torch.nn.Module:
        """The training loss."""
        if self.segmentation:
            # No class weight and a Dice over the whole batch (slices without a lesion give it a
            # gradient too): the softmax stays a calibrated per-voxel probability, so the mask's
            # 0.5 cut-off means what it says (a 10x lesion weight over-calls: its 0.5 is far
            # below a true probability of one half).
            return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
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
            spacing_mm=self.spacing or None,  # 0: keep the source spacing
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
            # Slice stacks drawn uniformly: lesion slices as often as the data has them.
            steps.append(
                mt.RandSpatialCropSamplesd(
                    keys=keys,
                    roi_size=(-1, -1, 2 * self.slice_context + 1),
                    num_samples=self.crops_per_study,
                    random_size=False,
                )
            )
            steps.append(SliceStackd("image", ["mask"], self.slice_context))
            steps.append(mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0))
        elif self.segmentation and self.train_crop is not None:
            steps.append(
                mt.RandSpatialCropSamplesd(
                    keys=keys,
                    roi_size=self.train_crop,
                    num_samples=self.crops_per_study,
                    random_size=False,
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
        segmentation=True,
        spacing=(0.0, 0.0, 0.0),  # native grid: 128 x 128 pixels of 1.8-2 mm, 4-5 mm slices
        spatial_size=(128, 128, 32),  # 24-32 slices, padded to 32
        window=(200.0, 60.0),  # -40 to 160 HU: blood, brain and CSF apart; bone saturates
        slice_context=1,
        crops_per_study=6,
        top_k=4,
    ),
    Task.CHEST_XR: TaskSpec(
        task=Task.CHEST_XR,
        model_name="chest-xr-finding",
        architecture="resnet-small-2d",
        segmentation=False,
        spacing=(),
        spatial_size=(256, 256),  # the detector's matrix: a 1-px pleural line survives
        window=None,
        modality="DX",
        body_part="CHEST",
    ),
}


def task_spec(task: Task | str) -> TaskSpec:
    """The specification of ``task``."""
    return TASKS[Task(task)]
