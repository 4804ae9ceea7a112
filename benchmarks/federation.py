"""Federation: cross-hospital search latency against the slowest node, and retrieval
throughput through radcloud against the owning node (issue 15's benchmark).

``radcloud bench --suite federation`` or ``python -m benchmarks.federation [--quick]``

A scratch federation (:mod:`benchmarks._federation_sites`): three remote nodes, each a plain
Orthanc with its DICOMweb plugin holding one SYNTHETIC study of the benchmark's patient (under
the national number) among ``filler_studies`` studies of other patients; one of them (``C``)
behind a small threaded proxy that adds ``delay_s`` (200 ms) to every request; two tenants of
radcloud (North, South) holding the patient's studies under local IDs; radcloud's HTTP API
under uvicorn in its own process, with a treatment context token for the patient.

**Query latency** (``latency``): in each of ``windows`` windows, ``per_window`` rounds, each
round timing in turn one QIDO-RS study search sent straight to every node (the same filters
and fields radcloud sends, over a keep-alive connection; the slow node through its proxy, as
radcloud reaches it) and one ``GET /api/federated/studies`` (treatment token). The slowest
node (by p50) is the baseline: the report gives the fan-out's overhead, federated p50 (p95)
minus the slowest node's p50 (p95), and the ratio of the two; per figure the median of the
windows' p50 with their min and max, and p50/p95 over all samples.

**Failing nodes** (``down``, ``silent``): a fourth node is registered while the API runs,
once at a port nothing listens on (connection refused) and once at a port that accepts and
never answers, with a read timeout of ``silent_timeout_s``; the federated answer time is
measured against its bound, the node's timeout plus the connect timeout.

**Retrieval** (``retrieval``): a SYNTHETIC CT of ``retrieval_instances`` slices of
``retrieval_matrix``\\ :sup:`2` pixels on node A, fetched whole by WADO-RS (``multipart/
related; type="application/dicom"``) ``repeats`` times, alternately from the node directly and
through radcloud (``GET /api/federated/hospitals/A/dicom-web/studies/{uid}``): MB/s and
instances/s each, and their ratio (goal >= 0.8). Skipped, with the reason, where the API has
no such route.

Loopback only; nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks._env import describe_machine, free_ports, percentiles, summarise, write_result
from benchmarks._federation_sites import (
    NATIONAL_ISSUER,
    Federation,
    SilentNode,
    encode,
    scratch_federation,
    study_instances,
)

__all__ = ["QUICK", "FederationConfig", "markdown", "plot", "run_federation"]

logger = logging.getLogger(__name__)

NODES = ("A", "B", "C")
SLOW = "C"
RETRIEVAL_NODE = "A"
RETRIEVAL_ROUTE = "/api/federated/hospitals/{hospital}/dicom-web/studies/{study_instance_uid}"
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
_QIDO_INCLUDE = ("IssuerOfPatientID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_LIMIT = 200  # the federated route's default limit per node, asked of the nodes directly too


@dataclass(frozen=True)
class FederationConfig:
    """The suite's sizes (defaults: a full run; :data:`QUICK`: a check of the suite)."""

    delay_s: float = 0.2  # added per request to the slow node
    filler_studies: int = 40  # other patients' studies per node
    windows: int = 5
    per_window: int = 20
    warmup: int = 5
    failing_samples: int = 5  # federated searches with a node down, and with one silent
    silent_timeout_s: float = 2.0  # the silent node's read timeout
    connect_timeout_s: float = 1.0  # radcloud's RADCLOUD_REMOTE_CONNECT_TIMEOUT_S
    retrieval_instances: int = 300
    retrieval_matrix: int = 512
    repeats: int = 11  # retrievals from each side (alternated; the median is reported)
    retrieval_warmup: int = 1


QUICK = FederationConfig(
    filler_studies=3,
    windows=2,
    per_window=3,
    warmup=1,
    failing_samples=1,
    silent_timeout_s=1.0,
    retrieval_instances=12,
    retrieval_matrix=64,
    repeats=2,
    retrieval_warmup=0,
)
"""``--quick``: tiny data and few samples (checks the suite, not the figures)."""


# -- data ------------------------------------------------------------------------------------


def _node_data(config: FederationConfig, national_id: str) -> tuple[dict[str, list[bytes]], str]:
    """Each node's instances (the patient's study among fillers; node A also the retrieval
    study) and the retrieval study's UID."""
    from benchmarks.viewer import synthetic_ct

    template = synthetic_ct(slices=1, matrix=64, seed=1)
    data: dict[str, list[bytes]] = {}
    for index, name in enumerate(NODES):
        studies = [
            study_instances(
                template,
                patient_id=national_id,
                issuer_of_patient_id=NATIONAL_ISSUER,
                patient_name="SYNTHETIC^PATIENT",
                study_date=f"2024010{index + 1}",
            )
        ]
        studies += [
            study_instances(
                template,
                patient_id=f"{name}-{n:04d}",
                patient_name=f"SYNTHETIC^FILLER{n}",
                study_date=f"2023{n % 12 + 1:02d}15",
            )
            for n in range(config.filler_studies)
        ]
        data[name] = [encode(ds) for study in studies for ds in study]
    big = study_instances(
        synthetic_ct(slices=config.retrieval_instances, matrix=config.retrieval_matrix, seed=2),
        patient_id=national_id,
        issuer_of_patient_id=NATIONAL_ISSUER,
        patient_name="SYNTHETIC^PATIENT",
        study_date="20250301",
    )
    data[RETRIEVAL_NODE] += [encode(ds) for ds in big]
    return data, str(big[0].StudyInstanceUID)


# -- query latency ---------------------------------------------------------------------------


def _federated_search(client: httpx.Client, token: str) -> Callable[[], dict[str, Any]]:
    def search() -> dict[str, Any]:
        answer = client.get("/api/federated/studies", headers={"Authorization": f"Bearer {token}"})
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body

    return search


def _direct_search(client: httpx.Client, national_id: str) -> Callable[[], Any]:
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("PatientID", national_id),
        ("IssuerOfPatientID", NATIONAL_ISSUER),
    ]
    params += [("includefield", name) for name in _QIDO_INCLUDE]
    params.append(("limit", str(_LIMIT)))

    def search() -> Any:
        answer = client.get("studies", params=params, headers={"Accept": "application/dicom+json"})
        answer.raise_for_status()
        return answer.json()

    return search


def _ms(call: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    value = call()
    return (time.perf_counter() - began) * 1000, value


def _states(body: dict[str, Any]) -> dict[str, str]:
    return {node["hospital"]: node["state"] for node in body["nodes"]}


def _figure(windows: list[list[float]]) -> dict[str, Any]:
    """Per window p50s summarised (median, min, max), and p50/p95 over every sample."""
    flat = [v for window in windows for v in window]
    return {
        "window_p50_ms": summarise([statistics.median(w) for w in windows]),
        "all_ms": percentiles(flat),
    }


def _latency(federation: Federation, config: FederationConfig) -> dict[str, Any]:
    token = federation.treatment_token()
    clients = {
        name: httpx.Client(
            base_url=federation.reached_at[name] + "/",
            auth=(node.username, node.password),
            timeout=60,
        )
        for name, node in federation.nodes.items()
    }
    api = httpx.Client(base_url=federation.api_url, timeout=120)
    try:
        calls: dict[str, Callable[[], Any]] = {
            f"direct:{name}": _direct_search(client, federation.national_id)
            for name, client in clients.items()
        }
        federated = _federated_search(api, token)
        calls["federated"] = federated
        for _ in range(config.warmup):
            for call in calls.values():
                call()
        samples: dict[str, list[list[float]]] = {name: [] for name in calls}
        seen: dict[str, list[float]] = {}  # per hospital: its search as radcloud timed it
        for _ in range(config.windows):
            for window in samples.values():
                window.append([])
            for _ in range(config.per_window):
                for name, call in calls.items():  # interleaved: drift hits all alike
                    elapsed, answer = _ms(call)
                    samples[name][-1].append(elapsed)
                    if name == "federated":
                        for node in answer["nodes"]:
                            seen.setdefault(node["hospital"], []).append(node["elapsed_ms"])
        last = federated()
    finally:
        for client in clients.values():
            client.close()
        api.close()
    states = _states(last)
    if any(state != "ok" for state in states.values()):
        raise RuntimeError(f"a node failed during the latency measurement: {states}")
    figures = {name: _figure(windows) for name, windows in samples.items()}
    direct = {name.removeprefix("direct:"): figures[name] for name in calls if name != "federated"}
    slowest = max(direct, key=lambda n: direct[n]["all_ms"]["p50"])
    base, fed = direct[slowest]["all_ms"], figures["federated"]["all_ms"]
    return {
        "nodes": {name: figures[f"direct:{name}"] for name in NODES},
        "federated": figures["federated"],
        "slowest_node": slowest,
        "overhead_ms": {"p50": fed["p50"] - base["p50"], "p95": fed["p95"] - base["p95"]},
        "ratio": {"p50": fed["p50"] / base["p50"], "p95": fed["p95"] / base["p95"]},
        "inside_radcloud_ms": {hospital: percentiles(v) for hospital, v in seen.items()},
        "answer": {
            "studies": len(last["studies"]),
            "partial": last["partial"],
            "nodes": last["nodes"],
        },
        "samples_ms": {name: windows for name, windows in samples.items()},
    }


def _failing(
    federation: Federation, config: FederationConfig, kind: str, url: str, timeout_s: float
) -> dict[str, Any]:
    """Federated searches with one more node that fails (``down`` or ``silent``)."""
    name = f"{kind.capitalize()}Node"
    federation.add_node(name, url, timeout_s=timeout_s)
    try:
        token = federation.treatment_token()
        with httpx.Client(base_url=federation.api_url, timeout=120) as api:
            search = _federated_search(api, token)
            times, answers = [], []
            for _ in range(config.failing_samples):
                elapsed, body = _ms(search)
                times.append(elapsed)
                answers.append(body)
    finally:
        federation.remove_node(name)
    states = [_states(body) for body in answers]
    bound_ms = (timeout_s + config.connect_timeout_s) * 1000
    return {
        "node": name,
        "url": url,
        "node_timeout_s": timeout_s,
        "connect_timeout_s": config.connect_timeout_s,
        "bound_ms": bound_ms,
        "ms": percentiles(times),
        "samples_ms": times,
        "within_bound": all(t <= bound_ms + 1000 for t in times),  # + the rest of the answer
        "failing_node_states": sorted({s.get(name, "absent") for s in states}),
        "other_nodes_ok": all(
            state == "ok" for s in states for hospital, state in s.items() if hospital != name
        ),
        "partial": all(body["partial"] for body in answers),
        "studies": [len(body["studies"]) for body in answers],
    }


# -- retrieval -------------------------------------------------------------------------------


def _boundary(content_type: str) -> bytes:
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip('"').encode()
    raise RuntimeError(f'answer "{content_type}" names no multipart boundary')


def _fetch(client: httpx.Client, url: str, headers: dict[str, str]) -> dict[str, float]:
    """One whole WADO-RS retrieval, streamed and counted (never buffered): seconds, bytes of
    the multipart body, parts."""
    began = time.perf_counter()
    with client.stream("GET", url, headers=headers | {"Accept": DICOM_MULTIPART}) as answer:
        if answer.status_code != 200:
            answer.read()
            raise RuntimeError(f"GET {url} answered {answer.status_code}: {answer.text[:300]}")
        marker = b"--" + _boundary(answer.headers["content-type"])
        size, markers, tail = 0, 0, b""
        for chunk in answer.iter_bytes():
            size += len(chunk)
            window = tail + chunk
            markers += window.count(marker)
            tail = window[-(len(marker) - 1) :]
    seconds = time.perf_counter() - began
    return {"s": seconds, "bytes": size, "instances": max(0, markers - 1)}


def _has_retrieval_route(settings: Any) -> bool:
    """Whether radcloud's API (at the measured commit) serves federated WADO-RS."""
    from serving.api.app import create_app

    paths = create_app(settings).openapi().get("paths", {})
    return any(
        p.startswith("/api/federated/hospitals/") and "/dicom-web/studies/" in p for p in paths
    )


def _retrieval(federation: Federation, config: FederationConfig, uid: str) -> dict[str, Any]:
    if not _has_retrieval_route(federation.settings):
        return {
            "skipped": "radcloud's API has no federated WADO-RS route "
            f"({RETRIEVAL_ROUTE}) at this commit: not measured"
        }
    node = federation.nodes[RETRIEVAL_NODE]
    token = federation.treatment_token()
    path = RETRIEVAL_ROUTE.format(hospital=RETRIEVAL_NODE, study_instance_uid=uid)
    sides: dict[str, Callable[[], dict[str, float]]] = {}
    direct = node.client(timeout_s=300)
    api = httpx.Client(base_url=federation.api_url, timeout=300)
    try:
        sides["direct"] = lambda: _fetch(direct, f"{node.dicomweb_url}/studies/{uid}", {})
        sides["radcloud"] = lambda: _fetch(api, path, {"Authorization": f"Bearer {token}"})
        for _ in range(config.retrieval_warmup):
            for fetch in sides.values():
                fetch()
        runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for _ in range(config.repeats):
            for side, fetch in sides.items():  # alternated
                runs[side].append(fetch())
    finally:
        direct.close()
        api.close()
    out: dict[str, Any] = {"node": RETRIEVAL_NODE, "study_instance_uid": uid, "runs": runs}
    for side, done in runs.items():
        counts = {int(r["instances"]) for r in done}
        if counts != {config.retrieval_instances}:
            raise RuntimeError(
                f"{side} retrieval returned {sorted(counts)} instances: expected "
                f"{config.retrieval_instances}"
            )
        out[side] = {
            "mb_per_s": summarise([r["bytes"] / 1e6 / r["s"] for r in done]),
            "instances_per_s": summarise([r["instances"] / r["s"] for r in done]),
            "seconds": summarise([r["s"] for r in done]),
            "mb": done[0]["bytes"] / 1e6,
        }
    out["ratio"] = out["radcloud"]["mb_per_s"]["median"] / out["direct"]["mb_per_s"]["median"]
    out["goal_ratio"] = 0.8
    return out


# -- the suite -------------------------------------------------------------------------------


def run_federation(
    config: FederationConfig | None = None, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Start the scratch federation, measure, stop it; the result document.

    Raises
    ------
    RuntimeError
        A node refused the data, or a node failed while the baseline was measured.
    """
    config = config or FederationConfig()
    say = progress or (lambda line: logger.info("%s", line))
    national_id = str(uuid.uuid4().int)[:10]
    say("federation: generating the SYNTHETIC studies")
    data, big_uid = _node_data(config, national_id)
    silent = SilentNode()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="radcloud-federation-") as tmp,
            scratch_federation(
                Path(tmp),
                node_names=NODES,
                slow=SLOW,
                delay_s=config.delay_s,
                node_data=data,
                national_id=national_id,
                connect_timeout_s=config.connect_timeout_s,
            ) as federation,
        ):
            say("federation: query latency")
            latency = _latency(federation, config)
            say("federation: a node down")
            (refused,) = free_ports(1)
            down = _failing(
                federation, config, "down", f"http://127.0.0.1:{refused}", config.silent_timeout_s
            )
            say("federation: a silent node")
            hung = _failing(federation, config, "silent", silent.url, config.silent_timeout_s)
            say("federation: retrieval")
            retrieval = _retrieval(federation, config, big_uid)
    finally:
        silent.close()
    return {
        "suite": "federation",
        "machine": describe_machine(),
        "synthetic": True,
        "parameters": asdict(config)
        | {
            "nodes": list(NODES),
            "slow_node": SLOW,
            "tenants": ["North", "South"],
            "retrieval_mib": round(
                config.retrieval_instances * config.retrieval_matrix**2 * 2 / 2**20, 1
            ),
            "network": "loopback",
            "api": "uvicorn (one process, no Ray Serve)",
            "direct_client": "httpx, keep-alive, the same QIDO-RS filters and includefields",
        },
        "notes": "one shared machine: other work ran beside the benchmark; the nodes, the proxy, "
        "radcloud's API and the measuring client all on loopback",
        "latency": latency,
        "down": down,
        "silent": hung,
        "retrieval": retrieval,
    }


# -- report ----------------------------------------------------------------------------------


def _row(label: str, figure: dict[str, Any]) -> str:
    w, a = figure["window_p50_ms"], figure["all_ms"]
    return (
        f"| {label} | {w['median']:.1f} ({w['min']:.1f}-{w['max']:.1f}) | {a['p50']:.1f} | "
        f"{a['p95']:.1f} | {a['n']} |"
    )


def _inside(latency: dict[str, Any]) -> list[str]:
    """Where the overhead goes: each node's search as radcloud timed it (``elapsed_ms``)."""
    inside = latency.get("inside_radcloud_ms") or {}
    slowest = latency["slowest_node"]
    if slowest not in inside:
        return []
    seen = ", ".join(f"{name} {stat['p50']:.1f}" for name, stat in inside.items())
    in_node = inside[slowest]["p50"] - latency["nodes"][slowest]["all_ms"]["p50"]
    rest = latency["federated"]["all_ms"]["p50"] - inside[slowest]["p50"]
    return [
        f"Each node's search as radcloud timed it (the answer's `elapsed_ms`, p50 ms): {seen}. "
        f"Of the p50 overhead, {in_node:+.1f} ms is inside the search of node {slowest} "
        f"(radcloud's node client against the direct request: a new client and connection per "
        f"search) and {rest:+.1f} ms is the rest of the request (token, identity look-ups, "
        f"merge, audit record, JSON, HTTP)."
    ]


def markdown(result: dict[str, Any]) -> str:
    """The summary as markdown tables (milliseconds; MB/s)."""
    p = result["parameters"]
    lat = result["latency"]
    lines = [
        f"3 remote Orthanc nodes ({p['filler_studies'] + 1} studies each), node {p['slow_node']} "
        f"behind a proxy adding {p['delay_s'] * 1000:.0f} ms per request, tenants "
        f"{', '.join(p['tenants'])}; {p['windows']} windows x {p['per_window']} rounds after "
        f"{p['warmup']} warm-up; SYNTHETIC data, loopback",
        "",
        "| query | p50 per window: median (min-max) ms | p50 ms | p95 ms | n |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, figure in lat["nodes"].items():
        slow = " (slow, via proxy)" if name == p["slow_node"] else ""
        lines.append(_row(f"node {name} QIDO-RS direct{slow}", figure))
    lines.append(_row("**`GET /api/federated/studies`**", lat["federated"]))
    lines += [
        "",
        f"Fan-out overhead against the slowest node ({lat['slowest_node']}): "
        f"p50 {lat['overhead_ms']['p50']:+.1f} ms (ratio {lat['ratio']['p50']:.2f}), "
        f"p95 {lat['overhead_ms']['p95']:+.1f} ms (ratio {lat['ratio']['p95']:.2f}).",
        "",
        *_inside(lat),
        "",
        "| failing node | node timeout + connect | answer p50 ms | max ms | node state | "
        "others ok | partial |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for key, label in (("down", "down (connection refused)"), ("silent", "silent (never answers)")):
        f = result[key]
        lines.append(
            f"| {label} | {f['bound_ms']:.0f} ms | {f['ms']['p50']:.0f} | {f['ms']['max']:.0f} | "
            f"{', '.join(f['failing_node_states'])} | {f['other_nodes_ok']} | {f['partial']} |"
        )
    r = result["retrieval"]
    lines.append("")
    if "skipped" in r:
        lines.append(f"Retrieval: skipped ({r['skipped']}).")
    else:
        lines += [
            f"Retrieval of a {p['retrieval_instances']}-instance study ({r['direct']['mb']:.1f} "
            f"MB multipart) from node {r['node']}, {p['repeats']} times each side:",
            "",
            "| from | MB/s median (min-max) | instances/s median | seconds median |",
            "|---|---:|---:|---:|",
        ]
        for side, label in (("direct", "the node directly"), ("radcloud", "**through radcloud**")):
            s = r[side]
            lines.append(
                f"| {label} | {s['mb_per_s']['median']:.1f} ({s['mb_per_s']['min']:.1f}-"
                f"{s['mb_per_s']['max']:.1f}) | {s['instances_per_s']['median']:.0f} | "
                f"{s['seconds']['median']:.3f} |"
            )
        lines += ["", f"Ratio radcloud / direct: {r['ratio']:.2f} (goal >= {r['goal_ratio']})."]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path, title: str) -> Path:
    """Latency CDFs (each node direct, federated) and, where measured, retrieval MB/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    retrieval = result["retrieval"]
    measured = "skipped" not in retrieval
    fig, axes = plt.subplots(1, 2 if measured else 1, figsize=(12 if measured else 7, 4.5))
    ax = axes[0] if measured else axes
    samples = result["latency"]["samples_ms"]
    for name, windows in samples.items():
        values = np.sort([v for w in windows for v in w])
        label = "federated (radcloud)" if name == "federated" else name.replace(":", " ")
        ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=label)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of searches")
    ax.set_title("study search latency")
    ax.legend()
    ax.grid(alpha=0.3)
    if measured:
        sides = ("direct", "radcloud")
        medians = [retrieval[s]["mb_per_s"]["median"] for s in sides]
        errors = np.array(
            [
                [m - retrieval[s]["mb_per_s"]["min"], retrieval[s]["mb_per_s"]["max"] - m]
                for s, m in zip(sides, medians, strict=True)
            ]
        ).T
        axes[1].bar(["node directly", "through radcloud"], medians, yerr=errors, capsize=6)
        axes[1].set_ylabel("MB/s (median, min-max)")
        axes[1].set_title(f"WADO-RS study retrieval (ratio {retrieval['ratio']:.2f})")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, few samples")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    result = run_federation(QUICK if args.quick else None)
    path = write_result("federation", "cpu", result, args.out)
    print(markdown(result))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
