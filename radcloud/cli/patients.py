"""``radcloud patients``: the patient identity cross-reference (:mod:`core.identity`).

Identifiers are written ``HOSPITAL:ISSUER:PATIENTID`` (``HOSPITAL::PATIENTID`` without an
issuer; the patient ID may hold colons, hospital and issuer may not). The command line is a
platform operator's: it sees every hospital's identifiers. Every change is audited.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from core.db.models import PatientIdAuthorityKind
from core.identity import AssertionRetractions, PatientIdentifier, PatientIdentity
from core.security import Actor
from core.tenancy import HospitalScope
from radcloud.cli._common import audit_trail, command, console, database, get_settings

__all__ = ["register"]

patients_app = typer.Typer(
    help="Patient identity across hospitals (IHE PIX): identifiers, links, retractions, "
    "authorities.",
    no_args_is_help=True,
)
authority_app = typer.Typer(
    help="Assigning authorities whose patient IDs are valid across hospitals.",
    no_args_is_help=True,
)

ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the audit trail).")]
FromOption = Annotated[
    str,
    typer.Option(
        "--from",
        help="The other identifier the hospital's study named (HOSPITAL:ISSUER:PATIENTID).",
    ),
]


def _identity() -> PatientIdentity:
    return PatientIdentity(database(), audit_trail())


def _retractions() -> AssertionRetractions:
    return AssertionRetractions(database(), audit_trail())


def _identifier(text: str, hint: str) -> PatientIdentifier:
    try:
        return PatientIdentifier.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


@patients_app.command("list")
@command
def patients_list(
    hospital: Annotated[
        str | None, typer.Option("--hospital", help="Only patients this hospital holds.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
) -> None:
    """Patients and their identifiers, newest first."""
    table = Table("patient key", "identifiers")
    for key, identifiers in _identity().patients(
        HospitalScope.platform(), hospital=hospital, limit=limit
    ):
        table.add_row(key, "\n".join(str(i) for i in identifiers))
    console.print(table)


@patients_app.command("show")
@command
def patients_show(key: str) -> None:
    """A patient's identifiers, the explicit links between them and retracted assertions."""
    identity = _identity()
    current = identity.current_key(key)
    if current is None:
        console.print(f"[red]no patient {key}[/]")
        raise typer.Exit(1)
    if current != key:
        console.print(f"[yellow]{key} was merged into {current}[/]")
    console.print(f"patient [bold]{current}[/]")
    for identifier in identity.identifiers(current):
        console.print(f"  {identifier}  [dim]{identifier.system}[/]")
    links = identity.links(HospitalScope.platform(), patient_key=current)
    if links:
        table = Table("link", "kind", "between", "reason", "by", "when")
        for link in links:
            table.add_row(
                str(link.id),
                link.kind,
                f"{link.a}\n{link.b}",
                link.reason or "",
                link.created_by or "",
                link.created_at.isoformat(timespec="seconds"),
            )
        console.print(table)
    mine = set(identity.identifiers(current))
    retracted = [
        r
        for r in _retractions().retractions(HospitalScope.platform())
        if r.a in mine or r.b in mine
    ]
    if retracted:
        table = Table("retracted assertion", "reason", "by", "when")
        for retraction in retracted:
            table.add_row(
                f"{retraction.a}\n{retraction.b}",
                retraction.reason,
                retraction.created_by,
                retraction.created_at.isoformat(timespec="seconds"),
            )
        console.print(table)


@patients_app.command("link")
@command
def patients_link(a: str, b: str, reason: ReasonOption) -> None:
    """Link identifiers A and B as one patient (an operator's manual link; audited)."""
    key = _identity().link(_identifier(a, "A"), _identifier(b, "B"), reason, actor=Actor.cli())
    console.print(f"{a} and {b}: patient [bold]{key}[/]")


@patients_app.command("unlink")
@command
def patients_unlink(identifier: str, reason: ReasonOption) -> None:
    """Undo the manual links of IDENTIFIER: it gets its own patient key back (audited).

    Links of an assigning authority are undone only with the rule
    (``radcloud patients authority remove``); those a hospital's study asserted, by
    ``radcloud patients retract``.
    """
    key = _identity().unlink(_identifier(identifier, "IDENTIFIER"), reason, actor=Actor.cli())
    console.print(f"{identifier}: patient [bold]{key}[/]")


@patients_app.command("retract")
@command
def patients_retract(identifier: str, other: FromOption, reason: ReasonOption) -> None:
    """Retract the link of IDENTIFIER with --from that their hospital's studies asserted
    (OtherPatientIDsSequence): they are split, and later studies naming them together do not
    link them again until the retraction is lifted (audited)."""
    key, other_key = _retractions().retract(
        _identifier(identifier, "IDENTIFIER"),
        _identifier(other, "--from"),
        reason,
        actor=Actor.cli(),
    )
    console.print(f"{identifier}: patient [bold]{key}[/]; {other}: patient [bold]{other_key}[/]")
    if key == other_key:
        console.print("[yellow]still one patient: another rule joins them[/]")


@patients_app.command("retractions")
@command
def patients_retractions(
    identifier: Annotated[str | None, typer.Argument(help="Only this identifier's.")] = None,
) -> None:
    """The retracted assertions in force, and how many later studies asserted them again."""
    table = Table("between", "reason", "by", "when", "asserted by", "asserted again")
    chosen = _identifier(identifier, "IDENTIFIER") if identifier is not None else None
    for retraction in _retractions().retractions(HospitalScope.platform(), identifier=chosen):
        table.add_row(
            f"{retraction.a}\n{retraction.b}",
            retraction.reason,
            retraction.created_by,
            retraction.created_at.isoformat(timespec="seconds"),
            retraction.asserted_by or "",
            str(retraction.withheld),
        )
    console.print(table)


@patients_app.command("lift-retraction")
@command
def patients_lift_retraction(identifier: str, other: FromOption, reason: ReasonOption) -> None:
    """Lift the retraction of IDENTIFIER with --from: their hospital's assertion links them
    again (audited)."""
    key = _retractions().lift(
        _identifier(identifier, "IDENTIFIER"),
        _identifier(other, "--from"),
        reason,
        actor=Actor.cli(),
    )
    console.print(f"{identifier} and {other}: patient [bold]{key}[/]")


@patients_app.command("backfill")
@command
def patients_backfill(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read and count; register nothing.")
    ] = False,
) -> None:
    """Register the identifiers of studies stored before the cross-reference existed
    (migration 0008): one instance of each is read from the archive and registered as the
    gateway does. A second run finds nothing to do; unreadable studies are listed (audited
    once per run)."""
    from rich.progress import Progress

    from core.archive import open_archive
    from core.secrets import load_secrets
    from dicom_gateway.backfill import IdentityBackfill

    settings = get_settings()
    with open_archive(settings, load_secrets(settings)) as archive:
        backfill = IdentityBackfill(database(), audit_trail(), archive)
        studies = backfill.pending()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("reading studies", total=len(studies))
            report = backfill.run(
                studies,
                actor=Actor.cli(),
                dry_run=dry_run,
                on_study=lambda _study: progress.advance(task),
            )
    verb = "would register" if dry_run else "registered"
    console.print(
        f"{report.pending} studies without identifiers: {verb} {report.registered} "
        f"({len(report.new_identifiers)} new identifiers, {report.withheld_links} retracted "
        f"links withheld), {len(report.skipped)} skipped"
    )
    if report.without_owner or report.without_patient_id:
        console.print(
            f"left out: {report.without_owner} studies without an owner (radcloud studies "
            f"assign-owner), {report.without_patient_id} without a Patient ID"
        )
    if report.skipped:
        table = Table("skipped study", "why")
        for skipped in report.skipped:
            table.add_row(skipped.study_instance_uid, skipped.reason)
        console.print(table)


@authority_app.command("add")
@command
def authority_add(
    issuer: str,
    kind: Annotated[
        PatientIdAuthorityKind, typer.Option("--kind", help="How wide its IDs are valid.")
    ],
) -> None:
    """Register ISSUER (IssuerOfPatientID) as enterprise-wide or national: its IDs of one
    value are one patient at every hospital (audited)."""
    count = _identity().add_authority(issuer, kind, actor=Actor.cli())
    console.print(f"authority [bold]{issuer}[/] ({kind}): {count} identifiers relabelled")


@authority_app.command("list")
@command
def authority_list() -> None:
    """The registered assigning authorities."""
    table = Table("issuer", "kind", "by", "since")
    for rule in _identity().authorities():
        table.add_row(
            rule.issuer_of_patient_id,
            rule.kind,
            rule.created_by or "",
            rule.created_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@authority_app.command("remove")
@command
def authority_remove(issuer: str) -> None:
    """Remove ISSUER's rule: patients it joined are split again (audited)."""
    count = _identity().remove_authority(issuer, actor=Actor.cli())
    console.print(f"authority [bold]{issuer}[/] removed: {count} identifiers relabelled")


def register(app: typer.Typer) -> None:
    """Add ``patients`` to ``app``."""
    patients_app.add_typer(authority_app, name="authority")
    app.add_typer(patients_app, name="patients")
