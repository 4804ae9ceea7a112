"""Load that holds: studies pushed by four associations while radiologists read, measured.

``radcloud bench --suite load`` or
``python -m benchmarks.load [--instances 10000] [--associations 4] [--users 50]``
``[--database sqlite,postgresql] [--out DIR] [--quick]``

A bounded load run on loopback, not a timed test. For each profile in turn, a scratch radcloud
(:mod:`benchmarks._platform`, slim random-weight models) is started: ``sqlite`` is the embedded
default, ``postgresql`` the scale profile (radcloud's managed PostgreSQL for the application
database and Orthanc's index). Then, at once:

- ``associations`` dcmtk storescu senders push a SYNTHETIC corpus of ``instances`` instances
  (head CTs and chest radiographs of :mod:`imaging.synthetic`, each study cloned from a few
  generated ones with fresh UIDs) to the gateway, one association per study, as fast as they
  are answered; an instance is *acknowledged* when storescu reports its C-STORE a success;
- ``users`` simulated radiologists (locust, headless, in a process of their own:
  :mod:`benchmarks._load_users`) sign in and page the worklist, search with QIDO-RS and open
  studies (the viewer's manifest and the first frames), with 1-3 s of thought between actions;
- every second the resident memory (RSS) of every radcloud process is sampled (psutil), summed
  per component: Orthanc, the gateway, the API's Ray Serve driver, Ray's GCS, raylet, workers
  and other helpers, PostgreSQL, and the load tools (locust, storescu).

The users stop once every study sent has its final AI result and ``min_read_s`` have passed.
Reported per profile: instances acknowledged per second, studies triaged per minute, each
request kind's p50/p95 latency and failures, the requests per second, the memory series and
each component's peak; and whether anything was lost: every acknowledged instance is looked up
and retrieved through the archive seam (:mod:`core.archive`), and every study must have exactly
one final AI result, one worklist row and one ``study.ready`` event. With both profiles, their
figures side by side. The JSON goes to ``benchmarks/results/<date>-<host>-cpu-load.json`` with
a PNG of the memory over time.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from benchmarks._env import RESULTS_DIR, describe_machine, host_label, write_result
from benchmarks._load_memory import MemorySampler, plot_memory
from benchmarks._platform import ENGINES, scratch_platform

__all__ = ["QUICK", "REQUEST_KINDS", "markdown", "run_load", "run_profiles"]

logger = logging.getLogger(__name__)

QUICK: dict[str, Any] = {"instances": 40, "associations": 2, "users": 3, "min_read_s": 20.0}
"""``--quick``: a few studies and users (checks the suite's accounting, not the platform)."""

REQUEST_KINDS = ("sign in", "worklist page", "qido studies", "open study (manifest)", "frame")
"""What the simulated radiologists do (:mod:`benchmarks._load_users`), as the results name it."""

_AE = "BENCH_LOAD"
_PASSWORD = "bench-load-password"  # noqa: S105 - a scratch platform's throwaway accounts
_TEMPLATES = 4  # generated studies per task; the corpus clones them with fresh UIDs
_SEED = 777


@dataclass
class _Study:
    uid: str
    task: str
    paths: list[Path]
    sop_uids: dict[Path, str]
    acknowledged: list[str] = field(default_factory=list)


def _corpus(instances: int, directory: Path) -> list[_Study]:
    """SYNTHETIC studies of ``instances`` instances in all: head CTs and chest radiographs in
    turn (chest radiographs, one instance each, fill the rest), cloned from a few generated
    studies with fresh study, series and SOP instance UIDs and patient."""
    from imaging.synthetic import generate_study

    templates = {
        task: [generate_study(task, index, seed=_SEED).datasets for index in range(_TEMPLATES)]
        for task in ("head-ct", "chest-xr")
    }
    studies: list[_Study] = []
    left, number = instances, 0
    while left > 0:
        task = ("head-ct", "chest-xr")[number % 2]
        source = templates[task][number % _TEMPLATES]
        if len(source) > left:
            task, source = "chest-xr", templates["chest-xr"][number % _TEMPLATES]
        studies.append(_clone(source, task, number, directory / f"study-{number:05d}"))
        left -= len(source)
        number += 1
    return studies


def _clone(source: list[Any], task: str, number: int, folder: Path) -> _Study:
    folder.mkdir(parents=True)
    study_uid, series = generate_uid(), dict[str, str]()
    study = _Study(study_uid, task, [], {})
    for index, original in enumerate(source):
        dataset = copy.deepcopy(original)
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series.setdefault(original.SeriesInstanceUID, generate_uid())
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.PatientID = f"LOAD-{number:05d}"
        dataset.AccessionNumber = f"L{number:07d}"
        path = folder / f"{index:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        study.paths.append(path)
        study.sop_uids[path] = str(dataset.SOPInstanceUID)
    return study


def _push(settings: Any, studies: list[_Study], associations: int) -> dict[str, Any]:
    """Send every study with ``associations`` storescu senders at once, one association per
    study; record what each acknowledged."""
    from dicom_gateway.dcmtk import storescu

    work: queue.Queue[_Study] = queue.Queue()
    for study in studies:
        work.put(study)
    failures: list[str] = []

    def sender() -> None:
        while True:
            try:
                study = work.get_nowait()
            except queue.Empty:
                return
            report = storescu(
                study.paths,
                host="127.0.0.1",
                port=settings.gateway_port,
                calling_ae=_AE,
                called_ae=settings.gateway_ae_title,
            )
            study.acknowledged = [study.sop_uids[path] for path in report.stored]
            failures.extend(f"{path.name}: {status}" for path, status in report.failed.items())

    started = time.monotonic()
    threads = [threading.Thread(target=sender, name=f"storescu-{n}") for n in range(associations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    acknowledged = sum(len(study.acknowledged) for study in studies)
    return {
        "seconds": round(seconds, 1),
        "instances_sent": sum(len(study.paths) for study in studies),
        "instances_acknowledged": acknowledged,
        "acknowledged_per_s": acknowledged / seconds,
        "not_acknowledged": failures[:20],
    }


def _add_readers(settings: Any, users: int) -> list[str]:
    """``users`` radiologist accounts (platform operators: they see every study)."""
    from core.audit import AuditTrail
    from core.db import Database
    from core.db.models import Role
    from core.secrets import load_secrets
    from core.security import Accounts, Actor

    names = [f"bench-reader-{n:03d}" for n in range(users)]
    db = Database.from_settings(settings)
    try:
        accounts = Accounts(db, AuditTrail.from_secrets(db, load_secrets(settings)))
        for name in names:
            accounts.add_user(
                name, Role.RADIOLOGIST, _PASSWORD, platform_operator=True, actor=Actor.cli()
            )
    finally:
        db.dispose()
    return names


def _triage_state(db: Any, uids: list[str]) -> dict[str, dict[str, int]]:
    """Per study sent: its final AI results, worklist rows and ``study.ready`` events."""
    from sqlalchemy import func, select

    from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Study, WorklistItem
    from core.events import STUDY_READY

    state = {uid: {"results": 0, "worklist_rows": 0, "ready_events": 0} for uid in uids}
    with db.session() as session:
        counts = {
            "results": select(Study.study_instance_uid, func.count(InferenceResult.id))
            .join(InferenceResult, InferenceResult.study_id == Study.id)
            .where(InferenceResult.status != InferenceStatus.PENDING)
            .group_by(Study.study_instance_uid),
            "worklist_rows": select(Study.study_instance_uid, func.count(WorklistItem.id))
            .join(WorklistItem, WorklistItem.study_id == Study.id)
            .group_by(Study.study_instance_uid),
            "ready_events": select(OutboxEvent.key, func.count(OutboxEvent.id))
            .where(OutboxEvent.topic == STUDY_READY)
            .group_by(OutboxEvent.key),
        }
        for kind, statement in counts.items():
            for uid, count in session.execute(statement):
                if uid in state:
                    state[uid][kind] = int(count)
    return state


def _wait_for_triage(
    db: Any, uids: list[str], timeout_s: float
) -> tuple[dict[str, dict[str, int]], float | None]:
    """Poll until every study has a final result (or ``timeout_s``); the state and when."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = _triage_state(db, uids)
        if all(counts["results"] for counts in state.values()):
            return state, time.monotonic()
        if time.monotonic() > deadline:
            return state, None
        time.sleep(1.0)


def _retrievable(settings: Any, studies: list[_Study]) -> dict[str, Any]:
    """Look every acknowledged instance up in the archive and retrieve it (core.archive)."""
    from concurrent.futures import ThreadPoolExecutor
    from io import BytesIO

    from pydicom import dcmread

    from core.archive import open_archive
    from core.secrets import load_secrets

    archive = open_archive(settings, load_secrets(settings))
    missing: list[str] = []
    try:

        def check(study: _Study) -> tuple[int, list[str]]:
            if not study.acknowledged:
                return 0, []
            found = archive.search_for_studies({"StudyInstanceUID": study.uid})
            held: dict[str, Any] = {}
            for resource in found:
                for instance in archive.get_study_instances(resource.archive_id):
                    held[str(instance.attributes.get("SOPInstanceUID"))] = instance.archive_id
            retrieved, lost = 0, []
            for sop_uid in study.acknowledged:
                if sop_uid not in held:
                    lost.append(sop_uid)
                    continue
                data = dcmread(
                    BytesIO(archive.retrieve_instance(held[sop_uid])), stop_before_pixels=True
                )
                if str(data.SOPInstanceUID) == sop_uid:
                    retrieved += 1
                else:
                    lost.append(sop_uid)
            return retrieved, lost

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(check, studies))
    finally:
        archive.close()
    for _, lost in outcomes:
        missing.extend(lost)
    return {
        "acknowledged": sum(len(study.acknowledged) for study in studies),
        "retrieved": sum(retrieved for retrieved, _ in outcomes),
        "missing": missing[:20],
        "missing_count": len(missing),
    }


def _accounting(
    studies: list[_Study], state: dict[str, dict[str, int]], archive: dict[str, Any]
) -> dict[str, Any]:
    """Whether anything was lost: counts, and the studies that break a rule (at most 20 each)."""

    def breaking(kind: str) -> list[str]:
        return [uid for uid, counts in state.items() if counts[kind] != 1]

    rules = {kind: breaking(kind) for kind in ("results", "worklist_rows", "ready_events")}
    return {
        "studies_sent": len(studies),
        "studies_acknowledged": sum(1 for study in studies if study.acknowledged),
        "instances_sent": sum(len(study.paths) for study in studies),
        "instances_acknowledged": archive["acknowledged"],
        "instances_retrieved": archive["retrieved"],
        "instances_missing": archive["missing_count"],
        "missing_examples": archive["missing"],
        "studies_triaged_once": sum(1 for counts in state.values() if counts["results"] == 1),
        "studies_not_triaged_once": {kind: uids[:20] for kind, uids in rules.items() if uids},
        "nothing_lost": archive["missing_count"] == 0
        and archive["acknowledged"] == sum(len(study.paths) for study in studies)
        and not any(rules.values()),
    }


def _database_bytes(url: str) -> int:
    """The size of a database: the SQLite file with its write-ahead log, or PostgreSQL's
    ``pg_database_size``."""
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        return sum(f.stat().st_size for f in path.parent.glob(f"{path.name}*") if f.is_file())
    import sqlalchemy

    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            size = connection.scalar(sqlalchemy.text("SELECT pg_database_size(current_database())"))
    finally:
        engine.dispose()
    return int(size or 0)


def _footprint(settings: Any, instances: int, studies: int) -> dict[str, Any]:
    """What the run left on disk, per instance and per study (``docs/scaling.md`` sizes from
    it): Orthanc's index, its storage area, the application database and its rows."""
    import sqlalchemy

    from core.db import Database
    from core.db.models import AuditEvent, OutboxEvent
    from core.secrets import load_secrets
    from radcloud.services.orthanc import _index_url

    storage = settings.paths.orthanc_storage
    index_files = {"index", "index-wal", "index-shm"}
    files = [f for f in storage.rglob("*") if f.is_file()]
    stored = sum(f.stat().st_size for f in files if f.name not in index_files)
    if str(settings.orthanc_index) == "postgresql":
        index = _database_bytes(_index_url(settings, load_secrets(settings)))
    else:
        index = sum(f.stat().st_size for f in files if f.name in index_files)
    db = Database.from_settings(settings)
    try:
        with db.session() as session:
            audit = session.scalar(sqlalchemy.select(sqlalchemy.func.count(AuditEvent.seq))) or 0
            events = session.scalar(sqlalchemy.select(sqlalchemy.func.count(OutboxEvent.id))) or 0
            application = (
                _database_bytes(settings.sqlalchemy_url)
                if settings.sqlalchemy_url.startswith("sqlite")
                else int(
                    session.scalar(sqlalchemy.text("SELECT pg_database_size(current_database())"))
                    or 0
                )
            )
    finally:
        db.dispose()
    return {
        "orthanc_index_bytes": index,
        "orthanc_index_bytes_per_instance": index / max(instances, 1),
        "storage_bytes": stored,
        "storage_bytes_per_instance": stored / max(instances, 1),
        "application_database_bytes": application,
        "application_database_bytes_per_study": application / max(studies, 1),
        "audit_records": audit,
        "outbox_events": events,
    }


def _start_users(
    settings: Any, names: list[str], scratch: Path, users: int, max_seconds: float
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    accounts, stop, out = scratch / "accounts.json", scratch / "users.stop", scratch / "users.json"
    accounts.write_text(json.dumps({"names": names, "password": _PASSWORD}))
    command = [
        sys.executable,
        "-m",
        "benchmarks._load_users",
        f"--host={str(settings.api_url).rstrip('/')}",
        f"--accounts={accounts}",
        f"--users={users}",
        f"--spawn-rate={max(1.0, users / 10)}",
        f"--stop-file={stop}",
        f"--max-seconds={max_seconds}",
        f"--out={out}",
    ]
    log = (scratch / "users.log").open("wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent
    )
    return process, stop, out


def run_load(
    *,
    instances: int = 10_000,
    associations: int = 4,
    users: int = 50,
    database: str = "sqlite",
    corpus: Path | None = None,
    stable_seconds: float = 2.0,
    timeout_s: float = 3600.0,
    min_read_s: float = 60.0,
) -> dict[str, Any]:
    """One profile's load run; return its result document (see the module's docstring).

    Parameters
    ----------
    instances, associations, users
        The corpus's size, the parallel storescu senders, the simulated radiologists.
    database
        ``sqlite`` (the embedded default) or ``postgresql`` (the scale profile).
    corpus
        A directory to write the corpus in (default: a temporary one).
    stable_seconds
        The gateway's completeness wait.
    timeout_s
        How long to wait for every study's AI result after the last instance was sent.
    min_read_s
        The users read for at least this long, however soon the studies are triaged.
    """
    from core.db import Database

    with tempfile.TemporaryDirectory(prefix="radcloud-load-corpus-") as tmp:
        started = time.monotonic()
        studies = _corpus(instances, corpus or Path(tmp))
        corpus_s = time.monotonic() - started
        with scratch_platform(
            database,
            sender_ae=_AE,
            orthanc_index=True,
            prefix="radcloud-load-",
            gateway_stable_seconds=stable_seconds,
            signin_attempts_per_minute=max(30, 4 * users),  # every user from 127.0.0.1
        ) as platform:
            settings, scratch = platform.settings, platform.scratch
            engines = {
                "application_database": settings.sqlalchemy_url.split(":", 1)[0],
                "orthanc_index": str(settings.orthanc_index),
            }
            names = _add_readers(settings, users)
            sampler = MemorySampler(platform.supervisor)
            sampler.start()
            process, stop, out = _start_users(settings, names, scratch, users, timeout_s + 3600)
            db = Database.from_settings(settings)
            try:
                began = time.monotonic()
                pushed = _push(settings, studies, associations)
                state, done = _wait_for_triage(db, [s.uid for s in studies], timeout_s)
                time.sleep(max(0.0, began + min_read_s - time.monotonic()))
                stop.touch()
                process.wait(timeout=120)
                sampler.stop()
                archive = _retrievable(settings, studies)
                state = _triage_state(db, [s.uid for s in studies])
                footprint = _footprint(settings, instances, len(studies))
            finally:
                stop.touch()
                if process.poll() is None:
                    process.kill()
                sampler.stop()
                db.dispose()
            readers = json.loads(out.read_text()) if out.is_file() else {}
    triaged_s = None if done is None else done - began
    return {
        "suite": "load",
        "machine": describe_machine(),
        "parameters": {
            "database": database,
            "profile": "embedded default (SQLite)"
            if database == "sqlite"
            else "scale (managed PostgreSQL: application database and Orthanc's index)",
            "engines": engines,
            "instances": instances,
            "studies": len(studies),
            "associations": associations,
            "users": users,
            "think_time_s": [1.0, 3.0],
            "min_read_s": min_read_s,
            "gateway_stable_seconds": stable_seconds,
            "models": "slim random-weight models",
            "data": "SYNTHETIC head CTs and chest radiographs (cloned with fresh UIDs)",
            "corpus_s": round(corpus_s, 1),
        },
        "ingest": pushed,
        "triage": {
            "all_triaged": done is not None,
            "seconds": None if triaged_s is None else round(triaged_s, 1),
            "studies_per_minute": None if not triaged_s else 60.0 * len(studies) / triaged_s,
        },
        "readers": readers,
        "memory": sampler.document(),
        "footprint": footprint,
        "accounting": _accounting(studies, state, archive),
    }


def run_profiles(profiles: list[str], **options: Any) -> dict[str, Any]:
    """:func:`run_load` on each profile in turn, on the same corpus size; with both, the scale
    profile's figures over the embedded default's."""
    runs = {profile: run_load(database=profile, **options) for profile in profiles}
    for run in runs.values():
        run.pop("machine", None)
    comparison: dict[str, float] = {}
    if set(ENGINES) <= set(runs):
        base, scale = runs["sqlite"], runs["postgresql"]
        pairs: dict[str, Callable[[dict[str, Any]], float | None]] = {
            "acknowledged_per_s": lambda r: r["ingest"]["acknowledged_per_s"],
            "studies_per_minute": lambda r: r["triage"]["studies_per_minute"],
            "worklist_p95_ms": lambda r: _p95(r, "worklist page"),
            "qido_p95_ms": lambda r: _p95(r, "qido studies"),
            "manifest_p95_ms": lambda r: _p95(r, "open study (manifest)"),
            "frame_p95_ms": lambda r: _p95(r, "frame"),
            "peak_rss_total_mib": lambda r: r["memory"]["peak_total_mib"],
        }
        for key, pick in pairs.items():
            low, high = pick(base), pick(scale)
            if low and high is not None:
                comparison[f"{key}_postgresql_over_sqlite"] = high / low
    return {
        "suite": "load",
        "machine": describe_machine(),
        "profiles": profiles,
        "runs": runs,
        "comparison": comparison,
    }


def _p95(run: dict[str, Any], kind: str) -> float | None:
    latency = run["readers"].get("kinds", {}).get(kind, {}).get("latency_ms", {})
    p95 = latency.get("p95")
    return None if p95 is None else float(p95)


def markdown(document: dict[str, Any]) -> str:
    """Each profile's figures as a markdown table."""
    lines = [
        "| profile | instances/s acked | studies/min triaged | worklist p95 ms | QIDO p95 ms | "
        "manifest p95 ms | frame p95 ms | requests (failed) | peak RSS MiB | nothing lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for profile, run in document["runs"].items():
        kinds = run["readers"].get("kinds", {})
        requests = sum(kind["requests"] for kind in kinds.values())
        failed = sum(kind["failures"] for kind in kinds.values())
        cells = [_p95(run, k) for k in ("worklist page", "qido studies", "open study (manifest)")]
        cells.append(_p95(run, "frame"))
        spm = run["triage"]["studies_per_minute"]
        lines.append(
            f"| {profile} | {run['ingest']['acknowledged_per_s']:.1f} | "
            f"{'-' if spm is None else f'{spm:.1f}'} | "
            + " | ".join("-" if c is None else f"{c:.0f}" for c in cells)
            + f" | {requests} ({failed}) | {run['memory']['peak_total_mib']:.0f} | "
            f"{run['accounting']['nothing_lost']} |"
        )
    return "\n".join(lines)


def write(document: dict[str, Any], out_dir: Path | None) -> tuple[Path, Path]:
    """The JSON result and, beside it, the memory plot; their paths. A result of the same day
    and host is kept: the new one is numbered (``...-load-2.json``)."""
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    suite, number = "load", 1
    while ((out_dir or RESULTS_DIR) / f"{day}-{host_label()}-cpu-{suite}.json").exists():
        number += 1
        suite = f"load-{number}"
    path = write_result(suite, "cpu", document, out_dir)
    png = path.with_suffix(".png")
    plot_memory(
        document, png, f"Memory per component under load (SYNTHETIC, loopback): {path.stem}"
    )
    return path, png


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument(
        "--database", default="sqlite,postgresql", help="sqlite, postgresql, or both, in turn"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for triage")
    parser.add_argument("--quick", action="store_true", help="40 instances, 3 users, SQLite")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    profiles = [p.strip() for p in args.database.split(",") if p.strip()]
    unknown = sorted(set(profiles) - set(ENGINES))
    if unknown or not profiles:
        parser.error(f"--database: {', '.join(unknown) or 'none'}; choose from {ENGINES}")
    options: dict[str, Any] = (
        dict(QUICK)
        if args.quick
        else {"instances": args.instances, "associations": args.associations, "users": args.users}
    )
    document = run_profiles(
        ["sqlite"] if args.quick else profiles, timeout_s=args.timeout, **options
    )
    path, png = write(document, args.out)
    print(markdown(document))
    print(f"written to {path} and {png.name}")


if __name__ == "__main__":
    main()
