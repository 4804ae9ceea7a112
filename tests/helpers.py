"""Helpers shared by the test suite."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks._env import free_ports
from core.config import Settings
from core.secrets import Secrets

__all__ = ["free_port", "free_ports", "orthanc_client", "served", "wait_until"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (see :func:`free_ports`)."""
    return free_ports(1)[0]


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.05
) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(interval_s)
    return True


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn on a free loopback port in a thread of this process;
    yield its base URL (``http://127.0.0.1:PORT``) once it accepts requests, and stop it after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout_s=60), "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def orthanc_client(settings: Settings, secrets: Secrets, *, timeout_s: float = 30.0) -> Any:
    """A pyorthanc client of an instance's Orthanc, for tests that check Orthanc itself (the
    product reaches Orthanc only through ``core.archive``); close it when done."""
    import pyorthanc

    return pyorthanc.Orthanc(
        settings.orthanc_url,
        username=secrets.orthanc_user,
        password=secrets.orthanc_password,
        timeout=timeout_s,
        base_url=settings.orthanc_url,
    )
