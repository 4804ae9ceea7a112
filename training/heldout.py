"""Held-out synthetic studies for evaluation, with the task's ceiling (an oracle) and the hand
rule measured on the same studies.

``python -m training.heldout --task head-ct --part test --positives 300 --negatives 300``
renders studies of the part's seed (:func:`training.stream.split_seed`: never a training
study), stores each one's image and mask (``<home>/training/<task>/heldout/<part>-s<seed>/``)
so models are evaluated on exactly these studies later, and writes ``records.jsonl``: label,
finding, the finding's size and contrast, the hand rule's score and, for every positive, the
oracle's measurements.

The oracle knows the generator: each positive study ``i`` is rendered a second time without its
lesion (same patient, pose and noise draw), so the noise-free lesion signal ``s`` (the
difference of the two noise-free images) is known.

- Oracle AUC: the ideal observer for a known signal at a known location (a matched filter):
  ``<s, image - noise_free_background> / |s|`` for the positive and for its lesion-free twin,
  an upper bound no model can beat; per stratum it says how hard the stratum is.
- Oracle Dice (head CT): the voxels where the noise-free image shows at least half the blood's
  contrast over the lesion-free background (and not bone), against the label: what the blur
  and partial volume of the scanner leave of the lesion's outline.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imaging.synthetic import baseline_score, render_ground_truth
from imaging.synthetic.dataset import GroundTruth
from imaging.synthetic.head_ct import BONE_MARGIN_HU
from training.metrics import dice
from training.stream import StudySet, split_seed
from training.tasks import Task

__all__ = ["HeldoutSet", "heldout_dir", "load_records", "load_truth", "write_heldout"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldoutSet:
    """Which held-out studies: task, part (validation or test), seed, counts."""

    task: Task
    part: StudySet
    seed: int
    positives: int
    negatives: int


def heldout_dir(home: Path, task: Task | str, part: StudySet | str, seed: int) -> Path:
    """Where the held-out studies of ``part`` for training seed ``seed`` are stored."""
    return home / "training" / Task(task).value / "heldout" / f"{StudySet(part).value}-s{seed}"


def _oracle(task: Task, positive: GroundTruth, twin: GroundTruth) -> dict[str, float]:
    """Matched-filter scores of the positive and its lesion-free twin; oracle Dice (CT)."""
    assert positive.clean is not None and twin.clean is not None  # noqa: S101 - keep_clean
    signal = positive.clean.astype(np.float64) - twin.clean.astype(np.float64)
    norm = float(np.sqrt((signal * signal).sum()))
    if norm == 0.0:
        return {"oracle_positive": 0.0, "oracle_negative": 0.0}
    result = {
        "oracle_positive": float((signal * (positive.image - twin.clean)).sum() / norm),
        "oracle_negative": float((signal * (twin.image - twin.clean)).sum() / norm),
    }
    if task is Task.HEAD_CT:
        blood = positive.details["blood_hu"]
        contrast = blood - twin.clean
        fraction = np.where(contrast > 2.0, signal / np.maximum(contrast, 2.0), 0.0)
        outline = (fraction >= 0.5) & (positive.clean <= blood + BONE_MARGIN_HU)
        result["oracle_dice"] = dice(outline, positive.mask > 0)
    return result


def _is_positive(index: int, positives: int, negatives: int) -> bool:
    """Positives and negatives alternate (so a set stopped early is still balanced), then the
    larger class completes."""
    pairs = min(positives, negatives)
    if index < 2 * pairs:
        return index % 2 == 0
    return positives > negatives


def write_heldout(selection: HeldoutSet, home: Path, *, oracle: bool = True) -> Path:
    """Render, store and measure the held-out studies of ``selection`` (resumes: studies
    already stored are kept); returns the folder."""
    folder = heldout_dir(home, selection.task, selection.part, selection.seed)
    folder.mkdir(parents=True, exist_ok=True)
    seed = split_seed(selection.seed, selection.part)
    records_path = folder / "records.jsonl"
    done = {record["index"] for record in load_records(folder)} if records_path.is_file() else set()
    total = selection.positives + selection.negatives
    with records_path.open("a", encoding="utf-8") as records:
        for index in range(total):
            if index in done:
                continue
            positive = _is_positive(index, selection.positives, selection.negatives)
            truth = render_ground_truth(
                selection.task.value, index, seed, positive=positive, keep_clean=oracle
            )
            record: dict[str, Any] = {
                "index": index,
                "label": truth.label,
                "finding": truth.finding.value,
                **truth.details,
                "baseline": float(baseline_score(selection.task.value, truth.image)),
            }
            if oracle and positive:
                twin = render_ground_truth(
                    selection.task.value, index, seed, positive=False, keep_clean=True
                )
                record |= _oracle(selection.task, truth, twin)
            np.savez_compressed(
                folder / f"{index:05d}.npz",
                image=truth.image.astype(np.int16),
                mask=truth.mask.astype(np.uint8),
                spacing=np.asarray(truth.spacing),
            )
            records.write(json.dumps(record) + "\n")
            records.flush()
            if index % 25 == 0:
                logger.info("%s %s: %d/%d studies", selection.task, selection.part, index, total)
    if total == 0:  # evaluating what is stored: keep its description
        return folder
    (folder / "selection.json").write_text(
        json.dumps(
            {
                "task": selection.task.value,
                "part": selection.part.value,
                "training_seed": selection.seed,
                "dataset_seed": seed,
                "positives": selection.positives,
                "negatives": selection.negatives,
            },
            indent=2,
        )
    )
    return folder


def load_records(folder: Path) -> list[dict[str, Any]]:
    """The records of a held-out folder, by index."""
    lines = (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()
    records = {record["index"]: record for record in map(json.loads, filter(None, lines))}
    return [records[index] for index in sorted(records)]


def load_truth(folder: Path, record: dict[str, Any]) -> GroundTruth:
    """A stored held-out study as the generator gave it."""
    from imaging.synthetic import SyntheticFinding

    with np.load(folder / f"{record['index']:05d}.npz") as data:
        spacing = tuple(float(v) for v in data["spacing"])
        return GroundTruth(
            image=data["image"].astype(np.float32),
            mask=data["mask"],
            finding=SyntheticFinding(record["finding"]),
            spacing=(spacing[0], spacing[1], spacing[2]),
            details={k: v for k, v in record.items() if isinstance(v, float)},
        )


def main(argv: list[str] | None = None) -> None:
    """Command line: render and measure held-out studies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=[task.value for task in Task])
    parser.add_argument("--part", default="test", choices=["validation", "test"])
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed")
    parser.add_argument("--positives", type=int, default=300)
    parser.add_argument("--negatives", type=int, default=300)
    parser.add_argument("--home", type=Path, required=True, help="RADCLOUD_HOME")
    parser.add_argument("--no-oracle", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    selection = HeldoutSet(
        Task(args.task), StudySet(args.part), args.seed, args.positives, args.negatives
    )
    write_heldout(selection, args.home, oracle=not args.no_oracle)


if __name__ == "__main__":
    main()
