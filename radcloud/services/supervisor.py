"""A small process supervisor for radcloud's components (Orthanc, the HTTP API, ...).

Each :class:`Component` runs as a detached process in its own session (process group), with
stdout and stderr appended to ``RADCLOUD_HOME/logs/<name>.log`` and its pid (and start time,
so that a recycled pid is never signalled) in ``RADCLOUD_HOME/run/<name>.pid``.

:meth:`Supervisor.up` starts the components in order and waits for each to be healthy before the
next; running it again while everything is up is harmless. :meth:`Supervisor.down` stops them in
reverse order with SIGTERM to the process group, then SIGKILL. Errors are
:class:`~core.exceptions.ServiceError` subclasses: ``PortInUseError(port, setting)`` before
anything is spawned, ``StartupError(component, reason, log_file)`` with the log's last lines when a
process exits or never becomes healthy.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.config import Settings
from core.db import Database, upgrade
from core.exceptions import PortInUseError, StartupError
from core.files import private_directory
from core.secrets import load_secrets
from radcloud.services._process import (
    alive,
    log_tail,
    read_pid_file,
    terminate,
    track_child,
    write_pid_file,
)

__all__ = [
    "Component",
    "ComponentStatus",
    "Supervisor",
    "check_ports_free",
    "http_ok",
]

logger = logging.getLogger(__name__)

_POLL_S = 0.2
_PORT_CHECK_HOSTS = ("127.0.0.1", "0.0.0.0")  # noqa: S104 - probing, not serving


@dataclass(frozen=True)
class Component:
    """One process radcloud runs.

    Parameters
    ----------
    name
        Short name; also names the log and pid files.
    argv
        Program and arguments.
    ports
        ``(port, setting)`` pairs the process listens on; ``setting`` is the ``RADCLOUD_*``
        variable that changes the port, named in :class:`~core.exceptions.PortInUseError`.
    health
        Returns ``True`` once the component serves requests; must return quickly (short
        timeouts) and not raise for a component that is down.
    url
        Where people reach it, for display.
    log_file, pid_file
        Where its output and its pid go (see :meth:`create` for the standard places).
    env
        Variables added to the supervisor's own environment for the process.
    prepare
        Called just before the process is spawned (write a config file, check a dependency is
        installed); may raise :class:`~core.exceptions.ServiceError`.
    details
        Returns a few facts to show in ``radcloud status`` (e.g. spool depth) while healthy;
        ``None`` when there is nothing to show or it cannot be read.
    startup_factor
        Multiplies ``settings.startup_timeout_s`` for slow starters (Ray Serve).
    provides_database
        Set for the application database's own server (the managed PostgreSQL): ``up`` starts
        such a component before it migrates the database, and calls this once the component
        is healthy (e.g. to create the application's database).
    """

    name: str
    argv: Sequence[str]
    ports: tuple[tuple[int, str], ...]
    health: Callable[[], bool]
    url: str
    log_file: Path
    pid_file: Path
    env: Mapping[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None
    details: Callable[[], dict[str, Any] | None] | None = None
    startup_factor: float = 1.0
    provides_database: Callable[[], None] | None = None

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        name: str,
        argv: Sequence[str],
        health: Callable[[], bool],
        url: str,
        ports: Iterable[tuple[int, str]] = (),
        env: Mapping[str, str] | None = None,
        prepare: Callable[[], None] | None = None,
        details: Callable[[], dict[str, Any] | None] | None = None,
        startup_factor: float = 1.0,
        provides_database: Callable[[], None] | None = None,
    ) -> Component:
        """A component with its log in ``settings.paths.log_dir/<name>.log`` and its pid file in
        ``settings.paths.run_dir/<name>.pid``; the other parameters are the fields'."""
        return cls(
            name=name,
            argv=tuple(argv),
            ports=tuple(ports),
            health=health,
            url=url,
            log_file=settings.paths.log_dir / f"{name}.log",
            pid_file=settings.paths.run_dir / f"{name}.pid",
            env=dict(env or {}),
            prepare=prepare,
            details=details,
            startup_factor=startup_factor,
            provides_database=provides_database,
        )


@dataclass(frozen=True)
class ComponentStatus:
    """What :meth:`Supervisor.status` found for one component."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str
    ports: tuple[tuple[int, str], ...]
    log_file: Path
    details: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``ports`` become ``[{"port": 8042, "setting": "RADCLOUD_..."}]``."""
        return {
            "name": self.name,
            "pid": self.pid,
            "running": self.running,
            "healthy": self.healthy,
            "url": self.url,
            "ports": [{"port": port, "setting": setting} for port, setting in self.ports],
            "log_file": str(self.log_file),
            "details": self.details,
        }


def http_ok(
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    timeout_s: float = 2.0,
    verify: bool = True,
) -> bool:
    """Whether ``GET url`` answers 200; any connection or protocol error counts as ``False``.
    ``verify=False`` skips the TLS certificate check (a liveness probe of our own child on
    loopback, whose certificate names the public host)."""
    try:
        response = httpx.get(url, auth=auth, timeout=timeout_s, verify=verify)
    except httpx.HTTPError as exc:
        logger.debug("GET %s failed: %s", url, exc)
        return False
    return response.status_code == 200


def check_ports_free(ports: Iterable[tuple[int, str]]) -> None:
    """Raise if another process listens on any of ``ports``.

    Each port is bound on 127.0.0.1 and on 0.0.0.0 (with ``SO_REUSEADDR``, so connections
    lingering in TIME_WAIT after a clean stop do not count) and released at once.

    Parameters
    ----------
    ports
        ``(port, setting)`` pairs; ``setting`` is the ``RADCLOUD_*`` variable for the port.

    Raises
    ------
    PortInUseError
        For the first port that cannot be bound, naming the port and its setting.
    """
    for port, setting in ports:
        for host in _PORT_CHECK_HOSTS:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((host, port))
                except OSError as exc:
                    raise PortInUseError(port, setting) from exc


class Supervisor:
    """Starts, stops and reports on radcloud's components.

    Parameters
    ----------
    settings
        The validated settings (home directory, ports, startup timeout).
    components
        The components, in start order; by default
        :func:`radcloud.services.components.components` (Orthanc, then the HTTP API).
    stop_timeout_s
        How long :meth:`down` waits after SIGTERM before it sends SIGKILL.
    """

    def __init__(
        self,
        settings: Settings,
        components: Sequence[Component] | None = None,
        *,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self.stop_timeout_s = stop_timeout_s
        self._components = list(components) if components is not None else None

    @property
    def components(self) -> list[Component]:
        """The supervised components in start order (loads the secrets on first use)."""
        if self._components is None:
            # Imported here: the component definitions import this module for Component.
            from radcloud.services.components import components

            self._components = components(self.settings, load_secrets(self.settings))
        return self._components

    def up(self) -> list[ComponentStatus]:
        """Start every component that is not already running and healthy.

        Creates the home directories, loads (on first start generates) the secrets, starts the
        database's own server if radcloud runs one (a component that ``provides_database``),
        and migrates the application database first. Components started before a failing one
        stay up.

        Returns
        -------
        list[ComponentStatus]
            The status of every component afterwards.

        Raises
        ------
        PortInUseError
            When a component's port is taken by another process (nothing is spawned for it).
        DependencyMissingError
            When a program a component needs is not installed.
        StartupError
            When a component exits, or is not healthy within ``settings.startup_timeout_s``;
            the reason holds the last lines of its log.
        """
        self._make_home()
        load_secrets(self.settings)
        for component in self.components:
            if component.provides_database is not None:
                self._ensure_running(component)
                component.provides_database()
        db = Database.from_settings(self.settings)
        try:
            upgrade(db)
        finally:
            db.dispose()
        for component in self.components:
            if component.provides_database is None:
                self._ensure_running(component)
        return self.status()

    def down(self) -> list[str]:
        """Stop the components in reverse order; harmless when nothing runs.

        Returns
        -------
        list[str]
            Names of the components that were running and have been stopped.
        """
        stopped: list[str] = []
        for component in reversed(self.components):
            record = read_pid_file(component.pid_file)
            if record is None:
                continue
            pid, start_time = record
            if alive(pid, start_time):
                logger.info("stopping %s (pid %d)", component.name, pid)
                terminate(pid, self.stop_timeout_s)
                stopped.append(component.name)
            component.pid_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ComponentStatus]:
        """Whether each component's process runs and answers its health check."""
        return [self._status_of(component) for component in self.components]

    def _status_of(self, component: Component) -> ComponentStatus:
        record = read_pid_file(component.pid_file)
        pid = record[0] if record else None
        running = record is not None and alive(*record)
        healthy = running and component.health()
        return ComponentStatus(
            name=component.name,
            pid=pid if running else None,
            running=running,
            healthy=healthy,
            url=component.url,
            ports=component.ports,
            log_file=component.log_file,
            details=component.details() if healthy and component.details else None,
        )

    def _make_home(self) -> None:
        paths = self.settings.paths
        for directory in (
            paths.home,
            paths.orthanc_storage,
            paths.run_dir,
            paths.log_dir,
            paths.spool_dir,
            paths.quarantine_dir,
            paths.models_dir,
        ):
            private_directory(directory)

    def _ensure_running(self, component: Component) -> None:
        timeout_s = self.settings.startup_timeout_s
        record = read_pid_file(component.pid_file)
        if record is not None:
            pid, start_time = record
            if alive(pid, start_time):
                deadline = time.monotonic() + timeout_s
                while not component.health():
                    if not alive(pid, start_time) or time.monotonic() >= deadline:
                        raise StartupError(
                            component.name,
                            f"pid {pid} from {component.pid_file} is not healthy after "
                            f"{timeout_s:g} s; stop it with `radcloud down`",
                            component.log_file,
                        )
                    time.sleep(_POLL_S)
                logger.info("%s already running (pid %d)", component.name, pid)
                return
            logger.info("removing stale pid file %s (pid %d is gone)", component.pid_file, pid)
            component.pid_file.unlink(missing_ok=True)
        check_ports_free(component.ports)
        if component.prepare is not None:
            component.prepare()
        self._spawn(component)

    def _spawn(self, component: Component) -> None:
        timeout_s = self.settings.startup_timeout_s * component.startup_factor
        private_directory(component.log_file.parent)
        with component.log_file.open("ab") as log:
            offset = log.tell()
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            command_line = " ".join(component.argv)
            log.write(f"--- {stamp} radcloud starts {component.name}: {command_line}\n".encode())
            log.flush()
            try:
                process = subprocess.Popen(
                    list(component.argv),
                    env={**os.environ, **component.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise StartupError(
                    component.name, f"cannot run {component.argv[0]!r}: {exc}", component.log_file
                ) from exc
        track_child(process)
        write_pid_file(component.pid_file, process.pid)
        logger.info(
            "started %s (pid %d), waiting for it to be healthy", component.name, process.pid
        )
        started = time.monotonic()
        while True:
            code = process.poll()
            if code is not None:
                component.pid_file.unlink(missing_ok=True)
                raise StartupError(
                    component.name,
                    f"exited with status {code} after {time.monotonic() - started:.1f} s\n"
                    f"{log_tail(component.log_file, offset)}",
                    component.log_file,
                )
            if component.health():
                logger.info("%s is healthy at %s", component.name, component.url)
                return
            if time.monotonic() - started >= timeout_s:
                terminate(process.pid, self.stop_timeout_s)
                component.pid_file.unlink(missing_ok=True)
                raise StartupError(
                    component.name,
                    f"not healthy at {component.url} within {timeout_s:g} s "
                    f"(RADCLOUD_STARTUP_TIMEOUT_S); it was stopped\n"
                    f"{log_tail(component.log_file, offset)}",
                    component.log_file,
                )
            time.sleep(_POLL_S)
