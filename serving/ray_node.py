"""``python -m serving.ray_node start ...``: ``ray start`` for a node of radcloud's own Ray
cluster on this machine (``RADCLOUD_RAY_NODES`` > 1), every one of its servers on loopback.

A local Ray keeps its servers on loopback when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the node's
address is then 127.0.0.1 and Ray's servers bind to it (``serving.application``). ``ray start``
refuses to add a worker node in that mode (Ray 2.60 ``scripts.py``: "Multi-node Ray clusters are
not supported"), and with the mode on it turns ``--node-ip-address=127.0.0.1`` into the
machine's outward address. This entry point keeps the mode off for everything Ray reads
(``services.get_node_ip_address`` stays 127.0.0.1, and so do the node's raylet, agents and
workers, which inherit the variable), and shows ``ray start``'s own check the mode on, so that
the worker node joins.

It also sets what the node's processes must read that a local Ray gets from
``python -m serving``: Serve's proxy callback (the body budget, ``serving._body_limit``), the
workers' niceness (:data:`WORKER_NICENESS`) and Ray's token authentication
(``RAY_AUTH_MODE=token``; the head makes the token, in ``~/.ray/auth_token``, and every node
and the serving process of this machine read it).
``tests/radcloud/test_ray_cluster.py`` checks every listening socket of both nodes, so a Ray
upgrade that changes either is noticed.
"""

from __future__ import annotations

import os
import sys
import types

__all__ = ["AUTH_MODE_ENV", "CLUSTER_ENV", "WORKER_NICENESS", "WORKER_NICENESS_ENV", "main"]

CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
WORKER_NICENESS_ENV = "RAY_worker_niceness"
WORKER_NICENESS = "0"
"""The niceness radcloud's Ray starts its workers with, on every node (Ray's default is 15): the
API's replicas and Serve's proxy answer readers at Orthanc's and the gateway's priority, and the
triage workers and model replicas lower their own (``RADCLOUD_TRIAGE_NICE``,
:func:`serving.deployments.yield_cpu`). The raylet reads it from its environment."""
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def main() -> None:
    """Run Ray's command line (``ray start ...``) with the node on loopback."""
    from serving._body_limit import PROXY_CALLBACK

    os.environ[CLUSTER_ENV] = "0"  # before Ray is imported: its constants read it
    os.environ.setdefault(AUTH_MODE_ENV, "token")
    os.environ.setdefault(WORKER_NICENESS_ENV, WORKER_NICENESS)
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
    from ray._private import ray_constants
    from ray.scripts import scripts

    view = types.ModuleType(ray_constants.__name__)
    view.__dict__.update(vars(ray_constants))
    view.ENABLE_RAY_CLUSTER = True  # type: ignore[attr-defined]
    scripts.ray_constants = view  # type: ignore[attr-defined]
    sys.exit(scripts.main())  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
