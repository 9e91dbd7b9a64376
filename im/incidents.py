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


# -- the timeline ----------------------------------------------------------------------------

# every timeline entry has these keys (None where they do not apply), in this order
TIMELINE_KEYS = (
    "at", "kind", "field", "old_value", "new_value", "source", "actor", "integration", "ref",
    "state", "detail", "applied_at", "winner", "sent_to",
)  # fmt: skip
# every element of an entry's ``sent_to``
SEND_KEYS = (
    "integration", "operation", "state", "queued_at", "sent_at", "acked_at", "value",
    "vendor_id", "attempts", "error", "dlq_entry", "note",
)  # fmt: skip
# Entries of the same time, in the order they happen: an applied webhook detects a conflict,
# resolves it and changes the field in one transaction (one time); a webhook at the time of
# a change (a frozen clock) is its echo, so it comes after.
_RANK = {"conflict": 0, "conflict_resolved": 1, "change": 2, "journal": 2, "inbound": 3}


def history(db: Database, ref: str) -> list[dict[str, Any]]:
    """The incident's sync timeline, oldest first: plain dicts with TIMELINE_KEYS, times as
    stored. Raises NotFoundError. Writes nothing.

    Entries (``kind``):

    - ``change``: a field change (``field``, ``old_value`` -> ``new_value``) and ``journal``: a
      journal entry (``field`` comments or work_notes, the text in ``new_value``); ``source``
      is ``platform`` or ``external:<integration>`` and ``actor`` who made it. ``sent_to``
      lists each integration whose outbox row carried it (SEND_KEYS): the row's ``state``
      (pending, in_flight, in_doubt, done, dead = in the DLQ, discarded, cancelled),
      ``sent_at`` when the vendor answered (the row's done_at), ``acked_at`` when the
      write's echo came back by webhook (the push's acked_at; journal entries are
      acknowledged by the vendor's entry id, ``vendor_id``), ``value`` the value the row
      carried and a ``note`` saying what is notable (sent with a later change, not written,
      retrying, in the DLQ as entry-N, cancelled).
    - ``conflict`` (detected, at its detection; ``state`` its status now) and
      ``conflict_resolved`` (at its resolution, with the ``winner``, or none when ignored).
    - ``inbound``: a webhook delivery about the incident, at its receipt, with its outcome
      (``state``, ``detail``) and when it was settled (``applied_at``).

    Which outbox row carried a change to an integration (never the one it came from), among
    the rows of that (incident, integration) holding the field: the first created at or after
    the change and before the field's next change (the row its own transaction queued, or a
    later one that sent the same value: a DLQ retry, a conflict's winner, a reconcile push),
    unless the change was coalesced into an older row still waiting when it was made (none
    created at the change's time; the newest older row not yet done, dead or cancelled then).
    A row retried from the DLQ is followed to the row that re-sent it. Coalescing keeps the
    latest value, so a row whose value differs from the change's was "sent with a later
    change". A journal entry is carried by the rows whose journal holds its id. Pushes (the
    values written, and their echoes) are kept for 7 days: older sends show no
    acknowledgement, and are not called "not written".
    """
    incident = get(db, ref)
    trail = _Trail(db, incident.id)
    entries = trail.changes() + trail.conflicts() + trail.inbound()
    order = sorted(
        range(len(entries)), key=lambda i: (entries[i]["at"], _RANK[entries[i]["kind"]], i)
    )
    return [entries[i] for i in order]


def _entry(at: str, kind: str, **values: Any) -> dict[str, Any]:
    entry: dict[str, Any] = dict.fromkeys(TIMELINE_KEYS)
    entry.update(at=at, kind=kind, sent_to=[], **values)
    return entry


def _ended(row: dict[str, Any]) -> str | None:
    """When a row stopped taking coalesced changes: sent, given up, or cancelled."""
    cancelled = row["updated_at"] if row["state"] == "cancelled" else None
    ended: str | None = row["done_at"] or row["dead_at"] or cancelled
    return ended


def _carrier(candidates: list[dict[str, Any]], at: str, until: str | None) -> dict[str, Any] | None:
    """The row that carried a change made at ``at`` (see ``history``)."""
    for row in candidates:
        if row["created_at"] == at:
            return row
    # a row that ended at the very time of the change still took it: had it ended first, the
    # change would have queued a row of its own, found above
    waiting = [
        r
        for r in candidates
        if r["created_at"] < at and ((ended := _ended(r)) is None or ended >= at)
    ]
    if waiting:
        return waiting[-1]
    return next(
        (
            r
            for r in candidates
            if r["created_at"] > at and (until is None or r["created_at"] < until)
        ),
        None,
    )


class _Trail:
    """The incident's changes and everything that happened to them, read once."""

    def __init__(self, db: Database, incident_id: int) -> None:
        self.changes_ = rows.changes(db, incident_id)
        self.journal = rows.journal(db, incident_id)
        self.outbox = rows.outbox_trail(db, incident_id)
        self.pushes = rows.push_trail(db, incident_id)
        self.links = {
            (link["journal_entry_id"], link["integration_id"]): link
            for link in rows.journal_link_trail(db, incident_id)
        }
        self.conflict_rows = rows.conflict_trail(db, incident_id)
        self.events = rows.inbound_trail(db, incident_id)
        names: dict[int, str] = {}
        for row in self.outbox:
            names.setdefault(row["integration_id"], row["integration"])
        self.integrations = sorted(names.items())
        # read once, looked up per (integration, field): a long-lived incident has thousands
        self.rows_by_field: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for row in self.outbox:
            for name in row["fields"]:
                self.rows_by_field.setdefault((row["integration_id"], name), []).append(row)
        self.pushes_by_field: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for push in self.pushes:
            key = (push["integration_id"], push["field"])
            self.pushes_by_field.setdefault(key, []).append(push)
        self.first_push: dict[int, str] = {}
        for push in self.pushes:
            at = self.first_push.get(push["integration_id"])
            if at is None or push["sent_at"] < at:
                self.first_push[push["integration_id"]] = push["sent_at"]

    # -- field changes and journal entries ---------------------------------------------------

    def changes(self) -> list[dict[str, Any]]:
        entries = []
        unused = list(self.journal)
        # when each change's field next changed (its row can carry it until then)
        following: dict[int, str | None] = {}
        latest: dict[str, str] = {}
        for index in range(len(self.changes_) - 1, -1, -1):
            change = self.changes_[index]
            following[index] = latest.get(change["field"])
            latest[change["field"]] = change["changed_at"]
        for index, change in enumerate(self.changes_):
            name, at = change["field"], change["changed_at"]
            common = {
                "field": name,
                "old_value": change["old_value"],
                "new_value": change["new_value"],
                "source": change["source"],
                "actor": change["actor"],
            }
            if name in JOURNAL_FIELDS:
                journal_entry = self._journal_entry(unused, change)
                entry = _entry(at, "journal", **common)
                if journal_entry is not None:
                    entry["sent_to"] = self._journal_sends(journal_entry, change["source"])
            else:
                entry = _entry(at, "change", **common)
                entry["sent_to"] = self._field_sends(change, following[index])
            entries.append(entry)
        return entries

    @staticmethod
    def _journal_entry(
        unused: list[dict[str, Any]], change: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The journal entry a journal change recorded (both are written together)."""
        for entry in unused:
            if (entry["kind"], entry["body"], entry["created_at"]) == (
                change["field"],
                change["new_value"],
                change["changed_at"],
            ):
                unused.remove(entry)
                return entry
        return None

    def _targets(self, source: str) -> list[tuple[int, str]]:
        """The integrations a change may have gone to: never back to where it came from."""
        return [(i, name) for i, name in self.integrations if source != f"external:{name}"]

    def _field_sends(self, change: dict[str, Any], until: str | None) -> list[dict[str, Any]]:
        name, at = change["field"], change["changed_at"]
        sends = []
        for integration_id, _ in self._targets(change["source"]):
            candidates = self.rows_by_field.get((integration_id, name), [])
            row = _carrier(candidates, at, until)
            if row is None:
                continue
            row = self._followed(row, candidates)
            value = row["fields"].get(name)
            start = max(row["created_at"], at)
            pushes = [
                p
                for p in self.pushes_by_field.get((integration_id, name), [])
                if p["sent_at"] >= start
                and (row["done_at"] is None or p["sent_at"] <= row["done_at"])
            ]
            acked = sorted(p["acked_at"] for p in pushes if p["acked_at"])
            send = self._send(row, value=value)
            if row["state"] != "done" and pushes:
                send["sent_at"] = pushes[0]["sent_at"]  # written, though the row is not done
            send["acked_at"] = acked[0] if acked else None
            notes = []
            if value != change["new_value"]:
                notes.append(
                    "sent with a later change" if send["sent_at"] else "queued with a later change"
                )
            if row["state"] == "done" and not pushes and self._pushes_kept(row):
                notes.append("not written: changed there meanwhile, or held by a conflict")
            send["note"] = "; ".join([*notes, *([send["note"]] if send["note"] else [])]) or None
            sends.append(send)
        return sends

    def _journal_sends(self, journal_entry: dict[str, Any], source: str) -> list[dict[str, Any]]:
        sends = []
        for integration_id, name in self._targets(source):
            candidates = [
                r
                for r in self.outbox
                if r["integration_id"] == integration_id and journal_entry["id"] in r["journal"]
            ]
            link = self.links.get((journal_entry["id"], integration_id))
            if candidates:
                send = self._send(self._followed(candidates[0], candidates))
            elif link is not None:
                # sent by a row that failed afterwards (what was sent leaves the row)
                send = dict.fromkeys(SEND_KEYS)
                send.update(integration=name, state="done", sent_at=link["linked_at"])
            else:
                continue
            if link is not None:
                send["vendor_id"] = link["vendor_id"]
                send["sent_at"] = send["sent_at"] or link["linked_at"]
            sends.append(send)
        return sends

    def _pushes_kept(self, row: dict[str, Any]) -> bool:
        """Whether the row's writes would still be on record: pushes are forgotten oldest
        first, so one of the integration's at or before the row's end means nothing of the
        row's was forgotten (every create records one per field it sends)."""
        first = self.first_push.get(row["integration_id"])
        return first is not None and first <= row["done_at"]

    @staticmethod
    def _followed(row: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any]:
        """A row retried from the DLQ, followed to the row that sent it again."""
        while row["state"] == "retried":
            again = next(
                (
                    r
                    for r in candidates
                    if r["id"] > row["id"] and r["created_at"] >= row["updated_at"]
                ),
                None,
            )
            if again is None:
                break
            row = again
        return row

    @staticmethod
    def _send(row: dict[str, Any], value: str | None = None) -> dict[str, Any]:
        state = row["state"]
        dlq = f"entry-{row['dead_letter']}" if row["dead_letter"] is not None else None
        error = row["last_error"]
        note = {
            "pending": f"waiting to retry: {error}" if error else None,
            "in_flight": "being sent",
            "in_doubt": f"create outcome unknown, checking before sending again: {error}",
            "dead": f"in the DLQ as {dlq}: {error}",
            "discarded": f"discarded from the DLQ ({dlq})",
            "retried": f"retried from the DLQ ({dlq})",
            "cancelled": f"cancelled: {error}" if error else "cancelled",
        }.get(state)
        send: dict[str, Any] = dict.fromkeys(SEND_KEYS)
        send.update(
            integration=row["integration"],
            operation=row["operation"],
            state=state,
            queued_at=row["created_at"],
            sent_at=row["done_at"],
            value=value,
            attempts=row["attempts"],
            error=error if state != "done" else None,
            dlq_entry=dlq,
            note=note,
        )
        return send

    # -- conflicts and webhooks --------------------------------------------------------------

    def conflicts(self) -> list[dict[str, Any]]:
        entries = []
        for c in self.conflict_rows:
            ref = f"conflict-{c['id']}"
            common = {"field": c["field"], "integration": c["integration"], "ref": ref}
            entries.append(
                _entry(
                    c["detected_at"],
                    "conflict",
                    **common,
                    source=f"external:{c['integration']}",
                    actor=c["external_actor"],
                    state=c["status"],
                    detail=(
                        f"platform {c['platform_value']!r} by {c['platform_actor'] or '?'} at "
                        f"{c['platform_at']} vs {c['integration']} {c['external_value']!r} by "
                        f"{c['external_actor'] or '?'} at {c['external_at']} "
                        f"({c['strategy']})"
                    ),
                )
            )
            if c["resolved_at"] is None:
                continue
            winner = c["winner"]
            kept = {"platform": c["platform_value"], "external": c["external_value"]}
            entries.append(
                _entry(
                    c["resolved_at"],
                    "conflict_resolved",
                    **common,
                    new_value=kept.get(winner or ""),
                    source="platform",
                    actor=c["resolved_by"],
                    state=c["status"],
                    winner=winner,
                    detail=(
                        f"the {winner} value won: {c['reason']}"
                        if winner
                        else f"ignored: {c['reason']}"
                    ),
                )
            )
        return entries

    def inbound(self) -> list[dict[str, Any]]:
        return [
            _entry(
                e["received_at"],
                "inbound",
                integration=e["integration"],
                ref=f"event-{e['id']}",
                source=f"external:{e['integration']}",
                state=e["state"],
                applied_at=e["applied_at"],
                detail=(e["event_type"] or "webhook")
                + (f": {e['outcome']}" if e["outcome"] and e["outcome"] != e["state"] else ""),
            )
            for e in self.events
        ]
