"""A local Ray is radcloud's own: serving never joins another Ray cluster this machine runs.

``ray.init()`` without an address joins the cluster named by ``RAY_ADDRESS`` or left by the last
``ray start`` in ``/tmp/ray/ray_current_cluster``; radcloud's serving (no
``RADCLOUD_RAY_ADDRESS``) must start a Ray of its own instead, or its replicas, their patient
data and their secrets would run in someone else's cluster. A real ``ray start --head`` runs
beside it here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.integration

_LOCAL_RAY = """
import sys
from core.config import load_settings
from serving.application import _start_local_ray

_start_local_ray(load_settings(home=sys.argv[1], ray_num_cpus=1))  # imports Ray as serving does
import ray
print("GCS", ray.get_runtime_context().gcs_address)
ray.shutdown()
"""


@pytest.fixture
def other_cluster() -> Iterator[str]:
    """Another Ray cluster's head on this machine (its own temporary directory); its address."""
    temp = Path(tempfile.mkdtemp(prefix="rayo-"))  # Ray's socket paths must stay short
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: any(temp.glob("session_*/sockets/raylet*")), timeout_s=60)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_serving_starts_a_ray_of_its_own_beside_another_cluster(
    other_cluster: str, tmp_path: Path
) -> None:
    env = {**os.environ, "RAY_ADDRESS": other_cluster, "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run(
        [sys.executable, "-c", _LOCAL_RAY, str(tmp_path)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [gcs] = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("GCS ")]
    assert gcs.startswith("127.0.0.1:")
    assert gcs != other_cluster
