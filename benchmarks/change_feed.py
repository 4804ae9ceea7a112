"""What following Orthanc's change feed costs Orthanc: storescu straight into Orthanc with and
without the study tracker (:mod:`dicom_gateway.completeness`) following it.

A scratch Orthanc (temporary ``RADCLOUD_HOME``, free ports) takes small synthetic CT slices
(128x128, about 33 kB, studies of 50, fresh UIDs every run) from dcmtk's storescu with 1 and 4
associations. In ``follower`` runs a :class:`~dicom_gateway.completeness.StudyTracker` runs in
this process over a scratch database in which every study was claimed (as the ingest edge
claims them), checking once a second as in the gateway; in ``none`` runs nothing reads Orthanc.
Each run counts Orthanc's CPU time (its process, from /proc) from before the push until two
seconds after storescu ended (the tracker has then read the feed to its end and announced
nothing yet: the quiet time is longer), the push's wall time, the tracker's own CPU time, and the
requests the tracker made, by seam method. Modes alternate on each repetition.

Run: ``python -m benchmarks.change_feed [--instances 500] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._env import describe_machine, free_ports, summarise, write_result
from benchmarks.ingest import _corpus, _cpu_seconds, _send_parallel
from core.archive import ImageArchive, open_archive
from core.audit import AuditTrail
from core.config import load_settings
from core.db import Database, upgrade
from core.db.models import ChangeCursor
from core.secrets import load_secrets
from dicom_gateway.completeness import CURSOR_NAME, StudyTracker
from dicom_gateway.dcmtk import storescu
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.validation import inspect_instance
from radcloud.services import DicomModality, Supervisor, orthanc_component

__all__ = ["run_change_feed"]

logger = logging.getLogger(__name__)

_AE = "BENCH"
_SETTLE_S = 2.0


class _Counting:
    """The archive, counting the tracker's calls by method (each is one request, as the
    tracker uses them: get_resources of at most 1000 keys)."""

    def __init__(self, archive: ImageArchive) -> None:
        self._archive = archive
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._archive, name)
        if not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return target(*args, **kwargs)

        return counted


def _claim(db: Database, audit: AuditTrail, files: list[Path]) -> None:
    ownership = StudyOwnership(db, audit)
    for path in files[::50]:  # the first slice of each study of 50
        info, _ = inspect_instance(path.read_bytes())
        ownership.admit(info, "Benchmark", sender=_AE, source="dimse")


def _one_run(
    settings: Any, orthanc_pid: int, files: list[Path], associations: int, follow: bool
) -> dict[str, Any]:
    secrets = load_secrets(settings)
    work = Path(tempfile.mkdtemp(prefix="feed-db-"))
    db = Database(f"sqlite:///{work / 'app.db'}")
    upgrade(db)
    archive = open_archive(settings, secrets)
    counting = _Counting(archive)
    tracker = StudyTracker(db, counting, stable_seconds=600, pending_studies=set)
    if follow:
        _claim(db, AuditTrail(db, "bench-audit-key-" + "k" * 32, "bench-chain"), files)
        tracker.start()
    counting.calls.clear()
    cpu_before, own_before = _cpu_seconds(orthanc_pid), time.process_time()
    start = time.perf_counter()

    def send(chunk: list[Path]) -> int:
        return len(
            storescu(
                chunk,
                host="127.0.0.1",
                port=settings.orthanc_dicom_port,
                calling_ae=_AE,
                called_ae=settings.orthanc_ae_title,
            ).stored
        )

    stored = _send_parallel(files, associations, send)
    wall = time.perf_counter() - start
    time.sleep(_SETTLE_S)
    orthanc_cpu = _cpu_seconds(orthanc_pid) - cpu_before
    own_cpu = time.process_time() - own_before
    tracker.stop()
    behind = archive.latest_change() - _position(db)
    archive.close()
    db.dispose()
    return {
        "stored": stored,
        "wall_s": wall,
        "orthanc_cpu_ms_per_instance": 1000 * orthanc_cpu / max(stored, 1),
        "tracker_cpu_ms_per_instance": 1000 * own_cpu / max(stored, 1) if follow else 0.0,
        "tracker_requests": dict(counting.calls),
        "tracker_requests_per_instance": sum(counting.calls.values()) / max(stored, 1),
        "feed_behind_after_settle": behind if follow else None,
    }


def _position(db: Database) -> int:
    """The tracker's committed position (0 when it never started)."""
    with db.session() as session:
        cursor = session.get(ChangeCursor, CURSOR_NAME)
        return cursor.position if cursor is not None else 0


def run_change_feed(instances: int, repeats: int, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the result."""
    home = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    http, dicom, api, gateway, metrics = free_ports(5)
    settings = load_settings(
        home=home,
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
        gateway_metrics_port=metrics,
    )
    secrets = load_secrets(settings)
    modality = DicomModality(_AE, "127.0.0.1", 104)
    supervisor = Supervisor(
        settings, [orthanc_component(settings, secrets, {"bench": modality}, as_edge=False)]
    )
    supervisor.up()
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        pid = int((settings.paths.run_dir / "orthanc.pid").read_text().split()[0])
        number = 0
        for repeat in range(repeats):
            for associations in (1, 4):
                modes = (False, True) if repeat % 2 == 0 else (True, False)
                for follow in modes:
                    number += 1
                    files = _corpus(home / f"corpus-{number}", instances, number)
                    key = f"{associations}-{'follower' if follow else 'none'}"
                    run = _one_run(settings, pid, files, associations, follow)
                    logger.info("%s: %s", key, json.dumps(run))
                    runs.setdefault(key, []).append(run)
    finally:
        supervisor.down()
    summary = {
        key: {
            "orthanc_cpu_ms_per_instance": summarise(
                [r["orthanc_cpu_ms_per_instance"] for r in values]
            ),
            "wall_s": summarise([r["wall_s"] for r in values]),
            "tracker_cpu_ms_per_instance": summarise(
                [r["tracker_cpu_ms_per_instance"] for r in values]
            ),
            "tracker_requests_per_instance": summarise(
                [r["tracker_requests_per_instance"] for r in values]
            ),
        }
        for key, values in runs.items()
    }
    result = {
        "suite": "change_feed",
        "instances": instances,
        "repeats": repeats,
        "machine": describe_machine(),
        "summary": summary,
        "runs": runs,
    }
    result["path"] = str(write_result("change-feed", "cpu", result, out_dir))
    return result


def main() -> None:
    """Command line: ``python -m benchmarks.change_feed``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = run_change_feed(args.instances, args.repeats, out_dir=args.out)
    print(json.dumps(result["summary"], indent=2))
    print(f"\nresults: {result['path']}")


if __name__ == "__main__":
    main()
