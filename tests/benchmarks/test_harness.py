"""The benchmark harness (``radcloud bench``): its report's schema, its files and its plots.

Quick runs only (slim models, tiny windows). No timing is asserted: figures are checked to be
present, positive and consistent with each other, never fast or slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from benchmarks._env import percentiles
from benchmarks.harness import SCHEMA, SUITES, BenchError, run_bench
from benchmarks.worklist import summarise_waits
from training.tasks import Task, task_spec

RADCLOUD = [sys.executable, "-m", "radcloud"]
MACHINE_KEYS = {"host", "cpu", "cores", "memory_gib", "threads", "packages", "commit", "time"}


def test_one_p95_everywhere_the_nearest_rank() -> None:
    samples = [float(n) for n in range(20, 0, -1)]  # 1..20, unordered
    assert percentiles(samples) == {"p50": 10.5, "p95": 19.0, "min": 1.0, "max": 20.0, "n": 20}
    assert percentiles([4.0]) == {"p50": 4.0, "p95": 4.0, "min": 4.0, "max": 4.0, "n": 1}
    assert percentiles([]) == {}
    assert summarise_waits(samples)["p95"] == 19.0  # the worklist simulator's, the same


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        assert image.size[0] > 300 and image.size[1] > 200


def _load(directory: Path, report: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((directory / report["files"]["json"]).read_text())
    return loaded


def _assert_spread(stat: dict[str, float]) -> None:
    assert stat["n"] >= 1
    assert 0 < stat["min"] <= stat["median"] <= stat["max"]


def test_worklist_suite_writes_report_markdown_and_plot(tmp_path: Path) -> None:
    report = run_bench(["worklist"], device="cpu", quick=True, out_dir=tmp_path)
    written = _load(tmp_path, report)
    assert written["schema"] == SCHEMA
    assert written["suites"] == ["worklist"] and written["errors"] == {}
    assert written["device"] == "cpu" and written["quick"] is True
    assert set(written["machine"]) >= MACHINE_KEYS
    accelerator = written["machine"]["accelerator"]
    assert {"torch_threads", "onnxruntime_providers", "cuda_available", "gpu"} <= set(accelerator)
    worklist = written["results"]["worklist"]
    assert worklist["synthetic"] is True
    for scenario in worklist["scenarios"].values():
        assert set(scenario["median_over_seeds"]) == {"fifo", "ai-first", "radcloud"}
    _assert_png(tmp_path / written["files"]["plots"]["worklist"])
    assert (tmp_path / written["files"]["worklist_json"]).is_file()
    markdown = (tmp_path / written["files"]["markdown"]).read_text()
    assert "| radcloud |" in markdown and "SIMULATED" in markdown
    assert written["files"]["json"].endswith("-cpu.json")


def test_a_second_report_of_the_day_does_not_overwrite_the_first(tmp_path: Path) -> None:
    first = run_bench(["worklist"], device="cpu", quick=True, out_dir=tmp_path)
    second = run_bench(["worklist"], device="cpu", quick=True, out_dir=tmp_path)
    assert second["files"]["json"] != first["files"]["json"]
    assert second["files"]["json"].endswith("-cpu-2.json")
    assert (tmp_path / first["files"]["json"]).is_file()


def test_unknown_suite_and_missing_cuda_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match='suite "gpu-burn" is not known'):
        run_bench(["gpu-burn"], out_dir=tmp_path)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="no CUDA device"):
            run_bench(["inference"], device="cuda", out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def _check_inference(inference: dict[str, Any]) -> None:
    assert inference["baseline"] == "torch-cpu" and inference["slim"] is True
    assert {"head-ct-haemorrhage", "chest-xr-finding"} == set(inference["models"])
    assert inference["models"]["head-ct-haemorrhage"]["architecture"] == "unet-2.5d"
    assert inference["models"]["chest-xr-finding"]["architecture"] == "resnet-small-2d"
    assert {"torch-cpu", "onnx-cpu"} <= set(inference["backends"])
    for gpu_backend in ("torch-cuda-amp", "onnx-cuda", "onnx-tensorrt"):
        assert gpu_backend in inference["backends"] or inference["skipped_backends"][gpu_backend]
    measured = {
        (r["model"], r["backend"], r["mode"], r["batch"]) for r in inference["measurements"]
    }
    skipped = {(r["model"], r["backend"], r["mode"], r["batch"]) for r in inference["not_measured"]}
    for model in inference["models"]:
        for backend in inference["backends"]:
            for mode in ("compute", "end_to_end"):
                for batch in inference["parameters"]["batch_sizes"]:
                    key = (model, backend, mode, batch)
                    assert (key in measured) != (key in skipped), key
    for row in inference["measurements"]:
        _assert_spread(row["items_per_s"])
        assert len(row["samples"]["items_per_s"]) == inference["parameters"]["repeats"]
        latency = row["latency_s"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p95"] <= latency["max"]
        assert latency["n"] == len(row["samples"]["latency_s"]) >= row["items_per_s"]["n"]
        assert row["peak_host_rss_mib"] > 0
        if row["mode"] == "end_to_end":
            assert set(row["stages_s_median"]) == {"preprocess_s", "model_s", "postprocess_s"}
        if row["backend"] == "torch-cpu":
            assert "vs_baseline" not in row
        else:
            assert row["vs_baseline"]["throughput_vs_best_baseline"] > 0


def _check_serving(serving: dict[str, Any]) -> None:
    _assert_spread(serving["raw_inputs_per_s"])
    assert serving["model"]["architecture"] == task_spec(Task.CHEST_XR).architecture
    for path in ("handle", "http"):
        assert set(serving[path]) == {str(c) for c in serving["concurrency"]}
        for measured in serving[path].values():
            _assert_spread(measured["inputs_per_s"])
            assert measured["latency_s"]["n"] == len(measured["samples"]["latency_s"]) > 0
        assert serving["efficiency"][path] > 0
        assert str(serving["saturation_concurrency"][path]) in serving[path]
    assert serving["mean_batch_size"] >= 1


@pytest.mark.slow
def test_radcloud_bench_quick_reports_inference_and_serving(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            *RADCLOUD,
            "bench",
            "--suite",
            "inference",
            "--suite",
            "serving",
            "--device",
            "cpu",
            "--quick",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [report_path] = tmp_path.glob("*-cpu.json")
    assert f"report: {report_path}" in run.stdout.replace("\n", "")
    report = json.loads(report_path.read_text())
    assert report["errors"] == {}
    assert report["suites"] == ["inference", "serving"]
    assert set(report["results"]) == {"inference", "serving"} and set(SUITES) >= set(
        report["suites"]
    )
    _check_inference(report["results"]["inference"])
    _check_serving(report["results"]["serving"])
    assert report["results"]["inference"]["parameters"]["threads"] == 1
    assert report["machine"]["accelerator"]["torch_threads"] == 1
    plots = report["files"]["plots"]
    assert set(plots) == {"throughput", "latency_cdf"}
    for file in plots.values():
        _assert_png(tmp_path / file)
    markdown = (tmp_path / report["files"]["markdown"]).read_text()
    assert "with pre/post-processing" in markdown and "Serving efficiency" in markdown
    assert "--quick" in markdown


@pytest.mark.gpu
@pytest.mark.slow
def test_quick_cuda_inference_has_gpu_ratios(tmp_path: Path) -> None:
    report = run_bench(["inference"], device="cuda", quick=True, out_dir=tmp_path)
    inference = _load(tmp_path, report)["results"]["inference"]
    assert report["machine"]["accelerator"]["gpu"]["name"]
    rows = [r for r in inference["measurements"] if r["backend"] == "torch-cuda-amp"]
    assert rows and all(r["peak_device_mib"] > 0 for r in rows)
    assert all(r["vs_baseline"]["throughput_same_batch"] > 0 for r in rows)
