"""``radcloud senders``, ``radcloud destinations`` and ``radcloud quarantine``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.config import GatewayEdge, Mode
from core.security import Actor
from dicom_gateway.edge.peers import wait_until_admitted
from dicom_gateway.exceptions import GatewayError
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.senders import SenderRegistry
from dicom_gateway.spool import Spool
from radcloud.cli._common import audit_trail, command, console, database, fail, get_settings

__all__ = ["register"]

senders_app = typer.Typer(
    help="DICOM senders allowed to store to the gateway.", no_args_is_help=True
)
destinations_app = typer.Typer(help="C-MOVE destinations.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Instances the gateway refused.", no_args_is_help=True)


def _registry() -> SenderRegistry:
    return SenderRegistry(database(), audit_trail(), edge=get_settings().gateway_edge)


def _admitted(ae_title: str) -> str:
    """With the Orthanc edge running, wait until its plugin has mirrored ``ae_title`` into
    Orthanc's peer table (within a second), so that the command returns when it takes effect;
    a note for the message."""
    settings = get_settings()
    if settings.gateway_edge is not GatewayEdge.ORTHANC:
        return ""  # the pynetdicom edge reads the registry at each association
    if wait_until_admitted(settings, [ae_title]):
        return "; the Orthanc edge admits it now"
    return "; the Orthanc edge admits it once it runs (it reads the registry every second)"


def _quarantine() -> Quarantine:
    return Quarantine(get_settings().paths.quarantine_dir, audit_trail())


@senders_app.command("add")
@command
def senders_add(
    ae_title: str,
    hospital: Annotated[str, typer.Option("--hospital", help="The sender's hospital.")],
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Only accept associations from this host: a name, an address or a CIDR "
            "network (10.1.2.0/24). In prod mode a sender needs a host, or a TLS client "
            "certificate with CN = AE title and O = hospital.",
        ),
    ] = None,
) -> None:
    """Register a calling AE title for a hospital."""
    try:
        sender = _registry().add_sender(ae_title, hospital, host, actor=Actor.cli())
    except ValueError as exc:
        hint = "--host" if host is not None and "host" in str(exc) else "AE_TITLE"
        raise typer.BadParameter(str(exc), param_hint=hint) from exc
    if sender.host:
        where = f" from {sender.host}"
    elif get_settings().mode is Mode.PROD:
        where = (
            f" (no host: prod mode admits it only with a TLS client certificate naming "
            f"CN={sender.ae_title}, O={sender.hospital})"
        )
    else:
        where = " from any host (dev mode)"
    console.print(
        f"sender [bold]{sender.ae_title}[/] ({sender.hospital}){where} registered"
        + _admitted(sender.ae_title)
    )


@senders_app.command("list")
@command
def senders_list() -> None:
    """List registered senders."""
    table = Table("AE title", "hospital", "host")
    for sender in _registry().list_senders():
        table.add_row(sender.ae_title, sender.hospital, sender.host or "none")
    console.print(table)


@senders_app.command("remove")
@command
def senders_remove(ae_title: str) -> None:
    """Unregister a sender."""
    _registry().remove_sender(ae_title, actor=Actor.cli())
    console.print(f"sender [bold]{ae_title}[/] removed")


@destinations_app.command("add")
@command
def destinations_add(
    ae_title: str,
    host: Annotated[str, typer.Option("--host", help="Address of the destination.")],
    port: Annotated[int, typer.Option("--port", help="Its DICOM port.")],
    hospital: Annotated[str | None, typer.Option("--hospital")] = None,
) -> None:
    """Register a C-MOVE destination."""
    try:
        dest = _registry().add_destination(ae_title, host, port, hospital, actor=Actor.cli())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(
        f"destination [bold]{dest.ae_title}[/] at {dest.host}:{dest.port} registered"
        + _admitted(dest.ae_title)
    )


@destinations_app.command("list")
@command
def destinations_list() -> None:
    """List C-MOVE destinations."""
    table = Table("AE title", "host", "port", "hospital")
    for dest in _registry().list_destinations():
        table.add_row(dest.ae_title, dest.host, str(dest.port), dest.hospital or "-")
    console.print(table)


@destinations_app.command("remove")
@command
def destinations_remove(ae_title: str) -> None:
    """Unregister a C-MOVE destination."""
    _registry().remove_destination(ae_title, actor=Actor.cli())
    console.print(f"destination [bold]{ae_title}[/] removed")


@quarantine_app.command("list")
@command
def quarantine_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List quarantined instances, oldest first."""
    entries = _quarantine().list()
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry.to_json()))
        return
    table = Table("id", "when", "from", "source", "reason")
    for entry in entries:
        table.add_row(
            entry.entry_id,
            entry.quarantined_at[:19],
            entry.sender_ae_title or "-",
            entry.source,
            entry.reason,
        )
    console.print(table)


@quarantine_app.command("show")
@command
def quarantine_show(
    entry_id: str,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the instance's bytes here.")
    ] = None,
) -> None:
    """Show one entry's reason and origin."""
    quarantine = _quarantine()
    try:
        if out is None:
            entry = quarantine.show(entry_id)
        else:
            entry = quarantine.export(entry_id, out, actor=Actor.cli())
    except GatewayError as exc:
        fail(str(exc))
    typer.echo(json.dumps(entry.to_json(), indent=2))


@quarantine_app.command("release")
@command
def quarantine_release(entry_id: str) -> None:
    """Send an entry to Orthanc anyway (through the spool); it may come back if Orthanc refuses.
    It joins its study as the hospital that sent it, claiming a study not held yet."""
    try:
        spooled = _quarantine().release(
            Spool.from_settings(get_settings()),
            entry_id,
            actor=Actor.cli(),
            ownership=StudyOwnership(database(), audit_trail()),
        )
    except GatewayError as exc:
        fail(str(exc))
    console.print(f"released {entry_id}: queued for Orthanc as {spooled.path.name}")


@quarantine_app.command("delete")
@command
def quarantine_delete(entry_id: str) -> None:
    """Delete an entry for good."""
    try:
        _quarantine().delete(entry_id, actor=Actor.cli())
    except GatewayError as exc:
        fail(str(exc))
    console.print(f"deleted {entry_id}")


def register(app: typer.Typer) -> None:
    """Add the command groups to ``app``."""
    app.add_typer(senders_app, name="senders")
    app.add_typer(destinations_app, name="destinations")
    app.add_typer(quarantine_app, name="quarantine")
