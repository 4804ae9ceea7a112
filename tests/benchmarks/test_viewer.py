"""The viewer suite (``radcloud bench --suite viewer --quick``): its report's schema, from a
real scratch platform and Debian's chromium. No timing is asserted: the figures are checked to
be present, positive and consistent with each other, never fast or slow."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from benchmarks.harness import run_bench
from benchmarks.viewer import CHROMIUM, QUICK, synthetic_ct


def test_the_synthetic_ct_is_one_series_of_evenly_spaced_slices() -> None:
    slices = synthetic_ct(slices=12, matrix=64, seed=3)
    assert len(slices) == 12
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert len({ds.SOPInstanceUID for ds in slices}) == 12
    z = [float(ds.ImagePositionPatient[2]) for ds in slices]
    steps = {round(b - a, 3) for a, b in itertools.pairwise(z)}
    assert len(steps) == 1 and steps.pop() > 0
    pixels = slices[6].pixel_array
    assert pixels.shape == (64, 64) and pixels.std() > 0


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.integration
def test_quick_viewer_suite_reports_first_image_times(tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    report = run_bench(["viewer"], device="cpu", quick=True, out_dir=tmp_path)
    written = json.loads((tmp_path / report["files"]["json"]).read_text())
    assert written["errors"] == {} and written["skipped"] == {}
    viewer = written["results"]["viewer"]
    assert viewer["suite"] == "viewer" and "machine" not in viewer
    parameters = viewer["parameters"]
    assert (parameters["slices"], parameters["repeats"]) == (QUICK["slices"], QUICK["repeats"])
    assert [ai["status"] for ai in parameters["ai_results"]] == ["succeeded"] * 2
    sessions = viewer["sessions"]
    assert len(sessions) == QUICK["warmup"] + QUICK["repeats"]
    assert [s["warmup"] for s in sessions].count(True) == QUICK["warmup"]
    for session in sessions:
        for kind in ("cold", "warm"):
            opened = session[kind]
            assert 0 < opened["open_ms"] < opened["first_image_ms"]
            assert opened["first_image_from_open_ms"] > 0
            assert opened["frames_fetched"] >= 1
    for kind in ("cold", "warm"):
        first = viewer["summary"][kind]["first_image_ms"]
        assert first["n"] == QUICK["repeats"]
        assert 0 < first["min"] <= first["median"] <= first["max"]
        assert first["min"] <= first["p95"] <= first["max"]
    markdown = (tmp_path / written["files"]["markdown"]).read_text()
    assert "radcloud:first-image" in markdown and "--quick" in markdown
