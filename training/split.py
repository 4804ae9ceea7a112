"""Patient-level train/validation/test split, written once and reused by every retraining.

A patient's studies all land in one part, so no patient seen in training is used to validate or
test (the leak MONAI Label users complain of). The split is stored as JSON; a later run with
more data keeps every earlier assignment and places only new patients, by a stable hash of the
patient ID, so an old test patient never moves into training.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = ["Part", "Split", "assign"]

logger = logging.getLogger(__name__)


class Part(StrEnum):
    """Where a patient's studies are used."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


def _bucket(patient_id: str, salt: str) -> float:
    """A stable number in [0, 1) for a patient."""
    digest = hashlib.sha256(f"{salt}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(patient_id: str, salt: str, fractions: tuple[float, float, float]) -> Part:
    """The part a new patient goes to, by a stable hash (``fractions``: train, val, test)."""
    value = _bucket(patient_id, salt)
    if value < fractions[0]:
        return Part.TRAIN
    if value < fractions[0] + fractions[1]:
        return Part.VALIDATION
    return Part.TEST


@dataclass
class Split:
    """Patient → part, persisted at ``path``.

    Parameters
    ----------
    path
        The manifest file (JSON).
    salt
        Mixed into the hash; fixed when the manifest is created.
    fractions
        Train, validation and test fractions for new patients.
    """

    path: Path
    salt: str
    fractions: tuple[float, float, float]
    patients: dict[str, Part]

    @classmethod
    def load_or_create(
        cls,
        path: Path,
        *,
        salt: str = "radcloud",
        fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    ) -> Split:
        """The split at ``path``, or a new empty one (saved on :meth:`update`)."""
        if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
            raise ValueError(f"split fractions {fractions} must be non-negative and sum to 1")
        if path.exists():
            data = json.loads(path.read_text())
            return cls(
                path,
                data["salt"],
                tuple(data["fractions"]),
                {pid: Part(part) for pid, part in data["patients"].items()},
            )
        return cls(path, salt, fractions, {})

    def update(self, patient_ids: Iterable[str]) -> int:
        """Place every patient not yet in the split and save it; returns how many were new."""
        new = 0
        for patient_id in patient_ids:
            if patient_id not in self.patients:
                self.patients[patient_id] = assign(patient_id, self.salt, self.fractions)
                new += 1
        if new or not self.path.exists():
            self.save()
            logger.info("split %s: %d new patients placed", self.path, new)
        return new

    def part(self, patient_id: str) -> Part:
        """The part of a known patient (``KeyError`` for an unknown one)."""
        return self.patients[patient_id]

    def counts(self) -> dict[str, int]:
        """Patients per part."""
        return {part.value: sum(p is part for p in self.patients.values()) for part in Part}

    def save(self) -> None:
        """Write the manifest atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "salt": self.salt,
                    "fractions": list(self.fractions),
                    "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "counts": self.counts(),
                    "patients": {pid: part.value for pid, part in sorted(self.patients.items())},
                },
                indent=1,
            )
        )
        tmp.replace(self.path)
