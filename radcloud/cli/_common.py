"""Shared plumbing for the command line: settings loading, logging, error exits."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler

from core.audit import AuditTrail
from core.config import Settings, load_settings
from core.db import Database, upgrade
from core.exceptions import RadcloudError
from core.secrets import load_secrets

__all__ = [
    "audit_trail",
    "command",
    "console",
    "database",
    "fail",
    "get_settings",
    "reporting_errors",
    "setup_logging",
]

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` in red on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@cache
def get_settings() -> Settings:
    """The validated settings; a bad value exits with status 2 and names the key."""
    try:
        return load_settings()
    except RadcloudError as exc:
        fail(str(exc), code=2)


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger for a CLI process (libraries only call ``getLogger``)."""
    logging.basicConfig(
        level=level or get_settings().log_level,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn radcloud's own errors into a one-line message and exit status 1."""
    try:
        yield
    except RadcloudError as exc:
        fail(str(exc))


@cache
def database() -> Database:
    """The application database, migrated to the newest schema."""
    with reporting_errors():
        db = Database.from_settings(get_settings())
        upgrade(db)
        return db


@cache
def audit_trail() -> AuditTrail:
    """The audit trail, where the services record what commands do (as :meth:`Actor.cli`)."""
    with reporting_errors():
        return AuditTrail.from_secrets(database(), load_secrets(get_settings()))


def command(func: Callable[..., None]) -> Callable[..., None]:
    """Decorator: run a CLI command with radcloud errors reported cleanly."""

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> None:
        with reporting_errors():
            func(*args, **kwargs)

    return wrapper
