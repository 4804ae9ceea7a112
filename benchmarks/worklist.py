"""Worklist simulator: waiting times of critical and other studies, FIFO vs radcloud's order.

A SYNTHETIC arrival stream (no real hospital's data) is replayed against a roster of
radiologists three times, with three orderings of the same queue:

- ``fifo``: oldest ready study first;
- ``ai-first``: studies the AI flagged critical first, then oldest first (the "AI
  prioritisation" of published evaluations, which can starve unflagged studies);
- ``radcloud``: :func:`serving.worklist.priority_key` with :func:`serving.worklist.classify`
  under a :class:`serving.worklist.WorklistPolicy`: the very functions the worklist API orders
  by, not a copy.

Stream (per seed): studies become ready as a Poisson process whose hourly rate follows a
hospital day (busy 08-18, quiet at night); each is critical (ground truth) with probability
``critical_fraction``; the AI's score is ``sigmoid(N(mu, sd))`` with ``mu`` by ground truth, so
sensitivity and specificity at the threshold are imperfect (the realised values are reported);
a small fraction of studies fail AI processing (read unaided, routine); AI results arrive
``ai_latency_min`` after the study is ready, and until then the study is routine/pending.
Reading times are log-normal per modality. Radiologists work fixed daily shifts; a free
radiologist on shift takes the first study of the queue in the ordering's sense, reads it to
the end, and takes the next.

Waiting time = start of reading - ready time. For each ordering and each group (critical,
non-critical: ground truth, not the AI flag) the report gives mean, p95 and worst wait per
seed and their medians over seeds.

With ``--scores CT=head.json --scores DX=chest.json`` the scores are not assumed: each CT or DX
study draws its score from the measured scores of the shipped model for that modality on
studies of its class (``radcloud models verify NAME --save FILE``, serving's own pre- and
post-processing on fresh SYNTHETIC studies) and is flagged at that model's threshold; studies
of a modality without a model (MR) get no AI result and are routine.

Run: ``python -m benchmarks.worklist [--seeds 20] [--quick] [--out DIR] [--scores M=FILE]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._env import RESULTS_DIR, describe_machine, percentiles
from serving.worklist import AiStatus, PriorityClass, WorklistPolicy, classify, priority_key

__all__ = [
    "ORDERINGS",
    "SCENARIOS",
    "AiModel",
    "Arrival",
    "EmpiricalScores",
    "Roster",
    "Scenario",
    "Shift",
    "StreamModel",
    "generate_arrivals",
    "run",
    "simulate",
    "summarise_waits",
    "sweep",
    "table",
]

logger = logging.getLogger(__name__)

ORDERINGS = ("fifo", "ai-first", "radcloud")
_DAY = 24 * 60

# Studies per hour becoming ready, hour 0..23 (about 410 a day).
# 00-07 quiet, 08-18 busy (lunch dip), evening tapering.
_HOURLY_RATE = (6,) * 7 + (12,) + (28,) * 4 + (24,) * 2 + (28,) * 4 + (18,) * 3 + (10,) * 3


@dataclass(frozen=True)
class ModalityModel:
    """Share of the stream and log-normal reading time (median minutes, sigma of the log)."""

    share: float
    read_median_min: float
    read_sigma: float


@dataclass(frozen=True)
class EmpiricalScores:
    """A real model's scores on studies with and without a finding, and its threshold: what
    ``radcloud models verify NAME --save FILE`` measured through serving's own code."""

    model: str
    threshold: float
    positives: tuple[float, ...]
    negatives: tuple[float, ...]

    @classmethod
    def load(cls, path: Path) -> EmpiricalScores:
        """Read a file written by ``radcloud models verify --save``."""
        saved = json.loads(Path(path).read_text())
        studies = saved["studies"]
        return cls(
            model=f"{saved['name']} v{saved['version']}",
            threshold=float(saved["threshold"]),
            positives=tuple(float(s["score"]) for s in studies if s["label"] == 1),
            negatives=tuple(float(s["score"]) for s in studies if s["label"] == 0),
        )


@dataclass(frozen=True)
class AiModel:
    """Score model: ``sigmoid(N(mu, sd))`` by ground truth; failures; result latency.

    With ``empirical`` (modality → a real model's scores), a study of such a modality draws its
    score from that model's measured scores of its class and is flagged at that model's
    threshold; a study of any other modality has no model and gets no score (routine).
    """

    positive_logit_mean: float = 1.5
    negative_logit_mean: float = -2.0
    logit_sd: float = 1.2
    failure_rate: float = 0.02
    latency_min: float = 2.0
    empirical: dict[str, EmpiricalScores] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamModel:
    """The synthetic arrival stream."""

    days: int = 2
    hourly_rate: tuple[float, ...] = _HOURLY_RATE
    critical_fraction: float = 0.07
    modalities: dict[str, ModalityModel] = field(
        default_factory=lambda: {
            "DX": ModalityModel(0.50, 3.0, 0.5),
            "CT": ModalityModel(0.38, 9.0, 0.5),
            "MR": ModalityModel(0.12, 15.0, 0.4),
        }
    )
    ai: AiModel = AiModel()


@dataclass(frozen=True)
class Shift:
    """``readers`` radiologists on duty daily from ``start_hour`` to ``end_hour``."""

    start_hour: float
    end_hour: float
    readers: int


@dataclass(frozen=True)
class Roster:
    """The daily shifts (a shift may end after midnight: ``end_hour`` up to 48)."""

    shifts: tuple[Shift, ...] = (Shift(8, 18, 4), Shift(18, 24, 2), Shift(0, 8, 1))

    def readers(self) -> list[tuple[float, float]]:
        """One (start, end) minute-of-day window per radiologist."""
        return [(s.start_hour * 60, s.end_hour * 60) for s in self.shifts for _ in range(s.readers)]


@dataclass(frozen=True)
class Arrival:
    """One study of the stream (times in minutes from the start)."""

    ready: float
    modality: str
    critical: bool
    score: float | None
    ai_failed: bool
    ai_done: float
    read_min: float
    threshold: float | None = None  # the scoring model's own (None: the policy's)


def generate_arrivals(stream: StreamModel, seed: int) -> list[Arrival]:
    """A synthetic stream of ready studies, sorted by ready time."""
    rng = np.random.default_rng(seed)
    names = list(stream.modalities)
    shares = np.array([stream.modalities[m].share for m in names])
    arrivals = []
    for hour in range(stream.days * 24):
        count = int(rng.poisson(stream.hourly_rate[hour % 24]))
        for ready in np.sort(rng.uniform(hour * 60, (hour + 1) * 60, count)):
            modality = names[int(rng.choice(len(names), p=shares / shares.sum()))]
            model = stream.modalities[modality]
            critical = bool(rng.random() < stream.critical_fraction)
            mean = stream.ai.positive_logit_mean if critical else stream.ai.negative_logit_mean
            logit = float(rng.normal(mean, stream.ai.logit_sd))
            failed = bool(rng.random() < stream.ai.failure_rate)
            score: float | None = 1 / (1 + math.exp(-logit))
            threshold = None
            if stream.ai.empirical:
                measured = stream.ai.empirical.get(modality)
                score = None
                if measured is not None:
                    pool = measured.positives if critical else measured.negatives
                    score, threshold = float(pool[int(rng.integers(len(pool)))]), measured.threshold
            arrivals.append(
                Arrival(
                    ready=float(ready),
                    modality=modality,
                    critical=critical,
                    score=None if failed else score,
                    ai_failed=failed,
                    ai_done=float(ready) + stream.ai.latency_min,
                    read_min=float(
                        rng.lognormal(math.log(model.read_median_min), model.read_sigma)
                    ),
                    threshold=threshold,
                )
            )
    return arrivals


_Key = tuple[Any, ...]


def _keys(arrival: Arrival, ordering: str, policy: WorklistPolicy) -> tuple[_Key, _Key]:
    """Sort keys before and after the AI result arrives."""
    ready = arrival.ready
    if ordering == "fifo":
        return (ready,), (ready,)
    if arrival.threshold is not None:
        policy = policy.for_threshold(arrival.threshold)
    flagged = (
        not arrival.ai_failed and arrival.score is not None and arrival.score >= policy.threshold
    )
    if ordering == "ai-first":
        return (1, ready), (0 if flagged else 1, ready)
    if ordering != "radcloud":
        raise ValueError(
            f'ordering "{ordering}" is unknown: expected one of {", ".join(ORDERINGS)}'
        )
    pending = priority_key(ready + policy.max_wait_minutes(PriorityClass.ROUTINE), None, ready)
    cls = classify(arrival.score, critical=flagged, failed=arrival.ai_failed, policy=policy)
    score = None if arrival.ai_failed else arrival.score
    return pending, priority_key(ready + policy.max_wait_minutes(cls), score, ready)


def simulate(
    arrivals: Sequence[Arrival], policy: WorklistPolicy, roster: Roster, ordering: str
) -> list[float]:
    """Replay ``arrivals``; the wait (minutes) of each study, in the order of ``arrivals``.

    Raises
    ------
    ValueError
        Unknown ``ordering``, or a roster that never clears the queue.
    """
    keys = [_keys(a, ordering, policy) for a in arrivals]
    windows = Roster.readers(roster)
    events: list[tuple[float, int, int, int]] = []  # (time, order, kind, index)
    arrive, free, shift = 0, 1, 2
    for index, arrival in enumerate(arrivals):
        heapq.heappush(events, (arrival.ready, len(events), arrive, index))
    horizon_days = math.ceil((arrivals[-1].ready if arrivals else 0) / _DAY) + 7
    for reader, (start, _end) in enumerate(windows):
        for day in range(horizon_days):
            heapq.heappush(events, (day * _DAY + start, len(events), shift, reader))

    def on_shift(reader: int, time: float) -> bool:
        start, end = windows[reader]
        minute = time % _DAY
        return start <= minute < end or start <= minute + _DAY < end

    waits = [math.nan] * len(arrivals)
    queue: list[int] = []
    idle = set(range(len(windows)))
    order, read = len(events), 0
    while events:
        time, _, kind, index = heapq.heappop(events)
        if kind == arrive:
            queue.append(index)
        elif kind == free:
            idle.add(index)
        for reader in sorted(idle):
            if not queue:
                break
            if not on_shift(reader, time):
                continue
            best = min(
                range(len(queue)),
                key=lambda q: keys[queue[q]][time >= arrivals[queue[q]].ai_done],
            )
            study = queue.pop(best)
            waits[study] = time - arrivals[study].ready
            idle.discard(reader)
            order += 1
            heapq.heappush(events, (time + arrivals[study].read_min, order, free, reader))
            read += 1
        if read == len(arrivals):
            break
    if read < len(arrivals):
        raise ValueError(f"the roster left {len(queue)} studies unread after {horizon_days} days")
    return waits


def summarise_waits(waits: Sequence[float]) -> dict[str, float | int]:
    """Count, mean, p95 (nearest rank, as every benchmark: :func:`benchmarks._env.percentiles`)
    and worst of waiting times (minutes)."""
    if not waits:
        return {"n": 0, "mean": math.nan, "p95": math.nan, "max": math.nan}
    values = np.asarray(waits)
    return {
        "n": len(waits),
        "mean": round(float(values.mean()), 1),
        "p95": round(percentiles(waits)["p95"], 1),
        "max": round(float(values.max()), 1),
    }


@dataclass(frozen=True)
class Scenario:
    """A synthetic stream and the roster that reads it."""

    description: str
    stream: StreamModel
    roster: Roster

    def utilisation(self) -> float:
        """Expected reading work over reading capacity, per day."""
        shares = self.stream.modalities.values()
        total = sum(m.share for m in shares)
        mean_read = sum(
            m.share / total * m.read_median_min * math.exp(m.read_sigma**2 / 2) for m in shares
        )
        capacity = sum(s.readers * (s.end_hour - s.start_hour) * 60 for s in self.roster.shifts)
        return sum(self.stream.hourly_rate) * mean_read / capacity


SCENARIOS = {
    "balanced": Scenario(
        "about 410 studies a day; 4 radiologists 08-18, 2 until 24, 1 at night: the queue "
        "mostly keeps up",
        StreamModel(),
        Roster(),
    ),
    "backlog": Scenario(
        "about 450 studies a day, 340 of them 08-18; 3 radiologists 08-18, 2 until 24, 2 at "
        "night: a daytime backlog read down overnight",
        StreamModel(days=3, hourly_rate=(5,) * 8 + (34,) * 10 + (12,) * 6),
        Roster((Shift(8, 18, 3), Shift(18, 24, 2), Shift(0, 8, 2))),
    ),
}

_GROUPS = ("critical", "non_critical")
_STATS = ("mean", "p95", "max")


def _ai_quality(arrivals: Sequence[Arrival], threshold: float) -> dict[str, float]:
    def flagged(a: Arrival) -> bool:
        return a.score is not None and a.score >= (
            threshold if a.threshold is None else a.threshold
        )

    positives = [flagged(a) for a in arrivals if a.score is not None and a.critical]
    negatives = [flagged(a) for a in arrivals if a.score is not None and not a.critical]
    return {
        "sensitivity": round(sum(positives) / max(len(positives), 1), 3),
        "specificity": round((len(negatives) - sum(negatives)) / max(len(negatives), 1), 3),
        "scored_fraction": round(
            sum(a.score is not None for a in arrivals) / max(len(arrivals), 1), 3
        ),
        "failed_fraction": round(sum(a.ai_failed for a in arrivals) / max(len(arrivals), 1), 3),
    }


def _one_seed(
    scenario: Scenario, policy: WorklistPolicy, seed: int, orderings: Sequence[str] = ORDERINGS
) -> dict[str, Any]:
    arrivals = generate_arrivals(scenario.stream, seed)
    critical = [a.critical for a in arrivals]
    result: dict[str, Any] = {
        "seed": seed,
        "studies": len(arrivals),
        "critical": sum(critical),
        "ai": _ai_quality(arrivals, policy.threshold),
        "orderings": {},
        "waits": {},
    }
    for ordering in orderings:
        waits = simulate(arrivals, policy, scenario.roster, ordering)
        groups = {
            "critical": [w for w, c in zip(waits, critical, strict=True) if c],
            "non_critical": [w for w, c in zip(waits, critical, strict=True) if not c],
        }
        result["orderings"][ordering] = {g: summarise_waits(groups[g]) for g in _GROUPS}
        result["orderings"][ordering]["all_max"] = round(max(waits), 1)
        result["waits"][ordering] = groups
    return result


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def _median_over_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for ordering in runs[0]["orderings"]:
        per: dict[str, Any] = {
            group: {
                stat: _spread([r["orderings"][ordering][group][stat] for r in runs])
                for stat in _STATS
            }
            for group in _GROUPS
        }
        per["all_max"] = _spread([r["orderings"][ordering]["all_max"] for r in runs])
        summary[ordering] = per
    return summary


def _plot(results: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results), 2, figsize=(11, 4 * len(results)), squeeze=False, constrained_layout=True
    )
    for row, (name, runs) in zip(axes, results.items(), strict=True):
        for ax, group in zip(row, _GROUPS, strict=True):
            for ordering, style in zip(ORDERINGS, ("-", ":", "--"), strict=True):
                waits = np.sort(np.concatenate([r["waits"][ordering][group] for r in runs]))
                survival = 1 - np.arange(len(waits)) / len(waits)
                ax.step(waits, survival, style, where="post", label=ordering)
            ax.set_yscale("log")
            ax.set_xlabel("wait from ready to start of reading (min)")
            ax.set_ylabel("fraction of studies waiting longer")
            ax.set_title(f"{name}: {group.replace('_', '-')} studies")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep(
    scenario: Scenario, seeds: int, fractions: Sequence[float], routine_waits_min: Sequence[int]
) -> list[dict[str, Any]]:
    """radcloud's waits under other urgent-band fractions and routine maximum waits."""
    rows = []
    for fraction in fractions:
        for routine in routine_waits_min:
            policy = WorklistPolicy(
                max_wait_routine=dt.timedelta(minutes=routine), urgent_score_fraction=fraction
            )
            runs = [_one_seed(scenario, policy, seed, ("radcloud",)) for seed in range(seeds)]
            medians = _median_over_seeds(runs)["radcloud"]
            rows.append(
                {
                    "urgent_score_fraction": fraction,
                    "max_wait_routine_min": routine,
                    **{
                        f"{group}_{stat}": medians[group][stat]["median"]
                        for group in _GROUPS
                        for stat in _STATS
                    },
                }
            )
    return rows


def run(
    *,
    seeds: int = 20,
    scenarios: Sequence[str] = tuple(SCENARIOS),
    policy: WorklistPolicy | None = None,
    days: int | None = None,
    with_sweep: bool = True,
    out_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    stem: str | None = None,
    scores: dict[str, EmpiricalScores] | None = None,
) -> dict[str, Any]:
    """Simulate ``seeds`` synthetic streams per scenario under each ordering; write JSON and PNG.

    Parameters
    ----------
    seeds
        Streams per scenario (seeds 0..seeds-1); medians over them are reported.
    scenarios
        Names from :data:`SCENARIOS`.
    policy
        radcloud's policy; the default :class:`~serving.worklist.WorklistPolicy` when ``None``.
    days
        Days of arrivals per stream, overriding the scenarios' own.
    with_sweep
        Also simulate other urgent-band fractions and routine maximum waits.
    out_dir
        Where ``<date>-worklist.json`` and ``.png`` go (``benchmarks/results``).
    progress
        Called with the number of streams simulated so far.
    stem
        File name stem of the JSON and PNG (default ``<date>-worklist``).
    scores
        Modality → a real model's measured scores (:class:`EmpiricalScores`), replacing the
        assumed score model of every scenario; other modalities then have no AI.

    Returns
    -------
    dict
        The report written to the JSON file.
    """
    policy = policy or WorklistPolicy()
    results: dict[str, list[dict[str, Any]]] = {}
    report_scenarios: dict[str, Any] = {}
    done = 0
    for name in scenarios:
        scenario = SCENARIOS[name]
        if days is not None:
            scenario = replace(scenario, stream=replace(scenario.stream, days=days))
        if scores:
            ai = replace(scenario.stream.ai, empirical=dict(scores))
            scenario = replace(scenario, stream=replace(scenario.stream, ai=ai))
        runs = []
        for seed in range(seeds):
            runs.append(_one_seed(scenario, policy, seed))
            done += 1
            if progress:
                progress(done)
        results[name] = runs
        report_scenarios[name] = {
            "description": scenario.description,
            "utilisation": round(scenario.utilisation(), 3),
            "stream": asdict(scenario.stream),
            "roster": asdict(scenario.roster),
            "median_over_seeds": _median_over_seeds(runs),
            "per_seed": [{k: v for k, v in r.items() if k != "waits"} for r in runs],
        }
        if with_sweep:
            report_scenarios[name]["sweep"] = sweep(
                scenario, seeds, (0.5, 0.6, 0.7, 0.8, 1.0), (360, 480)
            )
    report: dict[str, Any] = {
        "suite": "worklist",
        "synthetic": True,
        "note": "SYNTHETIC arrival streams and reading-time model; not a real hospital's data",
        "machine": describe_machine(),
        "policy": {
            "max_wait_min": {c.value: policy.max_wait_minutes(c) for c in PriorityClass},
            "urgent_score_fraction": policy.urgent_score_fraction,
            "threshold": policy.threshold,
            "before_ai_result": {"class": PriorityClass.ROUTINE, "ai_status": AiStatus.PENDING},
        },
        "seeds": seeds,
        "ai_scores": (
            {
                modality: {
                    "model": m.model,
                    "threshold": m.threshold,
                    "positives": len(m.positives),
                    "negatives": len(m.negatives),
                    "source": "radcloud models verify --save (serving's own code, SYNTHETIC "
                    "studies)",
                }
                for modality, m in scores.items()
            }
            if scores
            else "assumed: sigmoid(N(mu, sd)) by ground truth (AiModel)"
        ),
        "scenarios": report_scenarios,
    }
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d')}-worklist"
    json_path = directory / f"{stem}.json"
    png_path = directory / f"{stem}.png"
    report["files"] = {"json": json_path.name, "png": png_path.name}
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    _plot(results, png_path, f"Waiting times, {seeds} synthetic streams per scenario, pooled")
    logger.info("wrote %s and %s", json_path, png_path)
    return report


def table(report: dict[str, Any]) -> str:
    """The report's medians over seeds as Markdown tables, one per scenario."""
    out = []
    for name, scenario in report["scenarios"].items():
        out += [
            f"{name} (utilisation {scenario['utilisation']:.2f}):",
            "",
            "| ordering | critical mean | critical p95 | critical worst | other mean | other p95 "
            "| other worst |",
            "|---|---|---|---|---|---|---|",
        ]
        for ordering, per in scenario["median_over_seeds"].items():
            cells = [per[g][s]["median"] for g in _GROUPS for s in _STATS]
            out.append(f"| {ordering} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 one-day streams, no sweep")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument(
        "--scores",
        action="append",
        default=[],
        metavar="MODALITY=FILE",
        help="a real model's scores for a modality (radcloud models verify --save FILE)",
    )
    parser.add_argument("--stem", default=None, help="results file name stem")
    args = parser.parse_args()
    scores = {}
    for item in args.scores:
        modality, _, path = item.partition("=")
        if not path:
            parser.error(f"--scores {item}: expected MODALITY=FILE")
        scores[modality.upper()] = EmpiricalScores.load(Path(path))
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    seeds = 3 if args.quick else args.seeds

    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("simulating", total=seeds * len(SCENARIOS))
        report = run(
            seeds=seeds,
            days=1 if args.quick else None,
            with_sweep=not args.quick,
            out_dir=args.out,
            progress=lambda done: bar.update(task, completed=done),
            stem=args.stem,
            scores=scores or None,
        )
    print(table(report))


if __name__ == "__main__":
    main()
