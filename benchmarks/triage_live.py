"""Time to triage while models change: steady, during a promotion, with a shadow, in one stream.

``python -m benchmarks.triage_live [--models-from HOME | --slim] [--studies N] [--interval S]``
``[--repeats N] [--quick]``

One temporary radcloud (:func:`benchmarks._platform.scratch_platform`) and one stream of
SYNTHETIC studies (head CT and chest radiograph alternating, one every ``interval`` seconds,
sent with dcmtk's storescu), in three phases of ``studies`` studies each:

1. **steady**: production only;
2. **promotion**: as the phase starts, a candidate version of each model (the same architecture,
   random weights, registered before the stream) is promoted on the running service
   (:func:`serving.promotion.promote_model`, forced with a written reason: a random-weight card
   is below the floor), and halfway through the phase it is rolled back
   (:func:`serving.promotion.rollback_model`): two switches per model while studies flow;
3. **shadow**: as the phase starts, the candidate runs in shadow beside production
   (:func:`serving.shadow.start_shadow`).

Before the stream, one study of each task is triaged and not counted (a model's first study
pays for its first load). A study belongs to the phase it was sent in. Reported per run and
phase: time to triage p50/p95 (last instance received → result row, as in
:mod:`benchmarks.triage`), the phase's p95 over the steady one, the versions that produced
the phase's results (a study sent just before a change may be triaged just after it),
failures, and the shadow's comparison per model (``radcloud models compare``). ``--repeats``
runs (each on a fresh platform) give the medians. The document keeps every study and every
model change with its time; a plot (each study's time to triage against when it was sent, the
changes marked; the medians per phase) is written beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._env import describe_machine, write_result
from benchmarks._platform import scratch_platform
from benchmarks.triage import (
    register_candidates,
    send_study,
    shadow_comparisons,
    timing_percentiles,
    wait_for_results,
)

__all__ = ["PHASES", "main", "plot", "run_live", "run_repeated"]

logger = logging.getLogger(__name__)

PHASES = ("steady", "promotion", "shadow")
_WARM_UP = (10_000, 10_001)  # a head CT and a radiograph, outside the stream's indexes
_REASON = "benchmark: SYNTHETIC random-weight candidate, promoted to measure a live switch"


def run_live(
    models_from: Path | None,
    *,
    slim: bool = False,
    studies: int = 12,
    interval_s: float = 5.0,
    stable_seconds: float = 2.0,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Stream ``3 * studies`` studies through a fresh platform, changing models as the phases
    say; return the result document.

    Parameters
    ----------
    models_from
        A ``RADCLOUD_HOME`` whose production models are copied (``make demo`` trains them).
    slim
        Slim random-weight models instead (``--quick``).
    studies, interval_s
        Studies per phase, and the seconds between two studies sent.
    stable_seconds
        The gateway's completeness wait.
    timeout_s
        How long to wait for every result once the stream is sent.
    """
    from core.audit import AuditTrail
    from core.db import Database
    from core.secrets import load_secrets
    from core.security import Actor
    from models.registry import ModelRegistry
    from serving.promotion import promote_model, rollback_model
    from serving.shadow import start_shadow

    with scratch_platform(
        "sqlite",
        models_from=models_from,
        slim=slim,
        sender_ae="BENCH_PACS",
        prefix="radcloud-triage-live-",
        gateway_stable_seconds=stable_seconds,
    ) as platform:
        settings = platform.settings
        registry = ModelRegistry(settings.paths.models_dir)
        candidates = register_candidates(settings.paths.models_dir, slim or models_from is None)
        production = {name: registry.production(name).version for name in candidates}  # type: ignore[union-attr]
        db = Database.from_settings(settings)
        audit = AuditTrail.from_secrets(db, load_secrets(settings))
        actor = Actor.cli()
        sent: dict[str, str] = {}
        sent_at: dict[str, tuple[float, str]] = {}
        changes: list[dict[str, Any]] = []
        appliers = {
            "promote": lambda name, version: promote_model(
                registry, audit, settings, name, version, actor=actor, force=True, reason=_REASON
            ),
            "rollback": lambda name, _: rollback_model(registry, audit, name, actor=actor),
            "shadow": lambda name, version: start_shadow(
                registry, audit, name, version, actor=actor
            ),
        }
        try:
            # not measured: each model's first study pays for loading and warming it
            wait_for_results(db, dict(send_study(platform, i) for i in _WARM_UP), timeout_s)
            started = time.monotonic()
            for index in range(len(PHASES) * studies):
                phase = PHASES[index // studies]
                event = _change_at(phase, index % studies, studies)
                if event is not None:
                    changes += _apply(event, appliers[event], candidates, registry, started)
                uid, task = send_study(platform, index)
                sent[uid] = task
                sent_at[uid] = (time.monotonic() - started, phase)
                time.sleep(max(0.0, started + (index + 1) * interval_s - time.monotonic()))
            records = wait_for_results(db, sent, timeout_s)
            shadowed = {uid: task for uid, (_, phase) in sent_at.items() if phase == "shadow"}
            shadow = shadow_comparisons(db, list(candidates), shadowed)
        finally:
            db.dispose()
    for record in records:
        record["sent_s"], record["phase"] = sent_at[record["study"]]
    phases: dict[str, Any] = {}
    for phase in PHASES:
        mine = [r for r in records if r["phase"] == phase]
        succeeded = [r for r in mine if r["status"] == "succeeded"]
        summary = timing_percentiles(succeeded)
        phases[phase] = {
            "studies": len(mine),
            "failed": len(mine) - len(succeeded),
            "time_to_triage_s": summary["time_to_triage_s"],
            "summary": summary,
            "versions": dict(Counter(f"{r['model']} v{r['version']}" for r in succeeded)),
        }
    steady_p95 = phases["steady"]["time_to_triage_s"].get("p95")
    return {
        "suite": "e2e-triage-live",
        "machine": describe_machine(),
        "parameters": {
            "studies_per_phase": studies,
            "interval_s": interval_s,
            "gateway_stable_seconds": stable_seconds,
            "warm_up_studies": len(_WARM_UP),
            "database": "sqlite",
            "models": "slim random-weight models"
            if slim or models_from is None
            else f"production models of {models_from}",
            "candidate": "the same architecture, random weights, as each model's next version",
            "data": "SYNTHETIC head CT and chest radiographs, alternating",
        },
        "production": production,
        "candidates": candidates,
        "changes": changes,
        "phases": phases,
        "p95_over_steady": {
            phase: phases[phase]["time_to_triage_s"]["p95"] / steady_p95
            if steady_p95 and phases[phase]["time_to_triage_s"]
            else None
            for phase in PHASES
        },
        "failed": sum(p["failed"] for p in phases.values()),
        "shadow": shadow,
        "records": records,
    }


def _change_at(phase: str, within: int, studies: int) -> str | None:
    """The model change made just before the ``within``-th study of ``phase``, if any."""
    if within == 0 and phase != "steady":
        return "promote" if phase == "promotion" else "shadow"
    if phase == "promotion" and within == studies // 2:
        return "rollback"
    return None


def _apply(
    event: str, apply: Any, candidates: dict[str, int], registry: Any, started: float
) -> list[dict[str, Any]]:
    """Make change ``event`` to every model (``apply(name, candidate_version)``); a record of
    each, with its time since ``started`` and how long it took."""
    done = []
    for name, version in candidates.items():
        at = time.monotonic() - started
        apply(name, version)
        done.append(
            {
                "at_s": at,
                "took_s": time.monotonic() - started - at,
                "event": event,
                "model": name,
                "version": version if event == "shadow" else registry.production(name).version,
            }
        )
    return done


def run_repeated(models_from: Path | None, *, repeats: int, **options: Any) -> dict[str, Any]:
    """:func:`run_live` ``repeats`` times, each on a fresh platform; every run, and per phase
    the medians over the runs of p50, p95 and p95 over the steady phase's."""
    runs = []
    for repeat in range(repeats):
        logger.warning("run %d of %d", repeat + 1, repeats)
        runs.append(run_live(models_from, **options))
    medians = {
        phase: {
            quantile: statistics.median(
                r["phases"][phase]["time_to_triage_s"][quantile] for r in runs
            )
            for quantile in ("p50", "p95")
        }
        | {"p95_over_steady": statistics.median(r["p95_over_steady"][phase] for r in runs)}
        for phase in PHASES
    }
    return {
        "suite": "e2e-triage-live",
        "machine": runs[0]["machine"],
        "parameters": runs[0]["parameters"] | {"repeats": repeats},
        "medians": medians,
        "failed": sum(r["failed"] for r in runs),
        "runs": runs,
    }


def plot(document: dict[str, Any], path: Path) -> Path:
    """Each study's time to triage against when it was sent, every run (the model changes of the
    first run marked, results of the candidate version ringed), and the per-phase medians."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=(2, 1))
    colours = dict(zip(PHASES, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for index, result in enumerate(document["runs"]):
        succeeded = [r for r in result["records"] if r["status"] == "succeeded"]
        for phase in PHASES:
            mine = [r for r in succeeded if r["phase"] == phase]
            left.scatter(
                [r["sent_s"] for r in mine],
                [r["time_to_triage_s"] for r in mine],
                s=18,
                color=colours[phase],
                label=phase if index == 0 else None,
            )
        candidates = result["candidates"]
        by_candidate = [
            r for r in succeeded if str(r["version"]) == str(candidates.get(r["model"]))
        ]
        left.scatter(
            [r["sent_s"] for r in by_candidate],
            [r["time_to_triage_s"] for r in by_candidate],
            s=70,
            facecolors="none",
            edgecolors="black",
            label="result of the candidate" if index == 0 else None,
        )
    marks = {"promote": "tab:red", "rollback": "tab:purple", "shadow": "tab:gray"}
    for event, colour in marks.items():
        changes = document["runs"][0]["changes"]
        times = sorted({round(c["at_s"], 1) for c in changes if c["event"] == event})
        for index, at in enumerate(times):
            left.axvline(at, color=colour, linestyle="--", label=event if index == 0 else None)
    left.set_xlabel("sent at (s since the stream began)")
    left.set_ylabel("time to triage (s)")
    left.set_title(f"each study, {len(document['runs'])} runs")
    left.legend(fontsize=7, loc="best")
    left.grid(alpha=0.3)
    medians = document["medians"]
    x = range(len(PHASES))
    for offset, quantile in ((-0.2, "p50"), (0.2, "p95")):
        right.bar(
            [i + offset for i in x],
            [medians[p][quantile] for p in PHASES],
            width=0.4,
            label=quantile,
        )
    right.set_xticks(list(x), list(PHASES))
    right.set_ylabel("time to triage (s), median of the runs")
    right.set_title("per phase")
    right.legend(fontsize=8)
    machine = document["machine"]
    fig.suptitle(
        f"time to triage while models change ({machine.get('cpu', '')}, {machine.get('cores')} "
        f"cores; {document['parameters']['models']}; SYNTHETIC data)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    """Command line entry point."""
    from core.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-from", type=Path, default=None, help="RADCLOUD_HOME with models")
    parser.add_argument("--studies", type=int, default=12, help="studies per phase")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between studies")
    parser.add_argument("--slim", action="store_true", help="slim random-weight models")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="slim random-weight models, 4 studies a phase, 1 s apart",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs, each on a fresh platform")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    home = args.models_from or load_settings().home
    studies, interval = (4, 1.0) if args.quick else (args.studies, args.interval)
    document = run_repeated(
        home,
        repeats=1 if args.quick else args.repeats,
        slim=args.quick or args.slim,
        studies=studies,
        interval_s=interval,
    )
    path = write_result("e2e-triage-live", "cpu", document, args.out)
    plot(document, path.with_suffix(".png"))
    print(json.dumps({"medians": document["medians"], "failed": document["failed"]}, indent=2))
    print(f"written to {path} and its .png")


if __name__ == "__main__":
    main()
