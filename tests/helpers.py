"""Helpers shared by the test suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks._env import free_ports
from core.config import Settings
from core.secrets import Secrets

__all__ = ["free_port", "free_ports", "orthanc_client", "wait_until"]


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
