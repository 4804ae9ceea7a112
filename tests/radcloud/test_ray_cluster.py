"""Several serving nodes (issue 18 item 3): ``radcloud up`` with ``RADCLOUD_RAY_NODES=2`` starts a
Ray head and a worker node on loopback, and Ray Serve's replicas are placed on both; a worker
node killed with SIGKILL in the middle of a stream of DICOM studies loses no study (every one is
triaged exactly once), Serve replaces the replicas it held, and ``radcloud up`` brings the node
back; a burst of requests makes Serve's autoscaler add model replicas and remove them after.

One radcloud for the module: two nodes of 2 logical CPUs each on this 2-core machine, model
replicas of a quarter CPU (2 to 3 per model), two triage workers, the slim fixture models. Ray's
state is read by a driver of this machine in a subprocess (this process may have imported Ray
with other settings): the GCS actor table gives each replica's node, ``serve.status()`` the
replica counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import func, select

from core.config import is_loopback_host
from core.db.models import InferenceResult, InferenceStatus, OutboxEvent, Study
from imaging.synthetic import generate_study
from models.registry import ModelRegistry
from radcloud.services.ray_cluster import RAY_HEAD, ray_temp_dir, ray_worker_name
from tests.conftest import RADCLOUD, Stack, log_tails, settings_from_env, stack_env
from tests.fixture_models import register_fixture_models
from tests.helpers import free_ports, wait_until
from tests.serving.test_triage_e2e import push

# the module's first test also starts the two-node radcloud (3 min and more on 2 loaded cores)
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

SENDER = "RAYNODES"
MIN_REPLICAS = 2
MAX_REPLICAS = 3
HEAD_MODEL = "head-ct-haemorrhage"
CHEST_MODEL = "chest-xr-finding"
WORKER = ray_worker_name(1)

_DRIVER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}

_STATE = """
import json, sys
import ray
from ray import serve
from ray._private import state

ray.init(address=sys.argv[1], namespace="radcloud", logging_level="ERROR")
head = [n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"]]
replicas = {}
for actor in state.actors().values():
    name = actor.get("Name") or ""
    if actor["State"] == "ALIVE" and name.startswith("SERVE_REPLICA::"):
        replicas.setdefault(name.split("#")[1], []).append(actor["Address"]["NodeID"])
running = {
    name: {str(k): v for k, v in deployment.replica_states.items()}
    for name, deployment in serve.status().applications["radcloud"].deployments.items()
}
alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
found = {"head": head[0], "alive": alive, "replicas": replicas, "states": running}
print("RESULT", json.dumps(found))
"""

# A burst of model requests through Serve's own deployment handle, while serve.status() is
# watched: the most RUNNING replicas seen, then (the burst over) how many remain once idle.
_BURST = """
import json, sys, threading, time
import numpy as np
import ray
from ray import serve

address, name, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
callers, min_replicas = int(sys.argv[4]), int(sys.argv[5])
ray.init(address=address, namespace="radcloud", logging_level="ERROR")
handle = serve.get_deployment_handle(name, app_name="radcloud")
array = np.random.default_rng(0).random(shape, dtype=np.float32)
stop = threading.Event()
seen = {}  # each replica state and deployment message seen, for a failure's message
calls = [0]

def running():
    deployment = serve.status().applications["radcloud"].deployments[name]
    states = {str(state).rsplit(".", 1)[-1]: n for state, n in deployment.replica_states.items()}
    if states not in seen.setdefault("states", []):
        seen["states"].append(states)
    if deployment.message:
        seen["message"] = deployment.message
    return states.get("RUNNING", 0)

def call():
    while not stop.is_set():
        handle.predict.remote(array).result(timeout_s=120)
        calls[0] += 1

threads = [threading.Thread(target=call, daemon=True) for _ in range(callers)]
for thread in threads:
    thread.start()
peak, started, deadline = 0, time.monotonic(), time.monotonic() + 420
while time.monotonic() < deadline and peak <= min_replicas:
    peak = max(peak, running())
    time.sleep(1)
seen["up_s"] = round(time.monotonic() - started)
seen["calls"] = calls[0]
stop.set()
for thread in threads:
    thread.join(timeout=150)
after, deadline = running(), time.monotonic() + 240
while time.monotonic() < deadline and after > min_replicas:
    time.sleep(2)
    after = running()
print("RESULT", json.dumps({"peak": peak, "after": after, "seen": seen}))
"""


def _free_run(count: int) -> int:
    """The first of ``count`` consecutive free ports (the Ray node ports: ``ray_port + k``),
    taken from the tests' port helper so that the stack's other ports are not among them."""
    for _ in range(50):
        ports = free_ports(count)
        if ports == list(range(ports[0], ports[0] + count)):
            return ports[0]
    raise RuntimeError(f"no {count} consecutive free ports")


def _driver(stack: Stack, script: str, *args: str, timeout_s: float = 180) -> dict[str, Any]:
    """Run ``script`` as a Ray driver of this machine joined to the stack's cluster."""
    done = subprocess.run(
        [sys.executable, "-c", script, f"127.0.0.1:{stack.settings.ray_port}", *args],
        env={**stack.env, **_DRIVER_ENV},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Ray may print to stdout too (a node's death, lagging heartbeats): the result is marked
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def _state(stack: Stack) -> dict[str, Any]:
    return _driver(stack, _STATE)


def _all_running(state: dict[str, Any]) -> bool:
    """Every deployment has only RUNNING replicas (none starting, none being replaced)."""
    return all(set(states) == {"RUNNING"} for states in state["states"].values())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A radcloud of two Ray nodes on this machine, started with ``radcloud up``."""
    home = tmp_path_factory.mktemp("radcloud-ray-nodes")
    env = stack_env(
        home,
        ray_nodes=2,
        ray_port=_free_run(4),
        ray_num_cpus=2,
        serving_cpus_per_model_replica=0.25,
        serving_min_replicas=MIN_REPLICAS,
        serving_max_replicas=MAX_REPLICAS,
        serving_target_ongoing_requests=1,
        serving_upscale_delay_s=1,
        serving_downscale_delay_s=5,
        triage_workers=2,
        triage_poll_interval_s=0.2,
        triage_lease_s=20,
        startup_timeout_s=180,
    )
    running = Stack(env, settings_from_env(env))
    register_fixture_models(running.settings.paths.models_dir)
    try:
        # inside: a start that fails stops what it did start; two nodes, then every replica,
        # start on two cores: longer than Stack.cli waits
        started = subprocess.run(
            [*RADCLOUD, "up"], env=env, capture_output=True, text=True, timeout=900, check=False
        )
        assert started.returncode == 0, started.stderr[-5000:]
        running.add_sender(SENDER, "Ray Nodes Hospital")
        yield running
    except BaseException:
        print(log_tails(home))  # the logs of a failed start, for the report
        raise
    finally:
        running.cli("down", check=False)


def test_up_starts_a_head_and_a_worker_node_and_serve_places_replicas_on_both(
    cluster: Stack,
) -> None:
    statuses = {s["name"]: s for s in json.loads(cluster.cli("status", "--json").stdout)}
    assert statuses[RAY_HEAD]["healthy"] and statuses[WORKER]["healthy"], statuses
    assert wait_until(lambda: _all_running(_state(cluster)), timeout_s=180)
    state = _state(cluster)
    assert len(state["alive"]) == 2, state
    worker = next(node for node in state["alive"] if node != state["head"])
    for deployment in (f"model-{HEAD_MODEL}", f"model-{CHEST_MODEL}", "triage"):
        nodes = state["replicas"][deployment]
        assert len(nodes) == 2, (deployment, state)  # MIN_REPLICAS, and two triage workers
        assert set(nodes) == {state["head"], worker}, (deployment, state)


def test_every_ray_server_of_both_nodes_listens_on_loopback(cluster: Stack) -> None:
    found = set()
    for component in (RAY_HEAD, WORKER):
        root = psutil.Process(cluster.pid(component))
        for process in (root, *root.children(recursive=True)):
            try:
                connections = process.net_connections(kind="tcp")
                name = process.name()
            except psutil.NoSuchProcess:  # a worker that just exited
                continue
            found |= {
                (c.laddr.ip, c.laddr.port, name)
                for c in connections
                if c.status == psutil.CONN_LISTEN
            }
    names = {name for _, _, name in found}
    assert {"gcs_server", "raylet"} <= names, names  # the right processes were looked at
    # `ray start` records its cluster in the instance's own temporary directory, where no
    # local Ray of this machine (`ray.init()` without an address) finds it and joins
    address = f"127.0.0.1:{cluster.settings.ray_port}"
    recorded = ray_temp_dir(cluster.settings) / "ray_current_cluster"
    assert recorded.read_text().strip() == address
    shared = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    assert not shared.exists() or shared.read_text().strip() != address
    assert (cluster.settings.bind_host, cluster.settings.api_port, "ray::ProxyActor") in found
    beyond = {
        (address, port, name)
        for address, port, name in found
        if not is_loopback_host(address.removeprefix("::ffff:"))
    }
    assert not beyond, beyond


def _triaged(stack: Stack, uids: list[str]) -> dict[str, list[str]]:
    """Per study, the status of each of its inference result rows, once every study's event is
    processed (empty before)."""
    db = stack.database()
    try:
        with db.session() as session:
            pending = session.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.key.in_(uids), OutboxEvent.processed_at.is_(None))
            )
            if pending:
                return {}
            rows: dict[str, list[str]] = {uid: [] for uid in uids}
            for uid, status in session.execute(
                select(Study.study_instance_uid, InferenceResult.status)
                .join(Study, InferenceResult.study_id == Study.id)
                .where(Study.study_instance_uid.in_(uids))
            ):
                rows[uid].append(str(status))
            return rows
    finally:
        db.dispose()


def _results(stack: Stack, uids: list[str]) -> int:
    """How many inference result rows the studies have."""
    db = stack.database()
    try:
        with db.session() as session:
            count = session.scalar(
                select(func.count())
                .select_from(InferenceResult)
                .join(Study, InferenceResult.study_id == Study.id)
                .where(Study.study_instance_uid.in_(uids))
            )
            return int(count or 0)
    finally:
        db.dispose()


def _models_back(state: dict[str, Any]) -> bool:
    """Every model has its minimum of RUNNING replicas again."""
    models = {d: nodes for d, nodes in state["replicas"].items() if d.startswith("model-")}
    return _all_running(state) and all(len(nodes) >= MIN_REPLICAS for nodes in models.values())


def test_a_worker_node_killed_mid_stream_loses_no_study(cluster: Stack, tmp_path: Path) -> None:
    studies = [generate_study("head-ct", n, seed=77, positive=n % 2 == 0) for n in range(8)]
    uids = [study.study_instance_uid for study in studies]
    for study in studies[:4]:
        push(cluster, tmp_path / study.study_instance_uid, study.datasets, sender=SENDER)
    # the worker node dies, whole (raylet, its workers, its replicas), once triage is under way
    assert wait_until(lambda: _results(cluster, uids) > 0, timeout_s=300)
    os.killpg(cluster.pid(WORKER), signal.SIGKILL)
    for study in studies[4:]:
        push(cluster, tmp_path / study.study_instance_uid, study.datasets, sender=SENDER)

    assert wait_until(lambda: len(_state(cluster)["alive"]) == 1, timeout_s=120)
    # Serve replaces the lost replicas on the node that is left
    assert wait_until(lambda: _models_back(_state(cluster)), timeout_s=300)
    # every study triaged exactly once: its events processed, one result row (its one model)
    rows: dict[str, list[str]] = {}

    def all_triaged() -> bool:
        rows.update(_triaged(cluster, uids))
        return bool(rows) and all(rows.values())

    assert wait_until(all_triaged, timeout_s=420), rows
    assert rows == {uid: [InferenceStatus.SUCCEEDED.value] for uid in uids}, rows
    # the supervisor brings the node back, and Serve uses it again
    cluster.up()
    assert wait_until(lambda: len(_state(cluster)["alive"]) == 2, timeout_s=120)


def test_a_burst_adds_model_replicas_and_they_go_after_it(cluster: Stack) -> None:
    model = ModelRegistry(cluster.settings.paths.models_dir).production(CHEST_MODEL)
    assert model is not None
    shape = list(model.card.inputs.shape)
    assert wait_until(lambda: _all_running(_state(cluster)), timeout_s=300)
    seen = _driver(
        cluster,
        _BURST,
        f"model-{CHEST_MODEL}",
        json.dumps(shape),
        "16",
        str(MIN_REPLICAS),
        timeout_s=900,
    )
    assert seen["peak"] > MIN_REPLICAS, seen
    assert seen["after"] == MIN_REPLICAS, seen
