"""Platform incidents: create, update, comment, read (SPEC §2).

Each change is one transaction: the incident row, a field change per changed field, and the
outbox rows that carry the change to the integrations (sync.outbound.enqueue). Nothing is
sent from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time
from im.errors import NotFoundError, UsageError, ValidationError
from im.model import (
    DEFAULT_PRIORITY,
    DEFAULT_SEVERITY,
    JOURNAL_FIELDS,
    SCALAR_FIELDS,
    Incident,
    Status,
    check_transition,
    parse_incident_id,
    validate_field,
)
from im.store import incidents as rows
from im.store import links
from im.store import outbox as outbox_rows
from im.store.db import write
from im.sync.outbound import Queued, enqueue

PLATFORM = "platform"


@dataclass
class Change:
    incident: Incident
    changes: list[tuple[str, str | None, str]] = field(default_factory=list)
    queued: list[Queued] = field(default_factory=list)
    journal_entry: int | None = None  # the entry a comment added


def get(db: Database, ref: str | int) -> Incident:
    """The incident ``INC-n`` (or n). Raises NotFoundError saying which ids exist."""
    incident_id = ref if isinstance(ref, int) else parse_incident_id(ref)
    incident = rows.get(db, incident_id)
    if incident is not None:
        return incident
    newest = rows.newest_id(db)
    hint = (
        f"incidents run from INC-1 to INC-{newest}; see `im incident list`"
        if newest
        else "there are no incidents yet: create one with `im incident create`"
    )
    raise NotFoundError(f"no incident INC-{incident_id}", hint)


def _validated(values: dict[str, str]) -> dict[str, str]:
    unknown = set(values) - set(SCALAR_FIELDS)
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(sorted(unknown))}")
    # Canonical field order, whatever order the options came in.
    return {name: validate_field(name, values[name]) for name in SCALAR_FIELDS if name in values}


def create(
    db: Database,
    clock: Clock,
    actor: str,
    values: dict[str, str],
    source: str = PLATFORM,
    origin: int | None = None,
) -> Change:
    """Create an incident (status ``triggered``) and queue it for every outbound integration
    but ``origin`` (the integration a synced-in change came from)."""
    if "status" in values:
        raise UsageError(
            "a new incident starts triggered; change its status with `im incident update`"
        )
    fields = _validated(values)
    if "title" not in fields:
        raise UsageError("--title is required")
    now = format_time(clock.now())
    record: dict[str, Any] = {
        "title": fields["title"],
        "description": fields.get("description", ""),
        "severity": fields.get("severity", DEFAULT_SEVERITY.value),
        "priority": fields.get("priority", DEFAULT_PRIORITY.value),
        "status": Status.TRIGGERED.value,
        "assigned_to": fields.get("assigned_to", ""),
        "escalation_policy": fields.get("escalation_policy", ""),
        "commander": fields.get("commander", ""),
        "created_at": now,
        "updated_at": now,
        "created_by": actor,
    }
    with write(db):
        incident_id = rows.insert(db, record)
        changed = [name for name in SCALAR_FIELDS if record[name]]
        for name in changed:
            rows.add_change(db, incident_id, name, None, record[name], source, actor, now)
        incident = get(db, incident_id)
        queued = enqueue(db, incident, changed, [], now, exclude_integration=origin)
    return Change(incident, [(n, None, record[n]) for n in changed], queued)


def update(
    db: Database,
    clock: Clock,
    actor: str,
    ref: str,
    values: dict[str, str],
    source: str = PLATFORM,
    origin: int | None = None,
) -> Change:
    """Change fields of an incident; unchanged values are no change. Raises StateError for a
    status move the status machine forbids."""
    if not values:
        raise UsageError(
            "nothing to update", "give at least one field option, e.g. --severity sev2"
        )
    fields = _validated(values)
    now = format_time(clock.now())
    with write(db):
        before = get(db, ref)
        diff = {name: value for name, value in fields.items() if before.value(name) != value}
        if "status" in diff:
            check_transition(before.status, diff["status"])
        if not diff:
            return Change(before)
        rows.update(db, before.id, {**diff, "updated_at": now})
        for name, value in diff.items():
            rows.add_change(db, before.id, name, before.value(name), value, source, actor, now)
        after = get(db, before.id)
        queued = enqueue(db, after, list(diff), [], now, exclude_integration=origin)
    return Change(after, [(n, before.value(n), v) for n, v in diff.items()], queued)


def comment(
    db: Database,
    clock: Clock,
    actor: str,
    ref: str,
    kind: str,
    body: str,
    source: str = PLATFORM,
    origin: int | None = None,
) -> Change:
    """Append a journal entry (``comments`` or ``work_notes``) and queue it."""
    if kind not in JOURNAL_FIELDS:
        raise ValidationError(f"journal must be one of {', '.join(JOURNAL_FIELDS)}")
    text = validate_field(kind, body)
    now = format_time(clock.now())
    with write(db):
        incident = get(db, ref)
        entry_id = rows.add_journal(db, incident.id, kind, text, source, actor, now)
        rows.add_change(db, incident.id, kind, None, text, source, actor, now)
        rows.update(db, incident.id, {"updated_at": now})
        incident = get(db, incident.id)
        queued = enqueue(db, incident, [], [(entry_id, kind)], now, exclude_integration=origin)
    return Change(incident, [(kind, None, text)], queued, entry_id)


def listing(db: Database, limit: int | None, status: str | None) -> list[Incident]:
    if status is not None:
        status = validate_field("status", status)
    if limit is not None and limit < 1:
        raise ValidationError("--limit must be at least 1")
    return rows.select(db, limit, status)


def details(db: Database, ref: str) -> dict[str, Any]:
    """Everything `incident show` prints: fields, journal, links, what is queued."""
    incident = get(db, ref)
    return {
        "incident": incident,
        "journal": rows.journal(db, incident.id),
        "links": links.for_incident(db, incident.id),
        "queued": outbox_rows.for_incident(db, incident.id),
    }


def history(db: Database, ref: str) -> tuple[Incident, list[dict[str, Any]]]:
    incident = get(db, ref)
    return incident, rows.changes(db, incident.id)
