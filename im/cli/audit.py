"""``im audit``: the audit log of mutations and denials."""

from __future__ import annotations

import click

from im.cli.context import app
from im.cli.output import emit_rows, format_option

AUDIT_COLUMNS = (
    "id",
    "at",
    "principal",
    "via",
    "action",
    "target",
    "decision",
    "reason",
    "outcome",
    "error",
)


@click.command()
@click.option("--principal", metavar="NAME", help="Only what this principal did or tried.")
@click.option("--action", metavar="ACTION", help="Only this action, or a family (e.g. incident).")
@click.option("--denied", is_flag=True, help="Only denials.")
@click.option("--since", metavar="WHEN", help="Only entries since a date, time or age (30d, 12h).")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Show at most this many entries, the newest.",
)
@format_option
def audit(
    principal: str | None,
    action: str | None,
    denied: bool,
    since: str | None,
    limit: int,
    fmt: str,
) -> None:
    """Show the audit log (administrators only): every mutation with how it ended, and
    every denial, with principal, action, target, decision, reason and time. Secrets never
    appear in it.

    An allowed change is logged before it runs; `outcome` is ok or failed when it ended,
    empty when the process was cut short.
    """
    from im.clock import format_time
    from im.store import audit as entries
    from im.sync.reconcile import parse_since

    ctx = app()
    ctx.authorize("audit.read")
    start = None if since is None else format_time(parse_since(since, ctx.clock.now(), "--since"))
    rows = entries.entries(
        ctx.db, principal=principal, action=action, denied_only=denied, since=start, limit=limit
    )
    emit_rows(rows, AUDIT_COLUMNS, fmt)
