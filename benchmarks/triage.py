"""Time to triage: a stream of SYNTHETIC studies through the whole platform.

``radcloud bench --suite e2e`` or
``python -m benchmarks.triage [--models-from HOME] [--studies N] [--interval S] [--quick]``
``[--database sqlite,postgresql] [--repeats N] [--shadow]``

A temporary radcloud (Orthanc, gateway, Ray Serve) is started on free ports with a copy of the
production models of ``--models-from`` (default: ``RADCLOUD_HOME``, where ``make demo`` trains
them). Head CTs and chest radiographs, alternating, are sent with dcmtk's storescu, one study
every ``interval`` seconds, and the result rows are read back. Reported per study, then as
p50/p95 with min and max:

- ``completeness_wait_s``: last instance received → study ready (the gateway waits
  ``gateway_stable_seconds`` of silence, by design: a study is announced once complete);
- ``triage_s``: ready → result row (queueing, fetch, pre-processing, inference, post-processing,
  write-back), with each stage's seconds from the result row;
- ``time_to_triage_s``: last instance → result row, the sum;
- studies per minute over the stream (first instance sent → last result);
- the application database's contention: study events that needed a retry, and the retries and
  database errors the services logged, with how many were "database is locked".

With ``--database sqlite,postgresql`` the same stream runs on each engine in turn, ``--repeats``
times, alternating (``--interval 0``: a burst, every study sent back to back); the document keeps
every run and the medians per engine, and PostgreSQL's against SQLite's of the same run. The
PostgreSQL runs use radcloud's managed server (``RADCLOUD_POSTGRESQL_MANAGED``), started with
the platform in a data directory of its own.

With ``--shadow`` the stream runs twice, ``--repeats`` times alternating: without and with a
shadow version of each model of the same size (the model's architecture with random weights,
registered as the next version and set as shadow: ``serving.shadow``); the document keeps both
runs, the shadow's comparison per model, and the ratio of the time-to-triage p95 with a shadow
to the one without (the budget the README states).
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

from sqlalchemy import select

from benchmarks._env import describe_machine, percentiles, write_result
from benchmarks._platform import ENGINES as _ENGINES
from benchmarks._platform import Platform, scratch_platform, write_study

__all__ = [
    "main",
    "register_candidates",
    "run_engines",
    "run_triage",
    "send_study",
    "shadow_comparisons",
    "timing_percentiles",
    "wait_for_results",
]

logger = logging.getLogger(__name__)

_AE = "BENCH_PACS"
_STAGES = ("fetch_s", "preprocess_s", "inference_s", "postprocess_s", "writeback_s", "total_s")
_LOCKED = "database is locked"
_RETRIED = "will be retried"  # serving.triage.outbox.retry_later's warning, with the error
# the last line of a logged traceback of a database error (a failed triage, or the triage loop's
# own claim of an event): one per error
_DATABASE_ERROR = "sqlalchemy.exc.OperationalError:"


def _records(db: Any, sent: dict[str, str]) -> list[dict[str, Any]]:
    """One record per final result row of the studies sent."""
    from core.db.models import InferenceResult, InferenceStatus, Study

    records: list[dict[str, Any]] = []
    with db.session() as session:
        rows = session.execute(
            select(Study, InferenceResult)
            .join(InferenceResult, InferenceResult.study_id == Study.id)
            .where(
                Study.study_instance_uid.in_(sent),
                InferenceResult.status != InferenceStatus.PENDING,
            )
        )
        for study, result in rows:
            ready = study.ready_at
            timings = result.timings or {}
            records.append(
                {
                    "study": study.study_instance_uid,
                    "task": sent[study.study_instance_uid],
                    "model": result.model_name,
                    "version": result.model_version,
                    "status": result.status.value,
                    "completeness_wait_s": (ready - study.last_received_at).total_seconds()
                    if ready
                    else None,
                    "triage_s": (result.created_at - ready).total_seconds() if ready else None,
                    **{k: timings.get(k) for k in (*_STAGES, "time_to_triage_s")},
                }
            )
    return records


def send_study(platform: Platform, index: int) -> tuple[str, str]:
    """Send study ``index`` of the stream (head CT for even, chest radiograph for odd indexes)
    with dcmtk's storescu; return its Study Instance UID and task."""
    from dicom_gateway.dcmtk import storescu
    from imaging.synthetic import generate_study

    task = ("head-ct", "chest-xr")[index % 2]
    study = generate_study(task, index, seed=777)
    storescu(
        write_study(study.datasets, platform.scratch / f"study-{index}"),
        host="127.0.0.1",
        port=platform.settings.gateway_port,
        calling_ae=_AE,
        called_ae=platform.settings.gateway_ae_title,
    )
    return study.study_instance_uid, task


def wait_for_results(db: Any, sent: dict[str, str], timeout_s: float) -> list[dict[str, Any]]:
    """The records of ``sent`` once each study has its final result row.

    Raises
    ------
    SystemExit
        Not every study is triaged within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    records = _records(db, sent)
    while {r["study"] for r in records} != set(sent):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(records)} of {len(sent)} studies triaged")
        time.sleep(1.0)
        records = _records(db, sent)
    return records


def timing_percentiles(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles of each timing of ``records`` (succeeded ones)."""
    return {
        key: percentiles([float(r[key]) for r in records if r[key] is not None])
        for key in ("completeness_wait_s", "triage_s", "time_to_triage_s", *_STAGES)
    }


def _contention(db: Any, sent: dict[str, str], log_dir: Path) -> dict[str, Any]:
    """The study events of ``sent`` that failed at least once (``attempts`` counts the failures
    and the success, which clears ``last_error``), the failed attempts, those still failing on a
    locked database, the retries the services logged (each with its error) and the database
    errors they logged with a traceback (a failed claim of an event is not retried: its lease
    runs out), how many of each for a locked database."""
    from core.db.models import OutboxEvent

    with db.session() as session:
        rows = session.execute(
            select(OutboxEvent.attempts, OutboxEvent.last_error).where(
                OutboxEvent.key.in_(sent), OutboxEvent.attempts > 1
            )
        ).all()
    lines = [
        line
        for path in log_dir.glob("*.log")
        for line in path.read_text(errors="replace").splitlines()
        if _RETRIED in line or _DATABASE_ERROR in line
    ]
    retried = [line for line in lines if _RETRIED in line]
    errors = [line for line in lines if _DATABASE_ERROR in line]
    return {
        "events_retried": len(rows),
        "failed_attempts": sum(attempts - 1 for attempts, _ in rows),
        "events_last_error_locked": sum(1 for _, error in rows if _LOCKED in (error or "")),
        "logged_retries": len(retried),
        "logged_retries_locked": sum(1 for line in retried if _LOCKED in line),
        "database_errors_logged": len(errors),
        "database_errors_logged_locked": sum(1 for line in errors if _LOCKED in line),
        "last_errors": dict(Counter((error or "")[:120] for _, error in rows if error)),
    }


def run_triage(
    models_from: Path | None,
    *,
    slim: bool = False,
    studies: int = 12,
    interval_s: float = 5.0,
    stable_seconds: float = 2.0,
    timeout_s: float = 900.0,
    database: str = "sqlite",
    shadow: bool = False,
) -> dict[str, Any]:
    """Stream ``studies`` studies through a fresh platform; return the result document.

    Parameters
    ----------
    models_from
        A ``RADCLOUD_HOME`` whose production models are copied (``make demo`` trains them).
    slim
        Instead, register slim random-weight models of both tasks (``--quick``: the platform's
        path is measured, not the models; :mod:`benchmarks._models`).
    studies, interval_s
        Studies sent, alternating head CT and chest radiograph, one every ``interval_s``.
    stable_seconds
        The gateway's completeness wait.
    timeout_s
        How long to wait for every result.
    database
        ``sqlite`` (the embedded default) or ``postgresql`` (radcloud's managed server).
    shadow
        Run a shadow version of each model of the same size beside production
        (:func:`_add_shadows`); the document gets each model's shadow comparison.
    """
    from core.db import Database

    with scratch_platform(
        database,
        models_from=models_from,
        slim=slim,
        sender_ae=_AE,
        prefix="radcloud-triage-",
        gateway_stable_seconds=stable_seconds,
    ) as platform:
        settings = platform.settings
        shadowed = (
            _add_shadows(settings.paths.models_dir, slim or models_from is None) if shadow else []
        )
        db = Database.from_settings(settings)
        sent: dict[str, str] = {}
        try:
            started = time.monotonic()
            for index in range(studies):
                uid, task = send_study(platform, index)
                sent[uid] = task
                time.sleep(max(0.0, started + (index + 1) * interval_s - time.monotonic()))
            records = wait_for_results(db, sent, timeout_s)
            elapsed = time.monotonic() - started
            contention = _contention(db, sent, settings.paths.log_dir)
            comparisons = shadow_comparisons(db, shadowed, sent)
        finally:
            db.dispose()
    succeeded = [r for r in records if r["status"] == "succeeded"]
    summary = timing_percentiles(succeeded)
    by_task = {
        task: percentiles([float(r["time_to_triage_s"]) for r in succeeded if r["task"] == task])
        for task in ("head-ct", "chest-xr")
    }
    return {
        "suite": "e2e-triage",
        "machine": describe_machine(),
        "parameters": {
            "database": database,
            "studies": studies,
            "interval_s": interval_s,
            "gateway_stable_seconds": stable_seconds,
            "models": "slim random-weight models (--quick)"
            if slim or models_from is None
            else f"production models of {models_from}",
            "data": "SYNTHETIC head CT and chest radiographs, alternating",
            "shadow": shadow,
        },
        "records": records,
        "summary": summary,
        "time_to_triage_by_task": by_task,
        "studies_per_minute": 60.0 * len(succeeded) / elapsed,
        "failed": len(records) - len(succeeded),
        "contention": contention,
        "shadow": comparisons,
    }


def register_candidates(models_dir: Path, slim: bool) -> dict[str, int]:
    """Register a random-weight version of each benchmark model's architecture (slim or not) as
    the next version, leaving production as it was; return each model's new version."""
    from benchmarks._models import register_models
    from models.registry import ModelRegistry

    registry = ModelRegistry(models_dir)
    candidates = {}
    for model in register_models(models_dir, slim=slim).values():
        registry.rollback(model.name)  # register_models promotes: production goes back
        candidates[model.name] = model.version
    return candidates


def _add_shadows(models_dir: Path, slim: bool) -> list[str]:
    """Make a random-weight candidate of each benchmark model (:func:`register_candidates`) its
    shadow; return the names."""
    from models.registry import ModelRegistry

    registry = ModelRegistry(models_dir)
    candidates = register_candidates(models_dir, slim)
    for name, version in candidates.items():
        registry.set_shadow(name, version)
    return list(candidates)


def shadow_comparisons(db: Any, names: list[str], sent: dict[str, str]) -> dict[str, Any]:
    """Each shadowed model's comparison (``radcloud models compare``) once its shadow rows are
    in (a study's shadow runs right after its result row is stored)."""
    from serving.shadow import compare_shadow

    found: dict[str, Any] = {}
    for name in names:
        deadline = time.monotonic() + 60.0
        while True:
            result = compare_shadow(db, name)
            if result.studies + result.failed + result.shed >= len(sent) // 2:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(1.0)
        found[name] = result.to_json()
    return found


def run_shadow_budget(
    models_from: Path | None, *, repeats: int, slim: bool, studies: int, interval_s: float
) -> dict[str, Any]:
    """The same stream without and with a shadow, ``repeats`` times alternating; the ratio of
    the median time-to-triage p95 with a shadow to the one without."""
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for repeat in range(repeats):
        for arm, done in runs.items():
            logger.warning("run %d of %d %s a shadow", repeat + 1, repeats, arm)
            done.append(
                run_triage(
                    models_from,
                    slim=slim,
                    studies=studies,
                    interval_s=interval_s,
                    shadow=arm == "with",
                )
            )
    p95 = {
        arm: statistics.median(r["summary"]["time_to_triage_s"]["p95"] for r in done)
        for arm, done in runs.items()
    }
    p50 = {
        arm: statistics.median(r["summary"]["time_to_triage_s"]["p50"] for r in done)
        for arm, done in runs.items()
    }
    return {
        "suite": "e2e-triage-shadow",
        "machine": describe_machine(),
        "parameters": {
            "repeats": repeats,
            "studies": studies,
            "interval_s": interval_s,
            "models": "slim random-weight models"
            if slim
            else f"production models of {models_from}",
            "shadow": "the same architecture, random weights, as each model's next version",
            "data": "SYNTHETIC head CT and chest radiographs, alternating",
        },
        "time_to_triage_p50_s": p50,
        "time_to_triage_p95_s": p95,
        "p95_with_over_without": p95["with"] / p95["without"] if p95["without"] else None,
        "runs": runs,
    }


def run_engines(
    models_from: Path | None,
    engines: list[str],
    *,
    repeats: int,
    slim: bool,
    studies: int,
    interval_s: float,
) -> dict[str, Any]:
    """The same stream on each engine in turn, ``repeats`` times (alternating, so drift in the
    machine's load falls on both); every run, and per engine the medians."""
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
    for repeat in range(repeats):
        for engine in engines:
            logger.warning("run %d of %d on %s", repeat + 1, repeats, engine)
            runs[engine].append(
                run_triage(
                    models_from, slim=slim, studies=studies, interval_s=interval_s, database=engine
                )
            )

    def median(engine: str, pick: Any) -> float | None:
        values = [v for v in (pick(run) for run in runs[engine]) if v is not None]
        return statistics.median(values) if values else None

    medians = {
        engine: {
            "studies_per_minute": median(engine, lambda r: r["studies_per_minute"]),
            "time_to_triage_p95_s": median(
                engine, lambda r: r["summary"]["time_to_triage_s"].get("p95")
            ),
            "time_to_triage_max_s": median(
                engine, lambda r: r["summary"]["time_to_triage_s"].get("max")
            ),
            "time_to_triage_p50_s": median(
                engine, lambda r: r["summary"]["time_to_triage_s"].get("p50")
            ),
            "database_errors_logged_locked": median(
                engine, lambda r: r["contention"]["database_errors_logged_locked"]
            ),
            "events_retried": median(engine, lambda r: r["contention"]["events_retried"]),
            "failed": median(engine, lambda r: r["failed"]),
        }
        for engine in engines
    }
    ratios: dict[str, float] = {}
    if set(_ENGINES) <= set(engines):
        base, scale = medians["sqlite"], medians["postgresql"]
        for key in ("studies_per_minute", "time_to_triage_p95_s"):
            low, high = base[key], scale[key]
            if low and high is not None:
                ratios[f"{key}_postgresql_over_sqlite"] = high / low
    return {
        "suite": "e2e-triage-engines",
        "machine": describe_machine(),
        "parameters": {
            "engines": engines,
            "repeats": repeats,
            "studies": studies,
            "interval_s": interval_s,
            "models": "slim random-weight models"
            if slim
            else f"production models of {models_from}",
            "data": "SYNTHETIC head CT and chest radiographs, alternating",
        },
        "medians": medians,
        "ratios": ratios,
        "runs": runs,
    }


def markdown(result: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    lines = ["| stage | p50 s | p95 s | min s | max s |", "|---|---:|---:|---:|---:|"]
    for key, values in result["summary"].items():
        if values:
            lines.append(
                f"| {key.removesuffix('_s')} | {values['p50']:.2f} | {values['p95']:.2f} | "
                f"{values['min']:.2f} | {values['max']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Command line entry point."""
    from core.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-from", type=Path, default=None, help="RADCLOUD_HOME with models")
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between studies")
    parser.add_argument(
        "--quick", action="store_true", help="slim random-weight models, 4 studies, 1 s apart"
    )
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument(
        "--database",
        default=None,
        help="sqlite, postgresql, or both comma-separated (each run in turn, --repeats times)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per engine (--database)")
    parser.add_argument("--slim", action="store_true", help="slim random-weight models")
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="run without and with a shadow of each model (--repeats times): time-to-triage p95",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    home = args.models_from or load_settings().home
    studies, interval = (4, 1.0) if args.quick else (args.studies, args.interval)
    runs: dict[str, Any] = {  # the options --shadow and --database share
        "repeats": args.repeats,
        "slim": args.quick or args.slim,
        "studies": studies,
        "interval_s": interval,
    }
    if args.shadow:
        document = run_shadow_budget(home, **runs)
        path = write_result("e2e-triage-shadow", "cpu", document, args.out)
        print(
            json.dumps(
                {
                    key: document[key]
                    for key in (
                        "time_to_triage_p50_s",
                        "time_to_triage_p95_s",
                        "p95_with_over_without",
                    )
                },
                indent=2,
            )
        )
        print(f"written to {path}")
        return
    if args.database is not None:
        engines = [e.strip() for e in args.database.split(",") if e.strip()]
        unknown = sorted(set(engines) - set(_ENGINES))
        if unknown or not engines:
            parser.error(f"--database: {', '.join(unknown) or 'none'}; choose from {_ENGINES}")
        document = run_engines(home, engines, **runs)
        path = write_result("e2e-triage-engines", "cpu", document, args.out)
        print(json.dumps({"medians": document["medians"], "ratios": document["ratios"]}, indent=2))
        print(f"written to {path}")
        return
    result = run_triage(home, slim=args.quick, studies=studies, interval_s=interval)
    path = write_result("e2e-triage", "cpu", result, args.out)
    print(markdown(result))
    print(f"{result['studies_per_minute']:.1f} studies/min; written to {path}")


if __name__ == "__main__":
    main()
