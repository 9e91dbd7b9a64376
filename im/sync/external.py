"""What an external record brings into the platform, shared by the inbound applier (a
webhook) and reconciliation (a listing): an in-scope record that is not ours becoming a
platform incident, and its journal entries appended once each. Call inside store.write()."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlite_utils import Database

from im import incidents
from im.clock import Clock, format_time
from im.config import ownership
from im.connectors.base import JournalEntry
from im.errors import StateError
from im.model import JOURNAL_FIELDS, Direction, check_transition
from im.store import integrations as integration_rows
from im.store import links, snapshots


def source(integration: Mapping[str, Any]) -> str:
    return f"external:{integration['name']}"


def adopt(
    db: Database,
    clock: Clock,
    integration: Mapping[str, Any],
    external_id: str,
    external_key: str,
    values: Mapping[str, str],
    version: str | None,
    actor: str,
    journal: Iterable[JournalEntry],
) -> int | None:
    """Create the platform incident for an external record that is not ours, linked to it,
    with its values as the synced snapshot and its journal appended. None when it has no
    title to make an incident of."""
    fields = dict(values)
    if not fields.get("title"):
        return None
    origin = source(integration)
    status = fields.pop("status", "triggered")
    scalars = {k: v for k, v in fields.items() if k not in JOURNAL_FIELDS and v}
    change = incidents.create(db, clock, actor or origin, scalars, origin, integration["id"])
    incident_id = change.incident.id
    if status and status != "triggered":
        try:
            check_transition("triggered", status)
            incidents.update(
                db, clock, actor or origin, str(incident_id), {"status": status}, origin,
                integration["id"],
            )  # fmt: skip
        except StateError:
            pass  # a record closed without being resolved stays triggered here
    stamp = format_time(clock.now())
    links.create(db, incident_id, integration["id"], external_id, external_key, stamp)
    # The snapshot is what the record holds, not what the platform made of it: a value the
    # platform could not take as it is (PagerDuty's "no priority" became p3) is then the
    # platform's change, pushed by reconciliation, rather than an external change it
    # refuses on every run.
    synced = {k: v for k, v in values.items() if k not in JOURNAL_FIELDS}
    snapshots.put(db, integration["id"], incident_id, synced, version, stamp)
    for entry in journal:
        append_entry(db, clock, integration, incident_id, entry)
    return incident_id


def accepts_journal(db: Database, integration: Mapping[str, Any], kind: str) -> bool:
    rules = integration_rows.rules(db, integration["id"])
    return ownership.accepts(Direction(integration["direction"]), rules.get(kind))


def append_entry(
    db: Database,
    clock: Clock,
    integration: Mapping[str, Any],
    incident_id: int,
    entry: JournalEntry,
) -> bool:
    """Append one external journal entry to the incident (it then goes on to the other
    integrations) and remember its vendor id, unless ownership or the direction refuses
    it. Returns whether it was appended."""
    if not accepts_journal(db, integration, entry.field):
        return False
    origin = source(integration)
    change = incidents.comment(
        db, clock, entry.author or origin, str(incident_id), entry.field, entry.body, origin,
        integration["id"],
    )  # fmt: skip
    assert change.journal_entry is not None
    stamp = format_time(clock.now())
    snapshots.link_entry(db, integration["id"], change.journal_entry, entry.vendor_id, stamp)
    return True
