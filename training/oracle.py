"""The task's ceiling: what an oracle that knows the generator reaches, by stratum.

``python -m training.oracle --task head-ct --home HOME --out training/results/oracle.json``
summarises the oracle measurements of a stored held-out set (:mod:`training.heldout` renders
each positive twice, with and without its lesion, and records the matched-filter scores and,
for head CT, the outline Dice): oracle AUC and Dice over all studies and per finding, size and
contrast stratum (the hard strata, low contrast and tiny, reported separately), with the hand
rule's AUC on the same studies beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation import strata
from training.heldout import heldout_dir, load_records
from training.metrics import roc_auc
from training.stream import StudySet
from training.tasks import Task

__all__ = ["oracle_summary"]

logger = logging.getLogger(__name__)


def _group(task: Task, records: list[dict[str, Any]], negatives: list[float]) -> dict[str, Any]:
    positives = [float(r["oracle_positive"]) for r in records]
    twins = [float(r["oracle_negative"]) for r in records]
    baseline = [float(r["baseline"]) for r in records]
    out: dict[str, Any] = {
        "positives": len(records),
        "oracle AUC (positive vs its lesion-free twin)": roc_auc(
            [1] * len(positives) + [0] * len(twins), positives + twins
        ),
    }
    if negatives:
        out["hand rule AUC (vs all negatives)"] = roc_auc(
            [1] * len(baseline) + [0] * len(negatives), baseline + negatives
        )
    if task is Task.HEAD_CT:
        out["oracle Dice"] = float(np.mean([float(r["oracle_dice"]) for r in records]))
    return out


def oracle_summary(task: Task | str, folder: Path) -> dict[str, Any]:
    """Oracle AUC (and Dice) of the stored held-out set in ``folder``, overall and by stratum."""
    task = Task(task)
    records = load_records(folder)
    positives = [r for r in records if r["label"] == 1 and "oracle_positive" in r]
    negatives = [float(r["baseline"]) for r in records if r["label"] == 0]
    summary: dict[str, Any] = {
        "task": task.value,
        "heldout": str(folder),
        "studies scored by the oracle": 2 * len(positives),
        "all": _group(task, positives, negatives),
        "by stratum": {},
    }
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record in positives:
        for kind, value in strata(task.value, record).items():
            groups.setdefault(kind, {}).setdefault(value, []).append(record)
    for kind, values in groups.items():
        summary["by stratum"][kind] = {
            value: _group(task, members, negatives) for value, members in sorted(values.items())
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line: write the oracle summary of a stored held-out set as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=[task.value for task in Task])
    parser.add_argument("--home", type=Path, required=True, help="RADCLOUD_HOME")
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    summary = oracle_summary(args.task, heldout_dir(args.home, args.task, StudySet.TEST, args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("oracle: %s", summary["all"])


if __name__ == "__main__":
    main()
