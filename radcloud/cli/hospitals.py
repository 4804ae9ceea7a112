"""``radcloud hospitals``: the tenants of this deployment and the remote DICOMweb nodes
(:mod:`core.nodes`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.nodes import NodeCredentials, NodeRegistry
from core.security import Actor
from radcloud.cli._common import audit_trail, command, console, database, fail, get_settings

__all__ = ["register"]

hospitals_app = typer.Typer(
    help="Hospitals: this deployment's tenants and remote DICOMweb nodes.", no_args_is_help=True
)


def _registry() -> NodeRegistry:
    return NodeRegistry(database(), audit_trail(), get_settings())


def _read_stdin(option: str) -> str:
    """The first line of standard input, without its line end; empty is refused."""
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise typer.BadParameter("standard input was empty", param_hint=option)
    return value


@hospitals_app.command("add")
@command
def hospitals_add(
    name: str,
    dicomweb: Annotated[
        str,
        typer.Option(
            "--dicomweb",
            help="The node's DICOMweb service root, e.g. https://pacs.example.org/dicom-web.",
        ),
    ],
    username: Annotated[
        str | None, typer.Option("--username", help="HTTP basic user (with --password-stdin).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the basic password from stdin.")
    ] = False,
    token_stdin: Annotated[
        bool, typer.Option("--token-stdin", help="Read a bearer token from stdin.")
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca-file", help="PEM file of the CAs that sign the node's certificate."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", help="Read timeout in seconds (default RADCLOUD_REMOTE_READ_TIMEOUT_S)."
        ),
    ] = None,
) -> None:
    """Register a remote DICOMweb node (another radcloud, a hospital's Orthanc, dcm4chee)."""
    if token_stdin and (username is not None or password_stdin):
        raise typer.BadParameter("give --username/--password-stdin or --token-stdin, not both")
    if (username is None) != (not password_stdin):
        raise typer.BadParameter("--username and --password-stdin go together")
    if token_stdin:
        credentials = NodeCredentials(token=_read_stdin("--token-stdin"))
    elif username is not None:
        credentials = NodeCredentials(username, _read_stdin("--password-stdin"))
    else:
        credentials = NodeCredentials()
    try:
        node = _registry().add_node(
            name,
            dicomweb,
            credentials=credentials,
            ca_file=ca_file,
            timeout_s=timeout,
            actor=Actor.cli(),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(
        f"remote node [bold]{node.name}[/] registered at {node.dicomweb_url} "
        f"({node.auth} authentication); try: radcloud hospitals check {node.name}",
        highlight=False,
    )


@hospitals_app.command("list")
@command
def hospitals_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per hospital, for scripts.")
    ] = False,
) -> None:
    """List the hospitals: tenants, and remote nodes with their DICOMweb URL (no secrets)."""
    sites = _registry().sites()
    if as_json:
        for site in sites:
            node = site.remote
            entry: dict[str, object] = {"name": site.name, "kind": "tenant"}
            if node is not None:
                entry |= {
                    "kind": "remote",
                    "dicomweb_url": node.dicomweb_url,
                    "auth": node.auth,
                    "timeout_s": node.timeout_s,
                    "ca_file": str(node.ca_file) if node.ca_file else None,
                }
            typer.echo(json.dumps(entry))
        return
    table = Table("name", "kind", "auth", "timeout", "CA file")
    table.add_column("DICOMweb URL", overflow="fold")
    for site in sites:
        node = site.remote
        if node is None:
            table.add_row(site.name, "tenant", "-", "-", "-", "-")  # fmt: skip
        else:
            timeout = f"{node.timeout_s:g} s" if node.timeout_s else "default"
            ca = str(node.ca_file) if node.ca_file else "system"
            table.add_row(site.name, "remote", node.auth, timeout, ca, node.dicomweb_url)
    console.print(table)


@hospitals_app.command("remove")
@command
def hospitals_remove(name: str) -> None:
    """Unregister a remote node and forget its credentials."""
    _registry().remove_node(name, actor=Actor.cli())
    console.print(f"remote node [bold]{name}[/] removed")


@hospitals_app.command("check")
@command
def hospitals_check(name: str) -> None:
    """Ask a remote node's QIDO-RS; print ok, refused, unreachable, timeout or error."""
    check = _registry().check_node(name)
    line = f"{check.node}: {check.status} ({check.elapsed_s:.2f} s): {check.reason}"
    if not check.ok:
        fail(line)
    console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the command group to ``app``."""
    app.add_typer(hospitals_app, name="hospitals")
