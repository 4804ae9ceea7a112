"""radcloud's own Ray cluster on this machine (``RADCLOUD_RAY_NODES`` = N > 1): a head node and
N - 1 worker nodes, each a ``ray start --block`` process (``python -m serving.ray_node``) in its
own process group, every Ray server on loopback.

Ports: the head's GCS on ``ray_port``, its Ray client server on ``ray_port + 1``, node k's
(0 the head) dashboard agent on ``ray_port + 2 + k``; the rest (raylets, object managers,
workers) take free ports on 127.0.0.1. Ray Serve (the ``api`` component) joins the cluster at
``127.0.0.1:ray_port`` (:attr:`core.config.Settings.ray_cluster_address`).

Ray's temporary directory (sessions, logs, sockets) is one of this instance's own,
:func:`ray_temp_dir`, not Ray's shared ``/tmp/ray``: there ``ray start`` records its cluster's
address (``ray_current_cluster``), which every ``ray.init()`` without an address on this machine
would then join. It is under the system's temporary directory rather than ``RADCLOUD_HOME``
because Ray's Unix sockets live in it, and a socket's path is limited to 107 bytes.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import sys
import tempfile
from pathlib import Path

from core.config import ENV_PREFIX, Settings, settings_env
from radcloud.services._process import alive, read_pid_file
from radcloud.services.supervisor import Component

__all__ = ["RAY_HEAD", "ray_components", "ray_temp_dir", "ray_worker_name"]

RAY_HEAD = "ray-head"
_LOOPBACK = "127.0.0.1"


def ray_worker_name(node: int) -> str:
    """The component name of worker node ``node`` (1, 2, ...)."""
    return f"ray-worker-{node}"


def ray_temp_dir(settings: Settings) -> Path:
    """The Ray temporary directory of this instance's nodes: ``radcloud-ray-<hash of the
    home>`` in the system's temporary directory."""
    digest = hashlib.sha256(str(settings.home.absolute()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"radcloud-ray-{digest}"


def _group_runs(pid_file: Path, program: str) -> bool:
    """Whether the process group led by the pid in ``pid_file`` holds a live ``program``."""
    record = read_pid_file(pid_file)
    if record is None or not alive(*record):
        return False
    group = str(record[0])
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process exited meanwhile
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[-1].split()
        if name == program and len(fields) > 2 and fields[0] != "Z" and fields[2] == group:
            return True
    return False


def _node_healthy(pid_file: Path, gcs_port: int | None) -> bool:
    """A node is up once its raylet runs; the head's GCS must also accept connections."""
    if not _group_runs(pid_file, "raylet"):
        return False
    if gcs_port is None:
        return True
    try:
        with socket.create_connection((_LOOPBACK, gcs_port), timeout=2.0):
            return True
    except OSError:
        return False


def _start_argv(settings: Settings, node: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "serving.ray_node",
        "start",
        "--block",
        f"--node-ip-address={_LOOPBACK}",
        "--disable-usage-stats",
        f"--dashboard-agent-listen-port={settings.ray_port + 2 + node}",
        f"--temp-dir={ray_temp_dir(settings)}",
    ]
    if settings.ray_num_cpus is not None:
        argv.append(f"--num-cpus={settings.ray_num_cpus}")
    if node == 0:
        return [
            *argv,
            "--head",
            f"--port={settings.ray_port}",
            f"--ray-client-server-port={settings.ray_port + 1}",
            "--include-dashboard=false",
        ]
    return [*argv, f"--address={_LOOPBACK}:{settings.ray_port}"]


def ray_components(settings: Settings) -> list[Component]:
    """The nodes of radcloud's Ray cluster, head first; none with ``ray_nodes`` = 1 (serving
    then starts a local Ray of its own).

    Parameters
    ----------
    settings
        The instance's settings, passed to each node as ``RADCLOUD_*`` variables (its workers,
        Serve's replicas among them, inherit them).

    Returns
    -------
    list[Component]
        ``ray-head``, healthy when its raylet runs and its GCS accepts connections, then
        ``ray-worker-1`` ... ``ray-worker-<N-1>``, healthy when their raylet runs.
    """
    if settings.ray_nodes < 2:
        return []
    env = settings_env(settings) | {"TCP_NODELAY": "1"}
    port_setting = f"{ENV_PREFIX}RAY_PORT"
    nodes = []
    for node in range(settings.ray_nodes):
        name = RAY_HEAD if node == 0 else ray_worker_name(node)
        ports = [(settings.ray_port + 2 + node, f"{port_setting} (+ {2 + node})")]
        if node == 0:  # the GCS and the Ray client server
            ports[:0] = [
                (settings.ray_port, port_setting),
                (settings.ray_port + 1, f"{port_setting} (+ 1)"),
            ]
        pid_file = settings.paths.run_dir / f"{name}.pid"
        nodes.append(
            Component.create(
                settings,
                name=name,
                argv=_start_argv(settings, node),
                ports=ports,
                health=functools.partial(
                    _node_healthy, pid_file, settings.ray_port if node == 0 else None
                ),
                url=f"ray://{_LOOPBACK}:{settings.ray_port}" if node == 0 else f"ray node {node}",
                env=env,
            )
        )
    return nodes
