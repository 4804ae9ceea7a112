"""``radcloud users``, ``radcloud token``, ``radcloud apikeys``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from core.db.models import Role
from core.exceptions import AuthenticationError
from core.secrets import load_secrets
from core.security import Accounts, Actor, TokenService, UserInfo
from radcloud.cli._common import audit_trail, command, console, database, get_settings

__all__ = ["register"]

users_app = typer.Typer(help="Manage users and their roles.", no_args_is_help=True)
apikeys_app = typer.Typer(help="Manage service-account API keys.", no_args_is_help=True)

RoleOption = Annotated[Role, typer.Option("--role", help="What the account may do.")]
PlatformOption = Annotated[
    bool,
    typer.Option(
        "--platform-operator",
        help="Sees every hospital's studies (runs the platform; assigned no hospital).",
    ),
]


def _accounts() -> Accounts:
    return Accounts(database(), audit_trail())


@users_app.command("add")
@command
def users_add(
    name: str,
    role: RoleOption,
    password: Annotated[
        bool, typer.Option("--password", help="Prompt for a sign-in password (12+ characters).")
    ] = False,
    hospital: Annotated[
        list[str] | None,
        typer.Option(
            "--hospital", help="A hospital whose studies the user reads (repeat for several)."
        ),
    ] = None,
    platform_operator: PlatformOption = False,
) -> None:
    """Create a user with a role, assigned hospitals or a platform operator."""
    hospitals = hospital or []
    if hospitals and platform_operator:
        raise typer.BadParameter("give --hospital or --platform-operator, not both")
    secret = (
        typer.prompt("Password", hide_input=True, confirmation_prompt=True) if password else None
    )
    try:
        user = _accounts().add_user(
            name,
            role,
            secret,
            hospitals=hospitals,
            platform_operator=platform_operator,
            actor=Actor.cli(),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--password") from exc
    console.print(
        f"user [bold]{user.name}[/] created with role [bold]{user.role}[/], {_scope(user)}"
    )
    if not hospitals and not platform_operator:
        console.print(
            "[yellow]the user sees no study until assigned a hospital: "
            f"radcloud users assign {name} HOSPITAL[/]"
        )


def _scope(user: UserInfo) -> str:
    if user.platform_operator:
        return "platform operator"
    if not user.hospitals:
        return "no hospital"
    names = [
        f"{name} (identified)" if name in user.identified_hospitals else name
        for name in user.hospitals
    ]
    return f"hospitals: {', '.join(names)}"


@users_app.command("assign")
@command
def users_assign(
    name: str,
    hospital: str,
    identified: Annotated[
        bool,
        typer.Option(
            "--identified",
            help="An ml_engineer also sees HOSPITAL's identified data (without: de-identified "
            "only). Assigning again without it withdraws the grant.",
        ),
    ] = False,
) -> None:
    """Let user NAME read the studies of HOSPITAL as well."""
    try:
        user = _accounts().assign_hospital(name, hospital, identified=identified, actor=Actor.cli())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from exc
    console.print(f"user [bold]{name}[/]: {_scope(user)}")


@users_app.command("unassign")
@command
def users_unassign(name: str, hospital: str) -> None:
    """Stop user NAME reading the studies of HOSPITAL (at once, tokens included)."""
    user = _accounts().unassign_hospital(name, hospital, actor=Actor.cli())
    console.print(f"user [bold]{name}[/]: {_scope(user)}")


@users_app.command("list")
@command
def users_list() -> None:
    """List users."""
    table = Table("name", "role", "sees", "password", "disabled")
    for user in _accounts().list_users():
        table.add_row(
            user.name,
            user.role,
            _scope(user),
            "yes" if user.has_password else "no",
            str(user.disabled),
        )
    console.print(table)


@users_app.command("disable")
@command
def users_disable(name: str) -> None:
    """Disable a user; their tokens stop working at once."""
    _accounts().set_disabled(name, True, actor=Actor.cli())
    console.print(f"user [bold]{name}[/] disabled")


@command
def token(
    name: str,
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Lifetime in minutes (default from settings).")
    ] = None,
) -> None:
    """Print a bearer token for user NAME."""
    settings = get_settings()
    service = TokenService(settings, load_secrets(settings).jwt_signing_key)
    lifetime = dt.timedelta(minutes=ttl) if ttl else None
    try:
        issued = _accounts().issue_token(name, service, actor=Actor.cli(), ttl=lifetime)
    except AuthenticationError as exc:
        raise typer.BadParameter(exc.reason, param_hint="NAME") from exc
    typer.echo(issued)


@apikeys_app.command("create")
@command
def apikeys_create(
    name: str,
    role: RoleOption,
    hospital: Annotated[
        str | None,
        typer.Option("--hospital", help="The hospital the key stores and reads for."),
    ] = None,
    platform_operator: PlatformOption = False,
) -> None:
    """Create an API key for service account NAME of one hospital (or a platform operator's);
    it is printed this once."""
    try:
        new = _accounts().create_api_key(
            name, role, hospital=hospital, platform_operator=platform_operator, actor=Actor.cli()
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--hospital") from exc
    scope = "platform operator" if new.platform_operator else (new.hospital or "no hospital")
    console.print(
        f"API key for [bold]{new.name}[/] ({new.role}, {scope}); "
        "store it now, it is not shown again:",
    )
    typer.echo(new.key)


@apikeys_app.command("list")
@command
def apikeys_list() -> None:
    """List API keys (never the keys themselves)."""
    table = Table("name", "role", "sees", "revoked")
    for name, role, revoked, scope in _accounts().list_api_keys():
        table.add_row(name, role, scope, str(revoked))
    console.print(table)


@apikeys_app.command("revoke")
@command
def apikeys_revoke(name: str) -> None:
    """Revoke an API key."""
    _accounts().revoke_api_key(name, actor=Actor.cli())
    console.print(f"API key [bold]{name}[/] revoked")


def register(app: typer.Typer) -> None:
    """Add the command groups to ``app``."""
    app.add_typer(users_app, name="users")
    app.add_typer(apikeys_app, name="apikeys")
    app.command("token")(token)
