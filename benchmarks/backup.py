"""A full backup against an incremental one (``radcloud backup``, :mod:`core.backup`).

A scratch plain Orthanc (temporary ``RADCLOUD_HOME``, free ports) is filled through the archive
seam with small synthetic CT slices (128x128, about 33 kB, studies of 50). Each repetition
then takes a full backup (every instance fetched, ``--full``), an incremental one right after
(nothing changed: every file hard-linked from the full one after its sha256 is checked), and,
once 10 % more instances were stored, another incremental one (those fetched, the rest
linked). Each backup's wall time is split as :func:`core.backup.create_backup` measures it
(database, archive, total).

Run: ``python -m benchmarks.backup [--instances 2000] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from benchmarks._env import describe_machine, scratch_settings, summarise, write_result
from core.archive import OrthancArchive, open_archive
from core.backup import create_backup
from core.db import Database, upgrade
from core.secrets import load_secrets
from imaging.synthetic import ct_slice
from radcloud.services import Supervisor, orthanc_component

__all__ = ["run_backup"]

logger = logging.getLogger(__name__)

_SLICE_SIZE = 128
_STUDY = 50


def _fill(archive: OrthancArchive, count: int, seed: int) -> None:
    """Store ``count`` new slices, in studies of 50."""
    study = series = ""
    for number in range(count):
        if number % _STUDY == 0:
            study, series = generate_uid(), generate_uid()
        archive.store_instance(
            ct_slice(study, series, instance_number=number + 1, size=_SLICE_SIZE, seed=seed)
        )


def _timed(
    settings: Any, db: Database, archive: OrthancArchive, out: Path, *, full: bool
) -> dict[str, Any]:
    started = time.monotonic()
    result = create_backup(settings, db, archive, out, full=full)
    wall = time.monotonic() - started
    return {
        "wall_s": round(wall, 3),
        "timings_s": result.manifest.timings_s,
        "instances": result.manifest.counts["instances"],
        "fetched": result.fetched,
        "linked": result.linked,
    }


def run_backup(instances: int, repeats: int, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the result."""
    home = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    settings = scratch_settings(home)
    secrets = load_secrets(settings)
    supervisor = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    supervisor.up()
    db = Database.from_settings(settings)
    upgrade(db)
    runs: dict[str, list[dict[str, Any]]] = {"full": [], "unchanged": [], "ten_percent_new": []}
    try:
        with open_archive(settings, secrets, timeout_s=120) as archive:
            _fill(archive, instances, seed=1)
            for repeat in range(repeats):
                backups = home / f"backups-{repeat}"
                backups.mkdir()
                runs["full"].append(_timed(settings, db, archive, backups / "a", full=True))
                runs["unchanged"].append(_timed(settings, db, archive, backups / "b", full=False))
                _fill(archive, max(1, instances // 10), seed=repeat + 2)
                runs["ten_percent_new"].append(
                    _timed(settings, db, archive, backups / "c", full=False)
                )
                for name, values in runs.items():
                    logger.info("%s: %s", name, json.dumps(values[-1]))
                shutil.rmtree(backups)
    finally:
        db.dispose()
        supervisor.down()
        shutil.rmtree(home, ignore_errors=True)
    summary = {
        name: {
            "wall_s": summarise([r["wall_s"] for r in values]),
            "archive_s": summarise([r["timings_s"]["archive"] for r in values]),
            "instances": [r["instances"] for r in values],
            "fetched": [r["fetched"] for r in values],
            "linked": [r["linked"] for r in values],
        }
        for name, values in runs.items()
    }
    result = {
        "suite": "backup",
        "instances": instances,
        "repeats": repeats,
        "machine": describe_machine(),
        "summary": summary,
        "runs": runs,
    }
    result["path"] = str(write_result("backup", "cpu", result, out_dir))
    return result


def main() -> None:
    """Command line: ``python -m benchmarks.backup``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = run_backup(args.instances, args.repeats, out_dir=args.out)
    print(json.dumps(result["summary"], indent=2))
    print(f"\nresults: {result['path']}")


if __name__ == "__main__":
    main()
