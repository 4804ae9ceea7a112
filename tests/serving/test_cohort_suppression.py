"""The minimum cell size rules of research cohorts (serving.cohorts.suppression): no small
count is shown, and neither the total nor the study list gives one back."""

from __future__ import annotations

import itertools

import pytest

from serving.cohorts import AiFinding, CohortQuery, InvalidCohortQueryError, suppress


def _shown(counts: dict[str, int], k: int) -> dict[str, str]:
    return {cell.hospital: cell.shown for cell in suppress(counts, k).hospitals}


def test_cells_below_the_minimum_are_never_shown_exactly() -> None:
    shown = suppress({"A": 12, "B": 4, "C": 0, "D": 5}, 5)
    assert _shown({"A": 12, "B": 4, "C": 0, "D": 5}, 5) == {
        "A": "12",
        "B": "<5",
        "C": "0",
        "D": "5",
    }
    assert [c.count for c in shown.hospitals] == [12, None, 0, 5]


def test_one_suppressed_cell_suppresses_the_total_and_its_studies() -> None:
    shown = suppress({"A": 40, "B": 2}, 10)
    assert shown.total is None and shown.total_shown == ">=41"
    assert shown.listed_hospitals == {"A"} and shown.list_withheld is None


def test_no_suppressed_cell_shows_the_total_and_every_study() -> None:
    shown = suppress({"A": 40, "B": 12, "C": 0}, 10)
    assert shown.total == 52 and shown.listed_hospitals == {"A", "B", "C"}


def test_a_total_below_the_minimum_gives_no_list() -> None:
    shown = suppress({"A": 3, "B": 2}, 10)
    assert shown.total is None and shown.total_shown == "<10"
    assert shown.listed_hospitals == frozenset() and "fewer than 10" in str(shown.list_withheld)
    assert suppress({"A": 0}, 10).total_shown == "0"


@pytest.mark.parametrize("k", [3, 5, 10])
def test_no_shown_total_lets_a_suppressed_cell_be_worked_out(k: int) -> None:
    """Exhaustively: whenever the total is shown, every combination of small cells with the
    same sum is possible, so no suppressed cell is determined by subtraction."""
    for small in itertools.product(range(1, k), repeat=3):
        for m in (1, 2, 3):
            cells = small[:m]
            counts = {"big": 50} | {f"h{i}": c for i, c in enumerate(cells)}
            shown = suppress(counts, k)
            if shown.total is None:
                continue
            hidden = shown.total - 50
            assert hidden >= k  # the suppressed cells together are not a small cell
            alternatives = {
                combo for combo in itertools.product(range(1, k), repeat=m) if sum(combo) == hidden
            }
            for position in range(m):
                assert len({combo[position] for combo in alternatives}) > 1, (cells, k)


def test_cells_at_their_extremes_keep_the_total_suppressed() -> None:
    assert suppress({"A": 50, "B": 4, "C": 4}, 5).total is None  # S = m(k-1): both 4
    assert suppress({"A": 50, "B": 4, "C": 3}, 5).total == 57


def test_queries_are_checked() -> None:
    with pytest.raises(InvalidCohortQueryError, match="no criterion"):
        CohortQuery()
    with pytest.raises(InvalidCohortQueryError, match="min_score"):
        AiFinding(min_score=1.5)
    with pytest.raises(InvalidCohortQueryError, match="code string"):
        CohortQuery(modality="CT'; DROP")
    assert CohortQuery(modality=" ct ").modality == "CT"
    with pytest.raises(ValueError, match="at least 2"):
        suppress({"A": 1}, 1)
