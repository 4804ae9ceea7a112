"""``radcloud studies``: what operators do to a study's record itself (its owning hospital)."""

from __future__ import annotations

import typer

from core.security import Actor
from core.tenancy import assign_study_owner
from radcloud.cli._common import audit_trail, command, console

__all__ = ["register"]

studies_app = typer.Typer(help="Studies' records (owning hospital).", no_args_is_help=True)


@studies_app.command("assign-owner")
@command
def studies_assign_owner(uid: str, hospital: str) -> None:
    """Give study UID, stored before owners were recorded, its owning HOSPITAL (audited).

    An owner is never changed: a study that has one is refused. Until it has one, the study is
    visible to platform operators only and the gateway takes no new instance of it.
    """
    try:
        assign_study_owner(audit_trail(), uid, hospital, actor=Actor.cli())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="HOSPITAL") from exc
    console.print(f"study [bold]{uid}[/]: owned by {hospital}")


def register(app: typer.Typer) -> None:
    """Add ``studies`` to ``app``."""
    app.add_typer(studies_app, name="studies")
