"""Small-cell suppression of a cohort's counts.

Rules, with ``k`` the minimum cell size (``RADCLOUD_COHORT_MIN_CELL_SIZE``, 10 by default):

1. **Cells.** A hospital's count ``c`` with ``0 < c < k`` is shown as ``"<k"``, never exactly.
   A zero is shown (no patient can be singled out of none).
2. **The total** is shown exactly only if no cell is suppressed, or if the suppressed cells
   together cannot be taken apart: with ``m`` suppressed cells holding ``S`` studies in all
   (``S`` = total minus the shown cells), each cell lies in ``[1, k-1]``, and a cell's value is
   forced exactly when ``S == m`` (all 1) or ``S == m(k-1)`` (all ``k-1``); so the total is
   shown only when ``S >= k`` (the suppressed group is not itself a small cell) and
   ``m < S < m(k-1)``. A single suppressed cell therefore always suppresses the total. A
   suppressed total is shown as ``"<k"`` when below ``k``, else ``">=N"`` with ``N`` the sum of
   the shown cells plus ``m`` (what the shown cells already tell).
3. **The study list** must not give the counts back by its length: when the total is shown, it
   lists every study; when the total is suppressed, only the studies of the hospitals whose
   cells are shown; when the total is below ``k``, nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serving.cohorts.model import HospitalCount

__all__ = ["SuppressedCounts", "suppress"]


@dataclass(frozen=True)
class SuppressedCounts:
    """What may be shown of a cohort's exact counts."""

    hospitals: tuple[HospitalCount, ...]
    total: int | None
    total_shown: str
    listed_hospitals: frozenset[str]  # whose studies the list may hold
    list_withheld: str | None  # why there is no list at all


def suppress(counts: Mapping[str, int], min_cell_size: int) -> SuppressedCounts:
    """Apply the rules of the module docstring to exact ``counts`` per hospital.

    Parameters
    ----------
    counts
        Every hospital of the deployment with its exact count (zeros included).
    min_cell_size
        ``k``: at least 2.

    Raises
    ------
    ValueError
        ``min_cell_size`` below 2 or a negative count.
    """
    k = min_cell_size
    if k < 2:
        raise ValueError(f"minimum cell size {k}: expected at least 2")
    if any(c < 0 for c in counts.values()):
        raise ValueError(f"negative count in {dict(counts)}")
    cells = []
    hidden: list[int] = []
    shown_sum = 0
    for hospital in sorted(counts):
        count = counts[hospital]
        if 0 < count < k:
            cells.append(HospitalCount(hospital, None, f"<{k}"))
            hidden.append(count)
        else:
            cells.append(HospitalCount(hospital, count, str(count)))
            shown_sum += count
    total = shown_sum + sum(hidden)
    m, s = len(hidden), sum(hidden)
    total_safe = m == 0 or (s >= k and m < s < m * (k - 1))
    listed = frozenset(c.hospital for c in cells if not c.suppressed)
    if total < k:
        return SuppressedCounts(
            tuple(cells),
            total if total == 0 else None,
            str(total) if total == 0 else f"<{k}",
            frozenset(),
            f"the cohort holds fewer than {k} studies (the minimum cell size)",
        )
    if total_safe:
        return SuppressedCounts(tuple(cells), total, str(total), frozenset(counts), None)
    return SuppressedCounts(tuple(cells), None, f">={shown_sum + m}", listed, None)
