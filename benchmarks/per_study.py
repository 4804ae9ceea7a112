"""Per-study CPU path (issue 17): where one study's time goes between its bytes and its results.

``python -m benchmarks.per_study [--repeats N] [--quick] [--baseline REF] [--rounds N]``

For a SYNTHETIC head CT (with a haemorrhage) and a SYNTHETIC chest radiograph (with a finding),
each step a triage worker takes, in-process and on this machine's CPU, from the instances' Part 10
bytes to the SEG and SR encoded:

- ``parse``: ``pydicom.dcmread`` of every instance;
- ``volume``: :func:`imaging.volume.load_series` (of which ``geometry``: sorting and checking the
  slices, ``decode``: the pixel data, the rest the Modality LUT and assembly);
- ``preprocess``: :func:`serving.inference.prepare` (the card's MONAI transforms: orientation,
  resampling where the card asks for it, windowing, pad/crop or resize); a separate pass times
  each transform alone (``preprocess_steps``, not part of the total);
- ``model``: the shipped network (``models/shipped``, SYNTHETIC data only) through serving's ONNX
  runner on the CPU;
- ``interpret``: :func:`serving.inference.interpret` (of which ``mask_mapping``: the lesion
  probabilities put back on the source grid, MONAI's inverse transforms);
- ``writeback``: :func:`serving.triage.writeback.write_back` into an in-memory archive (of which
  ``seg``: the DICOM SEG built, ``sr``: the TID 1500 SR built, the rest Part 10 encoding).

The archive round trips (a scratch Orthanc) are not measured here: ``benchmarks.triage`` times
them with the whole platform (``fetch_s``, ``writeback_s``).

Each step's median over ``repeats`` (after one warm-up), its share of the per-study total and the
non-model share (everything but ``model``) are reported. With ``--baseline REF`` the same
measurement runs on the code of git ref ``REF`` (extracted with ``git archive``) and on this
tree, in fresh processes, alternating for ``--rounds`` rounds on the same study bytes and model
files, so that before and after come from one run on one (possibly busy) machine. ``--profile``
adds cProfile's hottest functions per task. torch runs on ``--torch-threads`` threads (default
1, what a triage worker gets from Ray; 0: torch's default of one per core). Results:
``benchmarks/results/<date>-<host>-cpu-per-study-threads-<n>.json``
(:func:`benchmarks._env.write_result`).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "TASKS", "TRIAGE_TORCH_THREADS", "main", "measure_tree", "run_per_study"]

logger = logging.getLogger(__name__)

TASKS = {"head-ct": "head-ct-haemorrhage", "chest-xr": "chest-xr-finding"}
"""SYNTHETIC task → the shipped model that reads it."""
STAGES = ("parse", "volume", "preprocess", "model", "interpret", "writeback")
#: (module, function, sub-step): functions timed inside the stage that calls them
_SUB_STEPS = (
    ("imaging.volume", "plan_series", "geometry"),
    ("imaging.volume", "decode", "decode"),
    ("serving.inference", "restore_to_source", "mask_mapping"),
    ("serving.triage.writeback", "write_segmentation", "seg"),
    ("serving.triage.writeback", "write_measurement_report", "sr"),
)
TRIAGE_TORCH_THREADS = 1
"""torch's threads in a triage worker: Ray gives an actor with less than one CPU (the worker has
0.25) ``OMP_NUM_THREADS=1``, and torch takes its thread count from it."""
_SEED = 4242
_REPO = Path(__file__).resolve().parent.parent


class _Stopwatch:
    """Seconds per stage, and per sub-step inside the stage that was running."""

    def __init__(self) -> None:
        self.current = ""
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.current = ""

    def wrap(self, function: Callable[..., Any], step: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                key = f"{self.current}.{step}"
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

        return timed


@contextmanager
def _sub_steps_timed(watch: _Stopwatch) -> Iterator[None]:
    """Time the functions of :data:`_SUB_STEPS` where the per-study path calls them."""
    import importlib

    saved = []
    for module_name, function, step in _SUB_STEPS:
        module = importlib.import_module(module_name)
        original = getattr(module, function)
        saved.append((module, function, original))
        setattr(module, function, watch.wrap(original, step))
    try:
        yield
    finally:
        for module, function, original in saved:
            setattr(module, function, original)


class _MemoryArchive:
    """Just enough of :class:`core.archive.ImageArchive` for ``write_back``: keeps the bytes."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []

    def store_instance(self, data: bytes) -> None:
        self.stored.append(data)


def write_corpus(directory: Path) -> dict[str, list[Path]]:
    """One positive SYNTHETIC study per task as Part 10 files under ``directory/<task>/``."""
    from imaging.synthetic import generate_study

    corpus: dict[str, list[Path]] = {}
    for task in TASKS:
        study = generate_study(task, 0, _SEED, positive=True)
        folder = directory / task
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for number, dataset in enumerate(study.datasets):
            path = folder / f"{number:04d}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
        corpus[task] = paths
    return corpus


def register_shipped(models_dir: Path) -> None:
    """The shipped models, imported (ONNX exported) and promoted in a registry at ``models_dir``."""
    from models.registry import ModelRegistry
    from models.shipping import shipped_bundles

    registry = ModelRegistry(models_dir)
    bundles = shipped_bundles()
    for name in TASKS.values():
        model = registry.import_bundle(bundles[name])
        registry.promote(model.name, model.version)


def _one_study(watch: _Stopwatch, files: list[bytes], runner: Any, name: str) -> dict[str, Any]:
    """The per-study path once; returns what the result says about the study."""
    import pydicom
    from pydicom import Dataset
    from pydicom.filebase import DicomBytesIO

    from imaging.volume import load_series
    from serving.inference import interpret, prepare
    from serving.triage.selection import SeriesData
    from serving.triage.writeback import write_back

    card = runner.card
    with watch.stage("parse"):
        datasets: list[Dataset] = [pydicom.dcmread(DicomBytesIO(data)) for data in files]
    with watch.stage("volume"):
        volume = load_series(datasets)
    with watch.stage("preprocess"):
        prepared = prepare(card, volume)
    with watch.stage("model"):
        logits = runner.predict(prepared.array[None])[0]
    with watch.stage("interpret"):
        output = interpret(card, prepared, logits)
    series = SeriesData(volume.series_instance_uid, volume.modality, datasets)
    archive = _MemoryArchive()
    with watch.stage("writeback"):
        findings = write_back(
            archive,  # type: ignore[arg-type]
            series,
            output,
            name=name,
            version=str(runner.model.version),
            card=card,
        )
    return {
        "shape": list(volume.shape),
        "score": output.score,
        "critical": output.critical,
        "lesion_voxels": output.lesion_voxels,
        "seg_written": "seg_sop_instance_uid" in findings,
        "stored_bytes": sum(len(b) for b in archive.stored),
    }


def _preprocess_steps(files: list[bytes], card: Any) -> dict[str, float]:
    """Seconds of each pre-processing transform run alone (outside the timed path)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO

    from imaging.volume import load_series
    from models.preprocessing import card_transforms, volume_item

    volume = load_series([pydicom.dcmread(DicomBytesIO(data)) for data in files])
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    item: Any = volume_item(volume, card.inputs)
    seconds["volume_item"] = time.perf_counter() - started
    for transform in card_transforms(card.inputs, track_meta=True):
        started = time.perf_counter()
        item = transform(item)
        seconds[type(transform).__name__] = time.perf_counter() - started
    return seconds


def _hot_functions(profile: cProfile.Profile, top: int) -> list[dict[str, Any]]:
    """The ``top`` functions by cumulative time, then by own time."""
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, function), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.split("site-packages/")[-1].replace(str(_REPO) + "/", "")
        rows.append(
            {
                "function": f"{where}:{line}({function})",
                "calls": calls,
                "own_s": round(own, 4),
                "cumulative_s": round(cumulative, 4),
            }
        )
    by_cumulative = sorted(rows, key=lambda r: -r["cumulative_s"])[:top]
    by_own = sorted(rows, key=lambda r: -r["own_s"])[:top]
    return [{"by": "cumulative", **r} for r in by_cumulative] + [{"by": "own", **r} for r in by_own]


def measure_tree(
    corpus: dict[str, list[Path]],
    models_dir: Path,
    repeats: int,
    *,
    profile: bool = False,
    torch_threads: int | None = TRIAGE_TORCH_THREADS,
) -> dict[str, Any]:
    """Every task's per-study path ``repeats`` times (after one warm-up) in this process.

    Parameters
    ----------
    corpus
        Task → its study's Part 10 files (:func:`write_corpus`).
    models_dir
        A registry with the shipped models in production (:func:`register_shipped`).
    repeats
        Timed repetitions per task.
    profile
        Also run cProfile over one more repetition and report the hottest functions.
    torch_threads
        torch's CPU threads for pre- and post-processing (None: torch's default, one per core).

    Returns
    -------
    dict
        Per task: raw seconds per stage and sub-step, the study's outcome, the pre-processing
        steps alone, and (``profile``) the hot functions.
    """
    from models.registry import ModelRegistry
    from serving.inference import ModelRunner

    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    registry = ModelRegistry(models_dir)
    tasks: dict[str, Any] = {}
    for task, paths in corpus.items():
        files = [path.read_bytes() for path in paths]
        runner = ModelRunner(registry.get(TASKS[task], "production"), "onnx", "cpu")
        runner.warm_up()
        watch = _Stopwatch()
        samples: list[dict[str, float]] = []
        with _sub_steps_timed(watch):
            outcome = _one_study(watch, files, runner, TASKS[task])  # warm-up
            for _ in range(repeats):
                watch.seconds = {}
                started = time.perf_counter()
                _one_study(watch, files, runner, TASKS[task])
                samples.append({**watch.seconds, "total": time.perf_counter() - started})
            hot = None
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                _one_study(watch, files, runner, TASKS[task])
                profiler.disable()
                hot = _hot_functions(profiler, 25)
        steps = [_preprocess_steps(files, runner.card) for _ in range(max(1, repeats // 2))]
        tasks[task] = {
            "model": TASKS[task],
            "instances": len(files),
            "bytes": sum(len(f) for f in files),
            "outcome": outcome,
            "samples": samples,
            "preprocess_steps": {key: statistics.median(s[key] for s in steps) for key in steps[0]},
            "hot_functions": hot,
        }
    return tasks


def summarise_task(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Median and minimum seconds per stage and sub-step, shares of the median total, the
    non-model share. On a busy machine the minimum shows what the code costs, the median what
    the load added.

    Each sample's non-model share is ``1 - model / total``; the median of those is reported.
    """
    keys = sorted({key for sample in samples for key in sample})
    median = {key: statistics.median(s.get(key, 0.0) for s in samples) for key in keys}
    total = median["total"]
    shares = [1.0 - s["model"] / s["total"] for s in samples]
    return {
        "median_s": median,
        "min_s": {key: min(s.get(key, 0.0) for s in samples) for key in keys},
        "non_model_min_s": min(s["total"] - s["model"] for s in samples),
        "share_of_total": {key: median[key] / total for key in STAGES if key in median},
        "non_model_s": statistics.median(s["total"] - s["model"] for s in samples),
        "non_model_share": statistics.median(shares),
        "n": len(samples),
    }


def _worker(args: argparse.Namespace) -> None:
    corpus = json.loads(args.corpus.read_text())
    measured = measure_tree(
        {task: [Path(p) for p in paths] for task, paths in corpus.items()},
        args.models,
        args.repeats,
        profile=args.profile,
        torch_threads=args.torch_threads or None,
    )
    args.json.write_text(json.dumps(measured))


def _extract(ref: str, destination: Path) -> str:
    """Check out ``ref``'s tree (``git archive``) into ``destination``; its short commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], capture_output=True, text=True, check=True, cwd=_REPO
    ).stdout.strip()
    destination.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref], capture_output=True, check=True, cwd=_REPO
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    # the measuring code itself is this tree's (the baseline may predate it)
    shutil.copy2(Path(__file__), destination / "benchmarks" / "per_study.py")
    return commit


def _run_worker(
    tree: Path,
    commit: str,
    corpus_file: Path,
    models_dir: Path,
    *,
    repeats: int,
    profile: bool,
    torch_threads: int | None,
) -> dict[str, Any]:
    out = corpus_file.with_name(f"measured-{os.getpid()}-{time.monotonic_ns()}.json")
    environment = {**os.environ, "PYTHONPATH": str(tree), "RADCLOUD_BENCH_COMMIT": commit}
    command = [sys.executable, "-m", "benchmarks.per_study", "--worker"]
    command += ["--corpus", str(corpus_file), "--models", str(models_dir)]
    command += ["--repeats", str(repeats), "--json", str(out)]
    command += ["--torch-threads", str(torch_threads or 0)]
    subprocess.run(
        [*command, *(["--profile"] if profile else [])], cwd=tree, env=environment, check=True
    )
    measured: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return measured


def run_per_study(
    *,
    repeats: int = 5,
    rounds: int = 1,
    baseline: str | None = None,
    profile: bool = False,
    torch_threads: int | None = TRIAGE_TORCH_THREADS,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure this tree (and ``baseline``'s, alternating) and write the result file.

    Parameters
    ----------
    repeats
        Timed repetitions per task in each process.
    rounds
        Fresh processes per tree; with a baseline their order alternates round by round.
    baseline
        A git ref whose code is measured the same way, side by side (None: this tree only).
    profile
        Report cProfile's hottest functions (from each tree's first round).
    torch_threads
        torch's threads in each measuring process (None: torch's default).
    out_dir
        Where the result goes (default ``benchmarks/results``).

    Returns
    -------
    dict
        The result document, with ``path``.
    """
    from benchmarks._env import describe_accelerator, describe_machine, write_result

    with tempfile.TemporaryDirectory(prefix="radcloud-per-study-") as scratch:
        root = Path(scratch)
        logger.info("synthesising the studies and registering the shipped models")
        corpus = write_corpus(root / "corpus")
        corpus_file = root / "corpus.json"
        corpus_file.write_text(json.dumps({t: [str(p) for p in ps] for t, ps in corpus.items()}))
        register_shipped(root / "models")
        machine = describe_machine()
        trees = {"this": (_REPO, str(machine["commit"]))}
        if baseline is not None:
            trees["baseline"] = (root / "baseline", _extract(baseline, root / "baseline"))
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for number in range(rounds):
            order = list(trees) if number % 2 == 0 else list(reversed(trees))
            for name in order:
                tree, commit = trees[name]
                logger.info("round %d/%d: %s (%s)", number + 1, rounds, name, commit)
                measured[name].append(
                    _run_worker(
                        tree,
                        commit,
                        corpus_file,
                        root / "models",
                        repeats=repeats,
                        profile=profile and number < 2,
                        torch_threads=torch_threads,
                    )
                )
    runs: dict[str, Any] = {}
    for name, (_, commit) in trees.items():
        per_task: dict[str, Any] = {}
        for task in TASKS:
            rounds_of_task = [m[task] for m in measured[name]]
            samples = [s for r in rounds_of_task for s in r["samples"]]
            per_task[task] = {
                **{k: rounds_of_task[0][k] for k in ("model", "instances", "bytes", "outcome")},
                "summary": summarise_task(samples),
                "preprocess_steps_s": rounds_of_task[0]["preprocess_steps"],
                "hot_functions": rounds_of_task[0]["hot_functions"],
                "samples": samples,
            }
        runs[name] = {"commit": commit, "tasks": per_task}
    comparison = None
    if baseline is not None:
        comparison = {
            task: {
                "non_model_share_before": runs["baseline"]["tasks"][task]["summary"][
                    "non_model_share"
                ],
                "non_model_share_after": runs["this"]["tasks"][task]["summary"]["non_model_share"],
                "non_model_s_ratio_after_to_before": runs["this"]["tasks"][task]["summary"][
                    "non_model_s"
                ]
                / runs["baseline"]["tasks"][task]["summary"]["non_model_s"],
            }
            for task in TASKS
        }
    result = {
        "suite": "per_study",
        "parameters": {
            "repeats": repeats,
            "rounds": rounds,
            "baseline": baseline,
            "backend": "serving's ModelRunner, onnx on the CPU (ONNX Runtime defaults)",
            "torch_threads": torch_threads or "torch default (one per core)",
            "data": f"SYNTHETIC positive study 0 of seed {_SEED} per task, shipped models",
        },
        "machine": machine,
        "accelerator": describe_accelerator(),
        "runs": runs,
        "comparison": comparison,
    }
    suite = f"per-study-threads-{torch_threads or 'default'}"
    result["path"] = str(write_result(suite, "cpu", result, out_dir))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The stage table: median ms and share per stage, per tree and task."""
    lines = [
        "| task | code | " + " | ".join(STAGES) + " | total ms | non-model ms | non-model share |",
        "|---|---|" + "---:|" * (len(STAGES) + 3),
    ]
    for task in TASKS:
        for name, run in result["runs"].items():
            summary = run["tasks"][task]["summary"]
            median, share = summary["median_s"], summary["share_of_total"]
            cells = [f"{median[s] * 1000:.0f} ({share[s]:.0%})" for s in STAGES]
            lines.append(
                f"| {task} | {name} {run['commit']} | "
                + " | ".join(cells)
                + f" | {median['total'] * 1000:.0f} | {summary['non_model_s'] * 1000:.0f} "
                f"| {summary['non_model_share']:.1%} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Command line: ``python -m benchmarks.per_study``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=None, help="fresh processes per tree")
    parser.add_argument("--baseline", default=None, help="git ref measured side by side")
    parser.add_argument("--profile", action="store_true", help="report cProfile's hot functions")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 1 round: the harness")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=TRIAGE_TORCH_THREADS,
        help="torch threads for pre/post-processing (0: torch's default, one per core)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("highdicom", "imaging.seg", "imaging.sr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.worker:
        _worker(args)
        return
    repeats = 2 if args.quick else args.repeats
    rounds = args.rounds or (1 if args.quick or args.baseline is None else 4)
    result = run_per_study(
        repeats=repeats,
        rounds=rounds,
        baseline=args.baseline,
        profile=args.profile,
        torch_threads=args.torch_threads or None,
        out_dir=args.out,
    )
    print(markdown(result))
    print(f"\nresults: {result['path']}")


if __name__ == "__main__":
    main()
