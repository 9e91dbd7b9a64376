"""``im conflict ...``: simultaneous edits between the platform and an integration."""

from __future__ import annotations

import click

from im.cli.context import app
from im.cli.output import emit_object, emit_rows, format_option, note

COLUMNS = (
    "id",
    "status",
    "incident",
    "integration",
    "field",
    "platform_value",
    "external_value",
    "winner",
    "detected_at",
)


@click.group()
def conflict() -> None:
    """Review and resolve simultaneous edits (bidirectional integrations)."""


@conflict.command("list")
@click.option(
    "--status",
    type=click.Choice(["pending", "resolved", "ignored"]),
    default="pending",
    show_default=True,
    help="Which conflicts to show.",
)
@click.option("--integration", "integration_name", help="Only this integration's conflicts.")
@format_option
def list_(status: str, integration_name: str | None, fmt: str) -> None:
    """List conflicts (pending ones by default)."""
    from im.config import integrations as config
    from im.sync import conflicts

    ctx = app()
    ctx.authorize("conflict.list", integration=integration_name)
    integration_id = config.find(ctx.db, integration_name)["id"] if integration_name else None
    visible = ctx.access.visible("conflict.list")
    rows = [
        r for r in conflicts.listing(ctx.db, status, integration_id) if r["integration"] in visible
    ]
    emit_rows(rows, COLUMNS if fmt == "table" else conflicts.VIEW_KEYS, fmt)
    if fmt == "table" and not rows:
        note(f"no {status} conflicts")


@conflict.command()
@click.argument("conflict_id", metavar="ID")
@format_option
def show(conflict_id: str, fmt: str) -> None:
    """Show a conflict: both values, both times and actors, incident, field, integration."""
    from im.sync import conflicts

    ctx = app()
    ctx.authorize("conflict.show", conflict=conflict_id)
    emit_object(conflicts.view(conflicts.get(ctx.db, conflict_id)), fmt)


@conflict.command()
@click.argument("conflict_id", metavar="ID")
@click.option("--use-platform", "choice", flag_value="platform", help="The platform's value wins.")
@click.option("--use-external", "choice", flag_value="external", help="The external value wins.")
@click.option(
    "--ignore",
    "choice",
    flag_value="ignore",
    help="Keep both sides as they are (an accepted divergence).",
)
def resolve(conflict_id: str, choice: str | None) -> None:
    """Resolve a pending conflict; the winner is made true on both sides."""
    from im.errors import UsageError
    from im.sync import conflicts

    if choice is None:
        raise UsageError("choose one of --use-platform, --use-external or --ignore")
    ctx = app()
    ctx.authorize("conflict.resolve", conflict=conflict_id)
    done = conflicts.resolve(ctx.db, ctx.clock, ctx.principal, conflict_id, choice)
    click.echo(f"conflict-{done['id']} {conflicts.outcome(choice)}")


@conflict.command()
@click.option(
    "--integration",
    "integration_name",
    metavar="NAME",
    help="Start filtered to this integration's conflicts.",
)
@click.option("--incident", metavar="INC-n", help="Start filtered to this incident's conflicts.")
def review(integration_name: str | None, incident: str | None) -> int:
    """Review pending conflicts in a terminal app: both values side by side with times and
    actors; p, e or i resolves with the platform value, the external value or ignores
    (each confirmed); / filters, r refreshes (also every few seconds), q quits."""
    import sys

    from im import incidents
    from im.config import integrations as config
    from im.errors import UsageError

    ctx = app()
    ctx.authorize("conflict.list", integration=integration_name)
    terms = []
    if integration_name:
        terms.append(config.find(ctx.db, integration_name)["name"])
    if incident:
        terms.append(incidents.get(ctx.db, incident).display_id)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(
            "im conflict review needs a terminal", "use `im conflict list` in scripts and pipes"
        )
    from im.tui.app import ConflictReviewApp  # Textual only now: `im --help` stays fast

    tui = ConflictReviewApp(ctx.path, ctx.clock, ctx.principal, filter_text=" ".join(terms))
    tui.run()
    return tui.return_code or 0
