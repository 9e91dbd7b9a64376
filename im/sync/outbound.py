"""The Outbound Sync Service, enqueue side (SPEC §3, §4): in the transaction that changes an
incident, one outbox row per integration that should receive the change.

Who receives what: an integration whose direction allows outbound gets the changed fields it
maps and does not leave to the external side; the first row of an unlinked incident creates
the external record with every mapped non-empty field. A newer change to a pair with a row
still waiting is merged into that row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlite_utils import Database

from im.config import mapping, ownership
from im.model import JOURNAL_FIELDS, Direction, Incident
from im.store import integrations as integration_rows
from im.store import links, meta
from im.store import outbox as rows


@dataclass(frozen=True)
class Queued:
    integration: str
    operation: str  # create | update
    fields: tuple[str, ...]
    journal: int  # how many journal entries
    merged: bool  # coalesced into a row that was already waiting


def correlation_key(install_id: str, incident_id: int) -> str:
    """The key that makes creation idempotent: ``im:<install-id>:INC-<n>``."""
    return f"im:{install_id}:INC-{incident_id}"


_KEY = re.compile(r"im:(?P<install>[^:]+):INC-(?P<n>[0-9]+)")


def keyed_incident(key: str | None, install_id: str | None) -> int | None:
    """The incident number a correlation key names, when it is this install's key."""
    match = _KEY.fullmatch(key or "")
    if match and match.group("install") == install_id:
        return int(match.group("n"))
    return None


def enqueue(
    db: Database,
    incident: Incident,
    changed: list[str],
    journal: list[tuple[int, str]],
    now: str,
    exclude_integration: int | None = None,
    only_integration: int | None = None,
) -> list[Queued]:
    """Queue ``changed`` fields and ``journal`` entries (id, kind) of ``incident`` for every
    integration that should receive them. Call inside the incident's write transaction.

    ``exclude_integration`` is the integration a change came from (it is not sent back);
    ``only_integration`` limits the change to one (reconciliation re-creating its record).
    """
    queued: list[Queued] = []
    install_id = meta.require(db, "install_id")
    for integration in integration_rows.all_rows(db):
        if integration["id"] == exclude_integration:
            continue
        if only_integration is not None and integration["id"] != only_integration:
            continue
        direction = Direction(integration["direction"])
        if not direction.sends:
            continue
        table = mapping.mappings(
            integration["type"],
            integration["settings"],
            integration_rows.overrides(db, integration["id"]),
        )
        synced = [name for name, fm in table.items() if fm.synced]
        scalars = [name for name in synced if name not in JOURNAL_FIELDS]
        updatable = [name for name in scalars if not table[name].create_only]
        rules = integration_rows.rules(db, integration["id"])
        creating = links.find(db, incident.id, integration["id"]) is None and not (
            rows.live_create_exists(db, incident.id, integration["id"])
        )
        waiting = rows.waiting_row(db, incident.id, integration["id"])
        create_waiting = waiting is not None and waiting["operation"] == "create"
        if creating or create_waiting:
            # A create carries every mapped non-empty field with its newest value.
            send = [f for f in scalars if incident.value(f)]
            if create_waiting and not (set(changed) & set(scalars)) and not journal:
                continue
        else:
            send = ownership.outbound_fields(direction, rules, updatable, changed, creating=False)
        entries = [
            entry_id
            for entry_id, kind in journal
            if kind in synced and ownership.pushes(direction, rules.get(kind))
        ]
        if not send and not entries:
            continue
        fields = {f: incident.value(f) for f in send}
        if waiting is not None and not creating:
            rows.merge(db, waiting["id"], fields, entries, now, replace=create_waiting)
            operation, merged = waiting["operation"], True
        else:
            operation, merged = ("create" if creating else "update"), False
            rows.insert(
                db,
                {
                    "incident_id": incident.id,
                    "integration_id": integration["id"],
                    "operation": operation,
                    "fields": fields,
                    "journal": entries,
                    "correlation_key": correlation_key(install_id, incident.id),
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        queued.append(Queued(integration["name"], operation, tuple(send), len(entries), merged))
    return queued


def queue_fields(
    db: Database,
    incident: Incident,
    integration_id: int,
    fields: dict[str, str],
    now: str,
    journal: list[int] | None = None,
) -> None:
    """Queue exactly these field values (and journal entry ids) for one integration, whoever
    owns them (a conflict's winner, or a reconciliation's push, made true on that side).
    Merges into the waiting row when there is one."""
    waiting = rows.waiting_row(db, incident.id, integration_id)
    if waiting is not None:
        rows.merge(db, waiting["id"], fields, journal or [], now)
        return
    rows.insert(
        db,
        {
            "incident_id": incident.id,
            "integration_id": integration_id,
            "operation": "update",
            "fields": fields,
            "journal": journal or [],
            "correlation_key": correlation_key(meta.require(db, "install_id"), incident.id),
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        },
    )
