"""Keep a local Ray Serve's replica servers on loopback: a Ray worker setup hook.

Ray Serve 2.60 starts, in every replica, a gRPC server for calls between deployments bound to
``[::]:0``, every interface, whatever the node's address (``serve/_private/replica.py``; Ray
authenticates its callers with the cluster token, but it is still a door beyond loopback). On a
local Ray, whose node address is loopback (``serving.application``), nothing needs to reach
it from elsewhere: :func:`bind_replica_servers_to_loopback`, run by Ray in each replica's
worker process before the replica starts (Ray's worker setup hook, named in the replicas'
runtime environment by ``serving.application``), makes it bind to 127.0.0.1.
``tests/serving/test_transport.py`` checks every listening socket of the running cluster, so a
Ray upgrade that moves this server is noticed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

__all__ = ["SETUP_HOOK", "bind_replica_servers_to_loopback"]

logger = logging.getLogger(__name__)

SETUP_HOOK = f"{__name__}.bind_replica_servers_to_loopback"
"""The hook as Ray's runtime environment names it."""

_EVERY_INTERFACE = "[::]:"


def bind_replica_servers_to_loopback() -> None:
    """Make Serve's replica module bind its inter-deployment gRPC server to 127.0.0.1."""
    from ray.serve._private import replica

    add_port = cast(Callable[[Any, str], int], replica.add_port_to_grpc_server)  # type: ignore[attr-defined]
    if getattr(add_port, "radcloud_loopback", False):
        return

    def add_port_on_loopback(server: Any, address: str) -> int:
        if address.startswith(_EVERY_INTERFACE):
            address = "127.0.0.1:" + address.removeprefix(_EVERY_INTERFACE)
        return add_port(server, address)

    add_port_on_loopback.radcloud_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_loopback  # type: ignore[attr-defined]
