"""Synthetic studies made in memory, prepared exactly as serving prepares a DICOM series.

The generator makes unlimited studies, so training does not cycle over a fixed small set: a
:class:`StudyPool` holds ``size`` prepared studies and replaces the oldest with a freshly
generated one every few steps (generation costs about as much as a training step on CPU, so each
study is used a few times while it is in the pool). Each study goes through
:func:`models.preprocessing.volume_item` and :func:`models.preprocessing.card_transforms`, the
steps serving runs on a DICOM series (orientation, the card's spacing, window, size), so the
network trains on the tensors it will be served.

Seeds keep the sets apart: training draws studies ``0, 1, 2, ...`` of dataset ``seed``,
validation (calibration and the operating threshold) of ``seed + 100000``, test of
``seed + 200000`` (:func:`split_seed`); the patients of different datasets are different.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from monai import transforms as mt

from imaging.synthetic import GroundTruth, positive_indices, render_ground_truth
from imaging.volume import Volume
from models.preprocessing import card_transforms, volume_item
from training.tasks import TaskSpec

__all__ = [
    "PreparedStudy",
    "StudyPool",
    "StudySet",
    "balanced_positive",
    "prepare_study",
    "render_study",
    "split_seed",
]

logger = logging.getLogger(__name__)


class StudySet(StrEnum):
    """Which synthetic dataset a study comes from."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


_SEED_OFFSET = {StudySet.TRAIN: 0, StudySet.VALIDATION: 100_000, StudySet.TEST: 200_000}


def split_seed(seed: int, part: StudySet | str) -> int:
    """The dataset seed of ``part`` for a run with ``seed`` (train ``seed``, validation
    ``seed + 100000``, test ``seed + 200000``): never the same studies or patients."""
    return seed + _SEED_OFFSET[StudySet(part)]


@dataclass
class PreparedStudy:
    """One study as the network sees it, with its ground truth."""

    index: int
    label: int
    image: torch.Tensor  # the network input without the batch axis
    mask: torch.Tensor | None  # on the network's grid (segmentation tasks)
    truth: GroundTruth  # the generator's native-grid image and mask
    prepared: Any = None  # the MetaTensor with MONAI's trace (evaluation: back to native grid)
    transforms: list[Any] = field(default_factory=list)
    finding: str = "none"


def _volume(array: np.ndarray, spacing: tuple[float, float, float], is_2d: bool) -> Volume:
    return Volume(
        array=array,
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        is_2d=is_2d,
    )


def prepare_study(
    spec: TaskSpec, truth: GroundTruth, index: int, *, keep_trace: bool = False
) -> PreparedStudy:
    """``truth`` through serving's pre-processing (the card's input spec).

    Parameters
    ----------
    spec
        The task.
    truth
        A rendered study (:func:`imaging.synthetic.render_ground_truth`).
    index
        Its number in its dataset.
    keep_trace
        Keep the MONAI trace so that outputs can go back onto the native grid (evaluation).
    """
    inputs = spec.input_spec()
    is_2d = not spec.segmentation
    item = volume_item(_volume(truth.image.astype(np.float32), truth.spacing, is_2d), inputs)
    # the image through its own chain, kept: MONAI inverts a trace only with the very transform
    # objects that made it (evaluation maps outputs back to the native grid with ``transforms``)
    image_chain = card_transforms(inputs, track_meta=keep_trace)
    prepared = mt.Compose(image_chain)(item)["image"]
    image = torch.as_tensor(prepared).as_subclass(torch.Tensor).float()
    mask = None
    if spec.segmentation:
        # the mask on the same grid by the same deterministic steps, nearest-neighbour
        pair = volume_item(_volume(truth.image.astype(np.float32), truth.spacing, False), inputs)
        pair["mask"] = volume_item(
            _volume(truth.mask.astype(np.float32), truth.spacing, False), inputs
        )["image"]
        out = mt.Compose(card_transforms(inputs, label_keys=["mask"]))(pair)
        mask = (torch.as_tensor(out["mask"]).as_subclass(torch.Tensor) > 0.5).float()
    return PreparedStudy(
        index=index,
        label=truth.label,
        image=image.contiguous(),
        mask=mask,
        truth=truth,
        prepared=prepared if keep_trace else None,
        transforms=image_chain if keep_trace else [],
        finding=truth.finding.value,
    )


def render_study(
    spec: TaskSpec,
    seed: int,
    index: int,
    positive: bool,
    *,
    keep_trace: bool = False,
) -> PreparedStudy:
    """Study ``index`` of synthetic dataset ``seed``, rendered and prepared."""
    truth = render_ground_truth(spec.task.value, index, seed, positive=positive)
    return prepare_study(spec, truth, index, keep_trace=keep_trace)


def balanced_positive(seed: int, index: int, positive_fraction: float) -> bool:
    """Whether study ``index`` of an open-ended stream is abnormal (exactly the fraction in
    every block of 100)."""
    block, offset = divmod(index, 100)
    return offset in positive_indices(100, seed * 7919 + block, positive_fraction)


class StudyPool:
    """Fresh training studies in memory: ``size`` at a time, one replaced every
    ``refresh_every`` draws.

    Parameters
    ----------
    spec
        The task.
    seed
        The training dataset's seed.
    size
        Studies held at once.
    positive_fraction
        Fraction of abnormal studies generated.
    next_index
        The first study to generate (a resumed run continues where it stopped).
    """

    def __init__(
        self,
        spec: TaskSpec,
        seed: int,
        size: int,
        *,
        positive_fraction: float = 0.5,
        refresh_every: int = 2,
        next_index: int = 0,
    ) -> None:
        self.spec = spec
        self.seed = seed
        self.positive_fraction = positive_fraction
        self.refresh_every = max(refresh_every, 1)
        self.next_index = next_index
        self._draws = 0
        self.studies: deque[PreparedStudy] = deque(maxlen=size)
        while len(self.studies) < size:
            self._add()

    def _add(self) -> None:
        index = self.next_index
        positive = balanced_positive(self.seed, index, self.positive_fraction)
        self.studies.append(render_study(self.spec, self.seed, index, positive))
        self.next_index += 1

    @property
    def generated(self) -> int:
        """Studies generated so far (including those of a resumed run's past)."""
        return self.next_index

    def draw(self, count: int, rng: np.random.Generator) -> list[PreparedStudy]:
        """``count`` studies of the pool at random; refreshes the pool as configured."""
        self._draws += 1
        if self._draws % self.refresh_every == 0:
            self._add()
        chosen = rng.choice(len(self.studies), size=min(count, len(self.studies)), replace=False)
        return [self.studies[int(i)] for i in chosen]
