"""Which of radcloud's processes yield the CPU to which (README "Settings", serving's table):
radcloud's Ray starts its workers at niceness 0 (Ray's default, 15, put the API's answers to
readers behind Orthanc and the gateway), and the triage workers and model replicas give
themselves ``RADCLOUD_TRIAGE_NICE`` (15). Checked on the processes of a real stack."""

from __future__ import annotations

import os

import psutil
import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.integration


def _ray_processes(stack: Stack) -> dict[str, list[psutil.Process]]:
    """The stack's Ray actor processes (descendants of its API process) by kind."""
    kinds: dict[str, list[psutil.Process]] = {}
    for process in psutil.Process(stack.pid("api")).children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
        if title.startswith("ray::ProxyActor"):
            kinds.setdefault("proxy", []).append(process)
        elif title.startswith("ray::ServeReplica:radcloud:"):
            name = title.removeprefix("ray::ServeReplica:radcloud:").split()[0]
            deployment = name.split(".")[0]
            kind = deployment if deployment in {"api", "triage"} else "model"
            kinds.setdefault(kind, []).append(process)
    return kinds


def _threads(process: psutil.Process) -> list[int]:
    return [thread.id for thread in process.threads()]


def _nice(thread: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread)


def test_readers_are_answered_at_ingest_priority_and_triage_yields(stack: Stack) -> None:
    kinds = _ray_processes(stack)
    nice = {  # every thread's (Linux: niceness is per thread)
        kind: sorted({_nice(thread) for p in processes for thread in _threads(p)})
        for kind, processes in kinds.items()
    }
    assert stack.settings.triage_nice == 15
    assert nice.get("api") == [0], nice
    assert nice.get("proxy") == [0], nice
    assert nice.get("triage") == [15], nice
    assert nice.get("model") == [15], nice
    assert psutil.Process(stack.pid("gateway")).nice() == 0
