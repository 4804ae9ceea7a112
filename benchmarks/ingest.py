"""Ingest benchmark: dcmtk storescu straight into Orthanc vs. through radcloud's gateway.

One scratch radcloud (temporary ``RADCLOUD_HOME``, free ports) runs Orthanc and the gateway. The
same kind of corpus (synthetic CT slices, fresh UIDs for every run so nothing is a duplicate) is
sent with storescu (``TCP_NODELAY=1``) with 1 and with 4 parallel associations:

- ``direct``: to Orthanc's DICOM port (AE ``BENCH`` registered there);
- ``gateway``: to the gateway, which validates, fsyncs to its spool, acknowledges, and forwards;
- ``stow``: STOW-RS, ``POST /dicom-web/studies`` on radcloud's API (Ray Serve) with a ``pacs``
  bearer token, ``per_request`` instances per ``multipart/related`` request (one study of 50),
  one HTTP connection per "association"; the API validates and spools each instance through the
  gateway's intake and the gateway process forwards them. This needs the whole platform (the
  API's Ray Serve with its triage workers shares the CPUs), so it is optional (``stow``).

With ``edge="orthanc"`` (``--edge orthanc``) radcloud's DICOM edge is Orthanc's own DICOM server
with radcloud's policy in its Python plugin (``RADCLOUD_GATEWAY_EDGE=orthanc``), and the
baseline is a second, plain Orthanc started by the same component code with the same settings
and no plugin:

- ``direct``: to the plain Orthanc's DICOM port;
- ``edge``: to radcloud's port, answered by Orthanc with the plugin's checks (sender, UIDs,
  owner and patient of the study), while the gateway process follows Orthanc's change log for
  study completeness (its CPU is counted: it shares the cores);
- ``stow_direct``: STOW-RS straight into the plain Orthanc's DICOMweb plugin (basic auth), the
  same kind of requests as ``stow``;
- ``stow``: STOW-RS on radcloud's API, which hands the parts to the gateway in batches, and the
  gateway checks them and stores them with radcloud's Orthanc's own STOW-RS (no spool). The
  ratio is ``stow``/``stow_direct``.

With either edge, STOW-RS is also measured through the gateway's own door
(``dicom_gateway.stow_door``, ``gateway_stow_port``): ``stow_door``, the same requests with the
same ``pacs`` token as ``stow``, without Ray Serve's HTTP proxy and the API's hop to the
gateway; its ratio is ``stow_door``/``stow_direct`` (``stow_door``/``direct`` with the
pynetdicom edge). It replaces the diagnostic ``stow_gateway`` of earlier runs (batches posted to
the gateway's internal endpoint), which measured what such a door could reach.
``--stow-only`` skips the storescu targets.

Two times per run: until storescu finished (every instance acknowledged) and until Orthanc
holds every instance (``/statistics``). For ``direct`` they coincide; for the gateway the second
is the honest one, and the ratio gateway/direct is computed on it. Also recorded: the CPU time
each process (Orthanc, the gateway, storescu) used per instance, which shows where a 2-core
machine's time goes. Targets alternate order on
each repetition; medians of the repetitions are reported with min and max.

Run: ``radcloud bench --suite ingest`` or
``python -m benchmarks.ingest [--instances 400] [--repeats 3] [--no-stow] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from benchmarks._env import describe_machine, free_ports, scratch_settings, summarise, write_result
from core.archive import ImageArchive, OrthancArchive, open_archive
from core.archive.orthanc_peers import OrthancPeers
from core.audit import AuditTrail
from core.config import Settings, load_settings
from core.db import Database, upgrade
from core.db.models import OutboxEvent
from core.events import STUDY_READY
from core.secrets import load_secrets
from core.security import Actor
from dicom_gateway.dcmtk import storescu
from dicom_gateway.senders import SenderRegistry
from imaging.synthetic import ct_slice
from radcloud.services import (
    DicomModality,
    Supervisor,
    api_component,
    orthanc_component,
)
from radcloud.services.components import gateway_component

__all__ = ["markdown", "run_ingest"]

logger = logging.getLogger(__name__)

_AE = "BENCH"
_SLICE_SIZE = 128  # 128x128 16-bit: about 33 kB per instance, like pydicom's CT_small
_BOUNDARY = "radcloud-bench-boundary"
_STOW_TYPE = f'multipart/related; type="application/dicom"; boundary="{_BOUNDARY}"'
_STOW_HOSPITAL = "Benchmark"
_STABLE_S = 3.0  # a study is complete 3 s after its last instance (the default is 10 s)
_TO_PLAIN = ("direct", "stow_direct")  # the targets of the plain Orthanc in an edge run


def _corpus(directory: Path, count: int, run: int) -> list[Path]:
    """``count`` slices in studies of 50, with fresh UIDs."""
    directory.mkdir(parents=True)
    files = []
    for number in range(count):
        if number % 50 == 0:
            study, series = generate_uid(), generate_uid()
        data = ct_slice(study, series, instance_number=number + 1, size=_SLICE_SIZE, seed=run)
        path = directory / f"{number:05d}.dcm"
        path.write_bytes(data)
        files.append(path)
    return files


def _send_parallel(files: list[Path], associations: int, send: Callable[[list[Path]], int]) -> int:
    chunks = [files[i::associations] for i in range(associations)]
    stored = [0] * associations

    def worker(index: int) -> None:
        stored[index] = send(chunks[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(associations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(stored)


def _audit(db: Database, settings: Settings) -> AuditTrail:
    return AuditTrail.from_secrets(db, load_secrets(settings))


def _stow_token(settings: Settings) -> str:
    """A bearer token of a ``pacs`` user created for the benchmark."""
    from core.db.models import Role
    from core.security import Accounts, TokenService

    db = Database.from_settings(settings)
    try:
        Accounts(db, _audit(db, settings)).add_user(
            "bench-pacs", Role.PACS, hospitals=[_STOW_HOSPITAL], actor=Actor.cli()
        )
    finally:
        db.dispose()
    return TokenService(settings, load_secrets(settings).jwt_signing_key).issue(
        "bench-pacs", [Role.PACS]
    )


def _stow_body(paths: list[Path]) -> bytes:
    delimiter = f"--{_BOUNDARY}".encode()
    parts = [
        delimiter + b"\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n"
        for path in paths
    ]
    return b"".join(parts) + delimiter + b"--\r\n"


def _stow(
    url: str, per_request: int, *, token: str | None = None, auth: tuple[str, str] | None = None
) -> Callable[[list[Path]], int]:
    """A sender posting ``per_request`` instances per STOW-RS request to ``url`` (radcloud's
    API with a bearer ``token``, or an Orthanc's DICOMweb plugin with basic ``auth``); returns
    how many were stored (a request counts when answered 200, every instance referenced)."""
    import httpx

    def send(chunk: list[Path]) -> int:
        stored = 0
        headers = {"Content-Type": _STOW_TYPE, "Accept": "application/dicom+json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        with httpx.Client(headers=headers, auth=auth, timeout=300) as client:
            for start in range(0, len(chunk), per_request):
                part = chunk[start : start + per_request]
                answer = client.post(url, content=_stow_body(part))
                failed = answer.json().get("00081198", {}) if answer.status_code == 200 else {}
                if answer.status_code == 200 and not failed.get("Value"):
                    stored += len(part)
                else:
                    _log_failure(answer.status_code, answer.text, failed.get("Value") or [])
        return stored

    return send


def _log_failure(status: int, text: str, failed: list[dict[str, Any]]) -> None:
    """A STOW-RS request not wholly stored: its status, how many instances failed and each
    distinct failure (reason code and any text), so that a rare failure can be explained."""
    reasons: dict[str, int] = {}
    for item in failed:
        values = {tag: element.get("Value") for tag, element in item.items() if tag != "00081155"}
        key = json.dumps(values, sort_keys=True)
        reasons[key] = reasons.get(key, 0) + 1
    if not failed:
        logger.warning("stow: HTTP %d: %s", status, text[:2000])
        return
    for key, count in reasons.items():
        logger.warning("stow: HTTP %d: %d instances failed: %s", status, count, key[:2000])


def _stow_senders(
    settings: Settings, plain: Settings | None, per_request: int
) -> dict[str, Callable[[list[Path]], int]]:
    """The STOW-RS targets: ``stow`` (radcloud's API), ``stow_door`` (the gateway's door) and,
    in an edge run, ``stow_direct`` (the plain Orthanc's own STOW-RS)."""
    api = f"{settings.api_url}/dicom-web/studies"
    token = _stow_token(settings)
    senders = {"stow": _stow(api, per_request, token=token)}
    if settings.gateway_stow_url is not None:
        senders["stow_door"] = _stow(
            f"{settings.gateway_stow_url}/studies", per_request, token=token
        )
    if plain is not None:
        secrets = load_secrets(plain)
        senders["stow_direct"] = _stow(
            f"{plain.orthanc_url}/dicom-web/studies",
            per_request,
            auth=(secrets.orthanc_user, secrets.orthanc_password),
        )
    return senders


def _cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time a process and its live descendants have used (Linux /proc):
    the API's Ray Serve replicas are descendants of its process."""
    if pid is None:
        return 0.0
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent and child not in tree]
        tree.update(children)
        frontier += children
    return sum(ticks.get(member, 0) for member in tree) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


def _instances(orthanc: ImageArchive) -> int:
    return orthanc.get_statistics().instances


def _plain_orthanc(home: Path, bench: dict[str, DicomModality]) -> tuple[Settings, Supervisor]:
    """A second Orthanc, radcloud's configuration without its plugin: the edge's baseline."""
    settings = scratch_settings(home, gateway_edge="pynetdicom")
    component = orthanc_component(settings, load_secrets(settings), bench)
    return settings, Supervisor(settings, [component])


def _wait_for_peer(orthanc: ImageArchive, ae_title: str, timeout_s: float = 30.0) -> None:
    """Wait until the edge's plugin has mirrored the benchmark's sender into Orthanc."""
    if not isinstance(orthanc, OrthancArchive):
        raise TypeError("the Orthanc edge needs the Orthanc archive")
    peers = OrthancPeers(orthanc)
    deadline = time.monotonic() + timeout_s
    while not any(m.ae_title == ae_title for m in peers.list().values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the edge did not admit {ae_title} within {timeout_s:.0f} s")
        time.sleep(0.2)


def _one_run(
    settings: Settings,
    orthanc: ImageArchive,
    *,
    target: str,
    files: list[Path],
    associations: int,
    pids: dict[str, int | None],
    senders: dict[str, Callable[[list[Path]], int]] | None = None,
    direct: tuple[Settings, ImageArchive] | None = None,
    aftermath: Callable[[list[Path]], float] | None = None,
) -> dict[str, float]:
    """One run; ``senders``: how the STOW-RS targets send; ``direct``: the plain Orthanc of an
    edge run (its settings, its archive), which ``direct`` and ``stow_direct`` go to;
    ``aftermath``: waits, after a run through radcloud, until radcloud is done with its studies
    (:func:`_wait_for_aftermath`), outside the measurement."""
    through_radcloud = target not in _TO_PLAIN and not (target == "direct" and direct is None)
    if target in _TO_PLAIN and direct is not None:
        settings, orthanc = direct
    port, called = (
        (settings.orthanc_dicom_port, settings.orthanc_ae_title)
        if target == "direct"
        else (settings.gateway_port, settings.gateway_ae_title)
    )

    def storescu_send(chunk: list[Path]) -> int:
        report = storescu(chunk, host="127.0.0.1", port=port, calling_ae=_AE, called_ae=called)
        if report.failed:
            logger.warning("%s: %d failed, e.g. %s", target, len(report.failed), report.failed)
        return len(report.stored)

    send = (senders or {}).get(target, storescu_send)

    before = _instances(orthanc)
    cpu_before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    senders_before = _children_cpu_seconds()
    started = time.perf_counter()
    stored = _send_parallel(files, associations, send)
    acknowledged_s = time.perf_counter() - started
    if stored != len(files):
        raise RuntimeError(f"{target}: only {stored} of {len(files)} instances were stored")
    deadline = time.monotonic() + 600
    while _instances(orthanc) < before + len(files):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target}: Orthanc did not receive every instance in 600 s")
        time.sleep(0.02)
    in_orthanc_s = time.perf_counter() - started
    result = {
        "acknowledged_per_s": len(files) / acknowledged_s,
        "stored_per_s": len(files) / in_orthanc_s,
        "cpu_ms_per_instance_storescu": (_children_cpu_seconds() - senders_before)
        * 1000
        / len(files),
    }
    for name, pid in pids.items():
        used = _cpu_seconds(pid) - cpu_before[name]
        result[f"cpu_ms_per_instance_{name}"] = used * 1000 / len(files)
    if through_radcloud and aftermath is not None:
        result["aftermath_s"] = aftermath(files)
    return result


def _wait_for_aftermath(
    db: Database, files: list[Path], *, consumed: bool, timeout_s: float = 180.0
) -> float:
    """Wait until every study of ``files`` has its ``study.ready`` event (and, with the API
    running, consumed by triage), so that the work radcloud does after a study is complete
    (the completeness tracker, the event, triage's reads) does not fall into the next run's
    measurement; how long it took (the runs report it, it is not ingest)."""
    studies = {
        str(
            dcmread(
                path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]
            ).StudyInstanceUID
        )
        for path in files
    }
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        query = select(func.count()).where(
            OutboxEvent.topic == STUDY_READY, OutboxEvent.key.in_(studies)
        )
        if consumed:
            query = query.where(OutboxEvent.processed_at.is_not(None))
        with db.session() as session:
            if (session.scalar(query) or 0) >= len(studies):
                return time.monotonic() - started
        time.sleep(0.2)
    logger.warning(
        "%d studies: not every study.ready was %s in %g s",
        len(studies),
        "consumed" if consumed else "written",
        timeout_s,
    )
    return time.monotonic() - started


def _compare(
    samples: dict[str, list[dict[str, float]]],
    targets: tuple[str, ...],
    associations: tuple[int, ...],
    baselines: dict[str, str],
) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """The medians of every metric, each target's ratio to its baseline (medians), and the
    ratios of the same repetition's runs, back to back: the least noisy comparison on a shared
    machine."""
    summary: dict[str, Any] = {}
    for key, runs in samples.items():
        summary[key] = {metric: summarise([run[metric] for run in runs]) for metric in runs[0]}
    ratios = {
        f"{target}/{baselines[target]} x{count}": summary[f"{target}/{count}"]["stored_per_s"][
            "median"
        ]
        / summary[f"{baselines[target]}/{count}"]["stored_per_s"]["median"]
        for target in targets
        if target in baselines and baselines[target] in targets
        for count in associations
    }
    paired = {
        name.replace(" x", " paired x"): summarise(
            [
                run["stored_per_s"] / base["stored_per_s"]
                for run, base in zip(
                    samples[f"{name.split('/')[0]}/{count}"],
                    samples[f"{name.split('/')[1].split(' ')[0]}/{count}"],
                    strict=True,
                )
            ]
        )
        for name in ratios
        for count in [int(name.rsplit("x", 1)[1])]
    }
    return summary, ratios, paired


def run_ingest(
    instances: int = 400,
    repeats: int = 3,
    associations: tuple[int, ...] = (1, 4),
    out_dir: Path | None = None,
    *,
    stow: bool = True,
    dimse: bool = True,
    per_request: int = 50,
    write: bool = True,
    edge: str = "pynetdicom",
) -> dict[str, Any]:
    """Measure ingest throughput direct vs. through the gateway (and STOW-RS); return the result.

    Parameters
    ----------
    instances
        Instances per run.
    repeats
        Repetitions of each (target, associations) pair; medians are reported.
    associations
        Numbers of parallel storescu associations to measure.
    out_dir
        Where to write the JSON result (default ``benchmarks/results``).
    stow
        Also measure STOW-RS through the API (starts Ray Serve too) and the gateway's door,
        and, with ``edge="orthanc"``, into the plain Orthanc's own STOW-RS.
    dimse
        Measure storescu (``False``: STOW-RS only).
    per_request
        Instances per STOW-RS request.
    write
        Write ``<date>-<host>-cpu-ingest.json`` (the harness writes its own report instead).
    edge
        ``pynetdicom`` (the gateway process answers DICOM) or ``orthanc`` (Orthanc's DICOM
        server with radcloud's plugin, against a plain Orthanc; no STOW-RS).
    """
    if edge not in {"pynetdicom", "orthanc"}:
        raise ValueError(f'edge "{edge}": pynetdicom or orthanc')
    with tempfile.TemporaryDirectory(prefix="radcloud-bench-") as tmp:
        ports = free_ports(6)
        settings = load_settings(
            home=Path(tmp) / "home",
            api_port=ports[0],
            gateway_port=ports[1],
            gateway_metrics_port=ports[2],
            orthanc_http_port=ports[3],
            orthanc_dicom_port=ports[4],
            gateway_stow_port=ports[5],
            log_level="WARNING",
            gateway_edge=edge,
            gateway_stable_seconds=_STABLE_S,
        )
        secrets = load_secrets(settings)
        bench = {"bench": DicomModality(_AE, "127.0.0.1", 104)}
        db = Database.from_settings(settings)
        upgrade(db)
        SenderRegistry(db, _audit(db, settings), edge=settings.gateway_edge).add_sender(
            _AE, "Benchmark", "127.0.0.1", actor=Actor.cli()
        )
        supervisor = Supervisor(
            settings,
            [
                orthanc_component(settings, secrets, bench if edge == "pynetdicom" else {}),
                gateway_component(settings),
                *([api_component(settings)] if stow else []),
            ],
        )
        plain = _plain_orthanc(Path(tmp) / "plain", bench) if edge == "orthanc" else None
        supervisor.up()
        if plain is not None:
            plain[1].up()
        through = "gateway" if edge == "pynetdicom" else "edge"
        senders = _stow_senders(settings, plain[0] if plain else None, per_request) if stow else {}
        targets = (("direct", through) if dimse else ()) + tuple(senders)
        orthanc = open_archive(settings, secrets)
        direct = (plain[0], open_archive(plain[0], load_secrets(plain[0]))) if plain else None
        pids = {status.name: status.pid for status in supervisor.status()}
        if plain is not None:
            pids["orthanc_direct"] = plain[1].status()[0].pid
            _wait_for_peer(orthanc, _AE)
        samples: dict[str, list[dict[str, float]]] = {}
        try:
            for repeat in range(repeats):
                for count in associations:
                    order = targets if repeat % 2 == 0 else targets[::-1]
                    for target in order:
                        corpus = Path(tmp) / f"corpus-{repeat}-{count}-{target}"
                        files = _corpus(corpus, instances, run=repeat)
                        measured = _one_run(
                            settings,
                            orthanc,
                            target=target,
                            files=files,
                            associations=count,
                            pids=pids,
                            senders=senders,
                            direct=direct,
                            aftermath=lambda sent: _wait_for_aftermath(db, sent, consumed=stow),
                        )
                        samples.setdefault(f"{target}/{count}", []).append(measured)
                        logger.info("%s x%d: %s", target, count, measured)
        except BaseException:
            kept = shutil.copytree(
                settings.home / "logs", mkdtemp(prefix="radcloud-bench-logs-"), dirs_exist_ok=True
            )
            logger.error("the run failed: its services' logs are kept in %s", kept)
            raise
        finally:
            orthanc.close()
            db.dispose()
            supervisor.down()
            if plain is not None and direct is not None:
                direct[1].close()
                plain[1].down()
    stow_baseline = dict.fromkeys(("stow", "stow_door"), "stow_direct" if plain else "direct")
    summary, ratios, paired = _compare(
        samples, targets, associations, {through: "direct", **stow_baseline}
    )
    result: dict[str, Any] = {
        "suite": "ingest",
        "machine": describe_machine(),
        "parameters": {
            "edge": edge,
            "baseline": "a plain Orthanc, same settings, no plugin"
            if edge == "orthanc"
            else "the same Orthanc's own DICOM port",
            "instances": instances,
            "repeats": repeats,
            "associations": list(associations),
            "instance": f"synthetic CT {_SLICE_SIZE}x{_SLICE_SIZE} int16, explicit VR LE",
            "targets": list(targets),
            "stow_instances_per_request": per_request if stow else None,
            "gateway_stable_seconds": _STABLE_S,
            "between_runs": "after a run through radcloud, until every study's study.ready is "
            "written (and consumed by triage when the API runs): aftermath_s, not measured",
        },
        "samples": samples,
        "summary": summary,
        "ratios": ratios,
        "paired_ratios": paired,
        "goal": f"{through}/direct and stow/{stow_baseline['stow']} (or stow_door) >= 0.8 "
        "(instances stored in Orthanc per second)",
    }
    if write:
        result["path"] = str(write_result("ingest", "cpu", result, out_dir))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table."""
    lines = [
        "| target | associations | acknowledged/s (median, min-max) "
        "| in Orthanc/s (median, min-max) |",
        "|---|---|---|---|",
    ]
    for key, metrics in sorted(result["summary"].items()):
        target, count = key.split("/")
        ack, stored = metrics["acknowledged_per_s"], metrics["stored_per_s"]
        lines.append(
            f"| {target} | {count} | {ack['median']:.0f} ({ack['min']:.0f}-{ack['max']:.0f}) "
            f"| {stored['median']:.0f} ({stored['min']:.0f}-{stored['max']:.0f}) |"
        )
    names = [
        n
        for n in ("orthanc", "orthanc_direct", "gateway", "api", "storescu")
        if any(f"cpu_ms_per_instance_{n}" in m for m in result["summary"].values())
    ]
    lines.append(
        "\n| target | associations | CPU ms per instance: "
        + " | ".join(
            n if n != "storescu" else "sender (storescu; httpx in-process: 0)" for n in names
        )
        + " |"
    )
    lines.append("|---|---|" + "---|" * len(names))
    for key, metrics in sorted(result["summary"].items()):
        target, count = key.split("/")
        cpu = [metrics.get(f"cpu_ms_per_instance_{n}", {}).get("median", 0.0) for n in names]
        lines.append(f"| {target} | {count} | " + " | ".join(f"{c:.2f}" for c in cpu) + " |")
    for name, ratio in result["ratios"].items():
        lines.append(f"\n{name}: **{ratio:.2f}**")
    for name, spread in result.get("paired_ratios", {}).items():
        lines.append(
            f"\n{name} (per repetition): {spread['median']:.2f} "
            f"({spread['min']:.2f}-{spread['max']:.2f})"
        )
    return "\n".join(lines)


def main() -> None:
    """Command line: ``python -m benchmarks.ingest``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-stow", action="store_true", help="skip STOW-RS (no Ray Serve)")
    parser.add_argument("--stow-only", action="store_true", help="skip storescu")
    parser.add_argument("--quick", action="store_true", help="40 instances, 1 repeat")
    parser.add_argument(
        "--edge",
        choices=("pynetdicom", "orthanc"),
        default="pynetdicom",
        help="radcloud's DICOM edge: the gateway process, or Orthanc with radcloud's plugin",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.quick:
        args.instances, args.repeats = 40, 1
    result = run_ingest(
        args.instances,
        args.repeats,
        out_dir=args.out,
        stow=not args.no_stow,
        dimse=not args.stow_only,
        edge=args.edge,
    )
    print(markdown(result))
    print(f"\nresults: {result['path']}")


if __name__ == "__main__":
    main()
