"""The Conflict Detector (SPEC §6): when the platform and a bidirectional integration both
changed a field away from what they last agreed on, neither having seen the other.

``decide`` is pure (the two edits, the rules, the strategy, the window -> a verdict), so it is
tested on its own; ``record`` and ``resolve`` keep the conflict records and make the winner
true on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from im import incidents
from im.clock import Clock, format_time, parse_time
from im.errors import NotFoundError, StateError
from im.model import ConflictStrategy, Incident, Owner, incident_display_id
from im.store import conflicts as rows
from im.store import snapshots, sync_state
from im.store.db import write
from im.sync import outbound

PLATFORM = "platform"
EXTERNAL = "external"
IGNORE = "ignore"  # a manual choice: keep both sides as they are


@dataclass(frozen=True)
class Edit:
    value: str
    at: datetime
    actor: str


@dataclass(frozen=True)
class Claim:
    """One integration's ownership rule for the field."""

    integration_id: int
    owner: Owner
    priority: int


@dataclass(frozen=True)
class Verdict:
    detected: bool  # within the window: a conflict record, counted
    winner: str | None  # platform | external | None (held for manual review)
    reason: str


def decide(
    strategy: ConflictStrategy,
    window: float,
    platform: Edit,
    external: Edit,
    integration_id: int,
    claims: Sequence[Claim],
) -> Verdict:
    """Who wins a concurrent change of one field between the platform and an integration."""
    own = next((c for c in claims if c.integration_id == integration_id), None)
    owner = (PLATFORM if own.owner is Owner.PLATFORM else EXTERNAL) if own is not None else None
    later = (
        EXTERNAL if external.at > platform.at else PLATFORM if platform.at > external.at else None
    )
    if abs((external.at - platform.at).total_seconds()) > window:
        if owner is not None:
            return Verdict(False, owner, f"more than {window:g} s apart: the {owner} owns it")
        return Verdict(False, later or PLATFORM, f"more than {window:g} s apart: the later change")
    if strategy is ConflictStrategy.MANUAL_REVIEW:
        return Verdict(True, None, "held for manual review")
    if strategy is ConflictStrategy.OWNERSHIP_PRIORITY and claims:
        # the highest priority wins; ties go to the oldest integration
        top = max(claims, key=lambda c: (c.priority, -c.integration_id))
        if top.owner is Owner.PLATFORM:
            return Verdict(True, PLATFORM, "ownership priority: the platform owns it")
        if top.integration_id == integration_id:
            return Verdict(True, EXTERNAL, "ownership priority: this integration owns it")
        return Verdict(True, PLATFORM, "ownership priority: another integration owns it")
    if later is not None:
        return Verdict(True, later, f"last write wins: the {later} change was later")
    return Verdict(True, owner or PLATFORM, "the same instant: the owner, else the platform")


def platform_edit(db: Database, incident: Incident, field: str, origin: str) -> Edit:
    """The platform's side of a concurrent change: the field's value now, and when and by
    whom it last changed other than from ``origin`` (the integration's own changes)."""
    row = db.execute(
        "SELECT changed_at, actor FROM field_changes WHERE incident_id = ? AND field = ? "
        "AND source != ? ORDER BY id DESC LIMIT 1",
        [incident.id, field, origin],
    ).fetchone()
    at = parse_time(row[0]) if row else parse_time(incident.updated_at)
    return Edit(incident.value(field), at, row[1] if row else "")


def judge(
    db: Database, integration: Mapping[str, Any], field: str, platform: Edit, external: Edit
) -> Verdict:
    """``decide`` with the integration's strategy and window and every rule for the field."""
    return decide(
        ConflictStrategy(integration["conflict_strategy"]),
        float(integration["conflict_window"]),
        platform,
        external,
        integration["id"],
        claims(db, field),
    )


def claims(db: Database, field: str) -> list[Claim]:
    return [
        Claim(r["integration_id"], Owner(r["owner"]), r["priority"])
        for r in db.query(
            "SELECT integration_id, owner, priority FROM field_ownership WHERE field = ?", [field]
        )
    ]


def record(
    db: Database,
    incident_id: int,
    integration: Mapping[str, Any],
    field: str,
    platform: Edit,
    external: Edit,
    external_version: str | None,
    verdict: Verdict,
    now: str,
) -> int:
    """Keep the conflict (pending when held, else resolved with its winner) and count it."""
    status = "pending" if verdict.winner is None else "resolved"
    conflict_id = rows.insert(
        db,
        {
            "incident_id": incident_id,
            "integration_id": integration["id"],
            "field": field,
            "strategy": integration["conflict_strategy"],
            "status": status,
            "platform_value": platform.value,
            "platform_at": format_time(platform.at),
            "platform_actor": platform.actor,
            "external_value": external.value,
            "external_at": format_time(external.at),
            "external_actor": external.actor,
            "external_version": external_version,
            "winner": verdict.winner,
            "reason": verdict.reason,
            "detected_at": now,
            "updated_at": now,
            "resolved_at": now if verdict.winner else None,
            "resolved_by": "strategy" if verdict.winner else None,
        },
    )
    sync_state.count(db, integration["id"], "conflicts_detected")
    if verdict.winner is not None:
        sync_state.count(db, integration["id"], "conflicts_resolved")
    return conflict_id


def push_platform_value(
    db: Database,
    incident_id: int,
    integration: Mapping[str, Any],
    field: str,
    external_value: str,
    external_version: str | None,
    now: str,
) -> None:
    """Make the platform's value true on the integration's side: the external value becomes
    the snapshot (so the send is not taken for another concurrent change) and the platform's
    value is queued, whoever owns the field."""
    snapshots.put(
        db, integration["id"], incident_id, {field: external_value}, external_version, now
    )
    incident = incidents.get(db, incident_id)
    outbound.queue_fields(db, incident, integration["id"], {field: incident.value(field)}, now)


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A conflict as the CLI and the API show it."""
    return {
        "id": f"conflict-{row['id']}",
        "status": row["status"],
        "incident": incident_display_id(row["incident_id"]),
        "integration": row["integration"],
        "field": row["field"],
        "strategy": row["strategy"],
        "platform_value": row["platform_value"],
        "platform_at": row["platform_at"],
        "platform_actor": row["platform_actor"],
        "external_value": row["external_value"],
        "external_at": row["external_at"],
        "external_actor": row["external_actor"],
        "winner": row["winner"] or "",
        "reason": row["reason"],
        "detected_at": row["detected_at"],
        "resolved_at": row["resolved_at"] or "",
        "resolved_by": row["resolved_by"] or "",
    }


VIEW_KEYS = (
    "id", "status", "incident", "integration", "field", "strategy", "platform_value",
    "platform_at", "platform_actor", "external_value", "external_at", "external_actor",
    "winner", "reason", "detected_at", "resolved_at", "resolved_by",
)  # fmt: skip


def listing(
    db: Database, status: str | None = "pending", integration_id: int | None = None
) -> list[dict[str, Any]]:
    return [view(row) for row in rows.listing(db, status, integration_id)]


_CONFLICT = re.compile(r"(?:conflict-)?([0-9]{1,18})", re.IGNORECASE)


def parse_conflict_id(text: str) -> int:
    match = _CONFLICT.fullmatch(text.strip())
    if not match:
        raise NotFoundError(f"{text[:60]!r} is not a conflict id", "conflicts look like conflict-3")
    return int(match.group(1))


def get(db: Database, ref: str) -> dict[str, Any]:
    found = rows.get(db, parse_conflict_id(ref))
    if found is None:
        raise NotFoundError(f"no {ref.strip()}", "see `im conflict list`")
    return found


def outcome(choice: str) -> str:
    """How a manual resolution with ``choice`` ended, in words (the CLI and the TUI)."""
    return "ignored (both sides kept)" if choice == IGNORE else f"resolved: {choice} value wins"


def resolve(db: Database, clock: Clock, actor: str, ref: str, choice: str) -> dict[str, Any]:
    """Resolve a pending conflict with the platform's value, the external value, or by
    accepting the divergence (``ignore``). Raises StateError when it is not pending."""
    now = format_time(clock.now())
    with write(db):
        conflict = get(db, ref)
        if conflict["status"] != "pending":
            raise StateError(f"conflict-{conflict['id']} is already {conflict['status']}")
        integration = {
            "id": conflict["integration_id"],
            "name": conflict["integration"],
        }
        incident_id, field = conflict["incident_id"], conflict["field"]
        if choice == PLATFORM:
            push_platform_value(
                db, incident_id, integration, field, conflict["external_value"],
                conflict["external_version"], now,
            )  # fmt: skip
        elif choice == EXTERNAL:
            source = f"external:{integration['name']}"
            rows.update(db, conflict["id"], {"status": "resolved"})  # no longer holds the field
            incidents.update(
                db, clock, actor, str(incident_id), {field: conflict["external_value"]}, source,
                integration["id"],
            )  # fmt: skip
            snapshots.put(
                db, integration["id"], incident_id, {field: conflict["external_value"]},
                conflict["external_version"], now,
            )  # fmt: skip
        if choice == "ignore":  # an accepted divergence: the platform's next change wins
            snapshots.put(
                db, integration["id"], incident_id, {field: conflict["external_value"]},
                conflict["external_version"], now,
            )  # fmt: skip
        rows.update(
            db,
            conflict["id"],
            {
                "status": "ignored" if choice == "ignore" else "resolved",
                "winner": None if choice == "ignore" else choice,
                "reason": "accepted divergence" if choice == "ignore" else f"resolved by {actor}",
                "resolved_at": now,
                "resolved_by": actor,
                "updated_at": now,
            },
        )
        sync_state.count(db, integration["id"], "conflicts_manually_resolved")
        return get(db, ref)
