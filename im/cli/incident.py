"""``im incident ...``: create, update, comment on and read platform incidents."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from im.cli.context import app
from im.cli.output import emit_object, emit_rows, format_option, warn
from im.model import DEFAULT_LIST_LIMIT, Incident, Priority, Severity, Status

if TYPE_CHECKING:
    from im import incidents
    from im.sync.outbound import Queued

INCIDENT_COLUMNS = ("id", "status", "severity", "priority", "title", "assigned_to", "updated_at")


def incident_json(incident: Incident) -> dict[str, Any]:
    return {**asdict(incident), "id": incident.display_id}


def _queued_json(queued: list[Queued]) -> list[dict[str, Any]]:
    return [
        {
            "integration": q.integration,
            "operation": q.operation,
            "fields": list(q.fields),
            "journal_entries": q.journal,
            "merged": q.merged,
        }
        for q in queued
    ]


def _warn_without_daemon(change: incidents.Change) -> None:
    """Nothing is sent from a CLI command: say so when no daemon will send it."""
    if not change.queued:
        return
    from im.store import daemon

    ctx = app()
    if not daemon.status(ctx.db, ctx.clock.now()).running:
        warn("no daemon is running: the change waits in the outbox until `im daemon` runs")


def _report(change: incidents.Change, verb: str, fmt: str) -> None:
    _warn_without_daemon(change)
    if fmt != "table":
        emit_object(
            {
                "incident": incident_json(change.incident),
                "changes": [{"field": f, "old": o, "new": n} for f, o, n in change.changes],
                "queued": _queued_json(change.queued),
            },
            fmt,
        )
        return
    incident = change.incident
    if not change.changes:
        click.echo(f"{incident.display_id} unchanged")
        return
    click.echo(f"{verb} {incident.display_id}: {incident.title}")
    if verb == "updated":
        for field, old, new in change.changes:
            click.echo(f"  {field}: {old or '(empty)'} -> {new or '(empty)'}")
    for q in change.queued:
        what = ", ".join(q.fields)
        if q.journal:
            what = ", ".join(
                filter(None, [what, f"{q.journal} journal entr{'y' if q.journal == 1 else 'ies'}"])
            )
        merged = " (merged into the waiting change)" if q.merged else ""
        click.echo(f"  queued for {q.integration}: {q.operation} of {what}{merged}")
    if not change.queued:
        click.echo("  queued for no integration")


def _field_options(func: Any) -> Any:
    options = [
        click.option("--title", help="Short summary, 1-255 characters."),
        click.option("--description", help="Longer text."),
        click.option(
            "--severity", type=click.Choice([s.value for s in Severity]), help="sev1 is worst."
        ),
        click.option(
            "--priority", type=click.Choice([p.value for p in Priority]), help="p1 is highest."
        ),
        click.option("--assigned-to", help='Assignee email ("" to unassign).'),
        click.option("--escalation-policy", help='Escalation policy id ("" to clear).'),
        click.option("--commander", help='Principal commanding the incident ("" to clear).'),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _given(**values: str | None) -> dict[str, str]:
    return {name: value for name, value in values.items() if value is not None}


@click.group()
def incident() -> None:
    """Create, update and read platform incidents."""


@incident.command()
@_field_options
@format_option
def create(fmt: str, **values: str | None) -> None:
    """Create an incident (status triggered; severity sev3 and priority p3 unless given).

    It is queued for every integration whose direction allows outbound, with every field
    that integration maps.
    """
    from im import incidents

    ctx = app()
    ctx.authorize("incident.create")
    change = incidents.create(ctx.db, ctx.clock, ctx.principal, _given(**values))
    _report(change, "created", fmt)


@incident.command()
@click.argument("incident_id", metavar="INC-N")
@_field_options
@click.option("--status", type=click.Choice([s.value for s in Status]), help="New status.")
@format_option
def update(incident_id: str, fmt: str, **values: str | None) -> None:
    """Change fields of an incident.

    Status moves forward (triggered, acknowledged, resolved, closed), may skip steps, and
    goes back only from resolved to triggered (reopen); closed is final.
    """
    from im import incidents

    ctx = app()
    ctx.authorize("incident.update", incident=incident_id)
    change = incidents.update(ctx.db, ctx.clock, ctx.principal, incident_id, _given(**values))
    _report(change, "updated", fmt)


@incident.command()
@click.argument("incident_id", metavar="INC-N")
@click.argument("text")
@click.option("--work-note", is_flag=True, help="An internal work note instead of a comment.")
@format_option
def comment(incident_id: str, text: str, work_note: bool, fmt: str) -> None:
    """Add a comment (customer-visible) or, with --work-note, an internal work note.

    TEXT "-" reads the text from standard input.
    """
    body = sys.stdin.read() if text == "-" else text
    from im import incidents

    ctx = app()
    ctx.authorize("incident.comment", incident=incident_id)
    kind = "work_notes" if work_note else "comments"
    change = incidents.comment(ctx.db, ctx.clock, ctx.principal, incident_id, kind, body)
    _report(change, "commented on", fmt)


@incident.command()
@click.argument("incident_id", metavar="INC-N")
@format_option
def show(incident_id: str, fmt: str) -> None:
    """Show an incident, its journal, its links and what is queued for which integration."""
    from im import incidents

    ctx = app()
    ctx.authorize("incident.show", incident=incident_id)
    details = incidents.details(ctx.db, incident_id)
    queued = [
        {
            "integration": row["integration"],
            "operation": row["operation"],
            "state": row["state"],
            "fields": sorted(row["fields"]),
            "journal_entries": len(row["journal"]),
            "attempts": row["attempts"],
            "next_attempt_at": row["next_attempt_at"],
        }
        for row in details["queued"]
    ]
    if fmt != "table":
        emit_object(
            {
                **incident_json(details["incident"]),
                "journal": details["journal"],
                "links": details["links"],
                "queued": queued,
            },
            fmt,
        )
        return
    emit_object(incident_json(details["incident"]), fmt)
    for entry in details["journal"]:
        label = "work note" if entry["kind"] == "work_notes" else "comment"
        click.echo(f"\n{label} by {entry['actor']} at {entry['created_at']} ({entry['source']}):")
        click.echo(f"  {entry['body']}")
    if details["links"]:
        click.echo("\nlinked:")
        emit_rows(details["links"], ("integration", "external_id", "external_key", "state"), fmt)
    click.echo("\nqueued:" if queued else "\nqueued: nothing")
    if queued:
        emit_rows(
            queued,
            (
                "integration",
                "operation",
                "state",
                "fields",
                "journal_entries",
                "attempts",
                "next_attempt_at",
            ),
            fmt,
        )


@incident.command("list")
@click.option(
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_LIST_LIMIT,
    show_default=True,
    help="How many, newest first.",
)
@click.option("--all", "show_all", is_flag=True, help="Every incident.")
@click.option("--status", type=click.Choice([s.value for s in Status]), help="Only this status.")
@format_option
def list_(limit: int, show_all: bool, status: str | None, fmt: str) -> None:
    """List incidents, newest first (the newest 50 unless --limit or --all)."""
    from im import incidents

    ctx = app()
    ctx.authorize("incident.list")
    found = incidents.listing(ctx.db, None if show_all else limit, status)
    emit_rows([incident_json(i) for i in found], INCIDENT_COLUMNS, fmt)


TIMELINE_COLUMNS = ("time", "what", "origin", "sent to / acknowledged")


def _short(text: str | None, width: int = 60) -> str:
    one_line = " ".join((text or "").split())
    return one_line if len(one_line) <= width else one_line[: width - 3] + "..."


def _what(entry: dict[str, Any]) -> str:
    kind = entry["kind"]
    if kind == "change":
        if entry["old_value"] is None:
            return f"{entry['field']} = {_short(entry['new_value']) or '(empty)'}"
        old, new = _short(entry["old_value"]) or "(empty)", _short(entry["new_value"]) or "(empty)"
        return f"{entry['field']}: {old} -> {new}"
    if kind == "journal":
        label = "work note" if entry["field"] == "work_notes" else "comment"
        return f"{label}: {_short(entry['new_value'])}"
    if kind == "conflict":
        return f"{entry['ref']} on {entry['field']} ({entry['state']}): {entry['detail']}"
    if kind == "conflict_resolved":
        return f"{entry['ref']} {entry['state']}: {entry['detail']}"
    settled = f" at {entry['applied_at']}" if entry["applied_at"] else ""
    return f"webhook {entry['ref']} -> {entry['state']}{settled}: {entry['detail']}"


def _sent(send: dict[str, Any]) -> str:
    if send["state"] == "done":
        text = f"sent {send['sent_at']}"
    elif send["sent_at"]:
        text = f"{send['state']}, written {send['sent_at']}"
    else:
        text = send["state"]
    if send["acked_at"]:
        text += f", acked {send['acked_at']}"
    if send["vendor_id"]:
        text += f" as {send['vendor_id']}"
    if send["note"]:
        text += f" ({_short(send['note'], 80)})"
    return f"{send['integration']}: {text}"


def timeline_table_rows(entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The timeline as the table shows it: one line per entry."""
    return [
        {
            "time": entry["at"],
            "what": _what(entry),
            "origin": f"{entry['source']} ({entry['actor']})"
            if entry["actor"]
            else entry["source"],
            "sent to / acknowledged": "; ".join(_sent(s) for s in entry["sent_to"]),
        }
        for entry in entries
    ]


@incident.command()
@click.argument("incident_id", metavar="INC-N")
@format_option
def history(incident_id: str, fmt: str) -> None:
    """The incident's sync timeline across systems, oldest first.

    Each field change and journal entry with its origin (platform or external:<integration>,
    and the actor), every integration it was sent to with the state of that send (pending,
    in the DLQ, cancelled, ...), when the vendor answered and when the echo came back by
    webhook (acknowledged); conflicts and their resolution; webhook deliveries about the
    incident, from receipt to applied. With --format json, each entry has the keys at, kind
    (change, journal, conflict, conflict_resolved, inbound), field, old_value, new_value,
    source, actor, integration, ref, state, detail, applied_at, winner and sent_to (a list of
    integration, operation, state, queued_at, sent_at, acked_at, value, vendor_id, attempts,
    error, dlq_entry, note).
    """
    from im import incidents

    ctx = app()
    ctx.authorize("incident.history", incident=incident_id)
    entries = incidents.history(ctx.db, incident_id)
    if fmt == "table":
        emit_rows(timeline_table_rows(entries), TIMELINE_COLUMNS, fmt)
    else:
        emit_rows(entries, incidents.TIMELINE_KEYS, fmt)
