"""SPEC §14's invariant, checked after a simulated run has drained and reconciled: each check
returns what is wrong, one line each, saying what differs where (an empty list: it holds).

- ``nothing_stuck``: every platform change was delivered, is in the DLQ, or was superseded
  (no outbox row still waiting, leased or in doubt); every stored webhook was applied; every
  vendor delivery was made.
- ``one_record_each``: one external record per incident per integration, counted by
  correlation key in the simulators' own stores, and it is the linked one.
- ``fields_agree``: every linked incident agrees, on every field the integration maps and can
  update, with the record there, as ownership and the conflict rules say. The differences
  SPEC allows, and only they, are set aside:
    * a field held by a pending conflict (manual review, §6);
    * a field several integrations own as external, on an integration that is not the
      authoritative one (``shadowed``, §3);
    * a change that is in the DLQ (§4);
    * a status the platform's status machine refuses (closed is final, no way back from
      resolved but reopen), which reconciliation reported as ``refused`` (§7);
    * PagerDuty keeping an acknowledged incident acknowledged when the platform goes back to
      triggered (PagerDuty refuses that move; the connector skips it, §3).
- ``journals_complete``: no journal entry duplicated on any side (every body in the
  simulation is unique), none lost: each platform entry is in every integration the
  ownership rules send it to (unless in the DLQ), and each entry made in an external system
  is on the platform when the rules take it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlite_utils import Database

from im import incidents
from im.config import mapping, ownership
from im.connectors.base import Connector
from im.errors import StateError
from im.model import JOURNAL_FIELDS, Direction, Owner, check_transition
from im.sim.core import Simulator
from im.sim.jira import JiraSimulator, adf_to_text
from im.sim.pagerduty import PagerDutySimulator
from im.sim.servicenow import ServiceNowSimulator
from im.store import integrations as integration_rows
from im.store import outbox as outbox_rows

ConnectorFor = Callable[[Mapping[str, Any]], Connector]


def check(
    db: Database,
    sims: Mapping[str, Simulator],
    connector_for: ConnectorFor,
    reconciles: Mapping[str, Mapping[str, Any]],
    install_id: str,
    writes: Sequence[Any] = (),
    made_there: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Everything that breaks the invariant (empty when it holds)."""
    return [
        *nothing_stuck(db, sims),
        *one_record_each(db, sims, install_id),
        *fields_agree(db, connector_for, reconciles),
        *journals_complete(db, sims, connector_for),
        *last_word(db, connector_for, writes, made_there),
    ]


# -- what is still waiting ----------------------------------------------------------------------


def nothing_stuck(db: Database, sims: Mapping[str, Simulator]) -> list[str]:
    problems = []
    marks = ", ".join("?" for _ in outbox_rows.LIVE_STATES)
    for row in db.query(
        f"SELECT o.*, i.name AS integration FROM outbox o JOIN integrations i "
        f"ON i.id = o.integration_id WHERE o.state IN ({marks}) ORDER BY o.id",
        list(outbox_rows.LIVE_STATES),
    ):
        problems.append(
            f"INC-{row['incident_id']} -> {row['integration']}: outbox row {row['id']} "
            f"({row['operation']} of {row['fields']}, journal {row['journal']}) is still "
            f"{row['state']} (next attempt {row['next_attempt_at']}, last error "
            f"{row['last_error']!r}): neither delivered, nor in the DLQ, nor superseded"
        )
    for row in db.query(
        "SELECT e.*, i.name AS integration FROM inbound_events e JOIN integrations i "
        "ON i.id = e.integration_id WHERE e.state IN ('received', 'failed') ORDER BY e.id"
    ):
        problems.append(
            f"{row['integration']}: webhook event {row['id']} ({row['event_type']} of "
            f"{row['external_id']}) is {row['state']}: {row['outcome']!r}"
        )
    for name, sim in sims.items():
        for delivery in sim.webhooks.pending:
            problems.append(
                f"{name}: delivery {delivery.id} still pending after the drain "
                f"({delivery.answers[-1:] or 'never sent'})"
            )
    return problems


# -- one record per incident per integration ---------------------------------------------------


def stored_records(sim: Simulator) -> list[tuple[str, str | None]]:
    """(record id, correlation key) of every record in the simulator's own store."""
    if isinstance(sim, ServiceNowSimulator):
        return [
            (sys_id, row.get(sim.correlation_field) or None)
            for sys_id, row in sim.tables["incident"].items()
        ]
    if isinstance(sim, JiraSimulator):
        return [
            (
                str(issue.id),
                next((label for label in issue.labels if label.startswith("im:")), None),
            )
            for issue in sim.issues.values()
        ]
    assert isinstance(sim, PagerDutySimulator)
    return [(incident.id, incident.key or None) for incident in sim.incidents.values()]


def one_record_each(db: Database, sims: Mapping[str, Simulator], install_id: str) -> list[str]:
    problems = []
    numbers = [r[0] for r in db.execute("SELECT id FROM incidents ORDER BY id")]
    for integration in integration_rows.all_rows(db):
        name = integration["name"]
        records = stored_records(sims[name])
        ours = f"im:{install_id}:INC-"
        by_key = Counter(key for _, key in records if key and key.startswith(ours))
        for key, count in sorted(by_key.items()):
            if count > 1:
                problems.append(f"{name}: {count} records with correlation key {key} (duplicated)")
        ids = {record_id for record_id, _ in records}
        links = {
            row["incident_id"]: row
            for row in db.query("SELECT * FROM links WHERE integration_id = ?", [integration["id"]])
        }
        linked = Counter(link["external_id"] for link in links.values())
        for record_id, key in records:
            if not (key or "").startswith(ours) and not linked[record_id]:
                # made there by a person: it becomes a platform incident (SPEC §5, §7)
                problems.append(f"{name}: record {record_id} made there has no platform incident")
        for number in numbers:
            key = f"im:{install_id}:INC-{number}"
            link = links.get(number)
            if link is None:
                if _dead_create(db, number, integration["id"]):
                    continue  # its create is in the DLQ
                problems.append(
                    f"INC-{number} has no link to {name} (records there: {by_key[key]})"
                )
                continue
            if link["state"] != "linked":
                problems.append(f"INC-{number} -> {name}: the link is {link['state']}")
            if link["external_id"] not in ids:
                problems.append(
                    f"INC-{number} -> {name}: linked to {link['external_id']}, not there"
                )
                continue
            keyed = [rid for rid, k in records if k == key]
            if keyed and keyed != [link["external_id"]]:
                problems.append(
                    f"INC-{number} -> {name}: linked to {link['external_id']} but its key is on {keyed}"
                )
    return problems


def _dead_create(db: Database, incident_id: int, integration_id: int) -> bool:
    return _open_dead(db, incident_id, integration_id, lambda row: row["operation"] == "create")


def _open_dead(
    db: Database, incident_id: int, integration_id: int, matches: Callable[[Any], bool]
) -> bool:
    """Whether an open DLQ entry of the pair's outbox rows matches."""
    for row in db.query(
        "SELECT o.id FROM outbox o JOIN dead_letters d ON d.outbox_id = o.id "
        "WHERE d.state = 'dead' AND o.incident_id = ? AND o.integration_id = ?",
        [incident_id, integration_id],
    ):
        decoded = outbox_rows.get(db, row["id"])
        if decoded is not None and matches(decoded):
            return True
    return False


# -- fields ---------------------------------------------------------------------------------------


def _fields(integration: Mapping[str, Any], db: Database) -> list[str]:
    table = mapping.mappings(
        integration["type"],
        integration["settings"],
        integration_rows.overrides(db, integration["id"]),
    )
    return [
        name
        for name, fm in table.items()
        if fm.synced and name not in JOURNAL_FIELDS and not fm.create_only
    ]


def _authoritative(db: Database, field: str) -> int | None:
    """The integration whose external ownership of ``field`` decides in reconciliation: the
    highest priority, ties to the oldest (SPEC §3)."""
    owners = [
        (row["priority"], -row["integration_id"], row["integration_id"])
        for row in db.query(
            "SELECT f.integration_id, f.priority FROM field_ownership f JOIN integrations i "
            "ON i.id = f.integration_id WHERE f.field = ? AND f.owner = ? AND i.enabled = 1 "
            "AND i.direction IN (?, ?)",
            [field, Owner.EXTERNAL.value, Direction.INBOUND.value, Direction.BIDIRECTIONAL.value],
        )
    ]
    return max(owners)[2] if owners else None


def fields_agree(
    db: Database, connector_for: ConnectorFor, reconciles: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    problems = []
    for integration in integration_rows.all_rows(db):
        name = integration["name"]
        connector = connector_for(integration)
        rules = integration_rows.rules(db, integration["id"])
        refused = {
            (d["incident_id"], d["field"])
            for d in reconciles.get(name, {}).get("discrepancies", [])
            if d["action"] == "refused"
        }
        for link in db.query(
            "SELECT * FROM links WHERE integration_id = ? AND state = 'linked' ORDER BY id",
            [integration["id"]],
        ):
            incident = incidents.get(db, link["incident_id"])
            record = connector.get(link["external_id"])
            for field in _fields(integration, db):
                if field not in record.fields:
                    continue  # not readable there now (PagerDuty empties a resolved incident's)
                platform = incident.value(field)
                mine, theirs = connector.normalise(field, platform), record.fields[field]
                if mine == theirs:
                    continue
                why = _allowed(db, integration, rules, incident, field, theirs, refused)
                if why:
                    continue
                snapshot = db.execute(
                    "SELECT value, version FROM sync_snapshots WHERE integration_id = ? "
                    "AND incident_id = ? AND field = ?",
                    [integration["id"], incident.id, field],
                ).fetchone()
                problems.append(
                    f"{incident.display_id} {field}: the platform has {platform!r} (as {name} "
                    f"stores it: {mine!r}) but {name} {record.key} has {theirs!r} "
                    f"(snapshot {tuple(snapshot) if snapshot else None})"
                )
    return problems


def _allowed(
    db: Database,
    integration: Mapping[str, Any],
    rules: Mapping[str, Any],
    incident: Any,
    field: str,
    theirs: str,
    refused: set[tuple[str, str]],
) -> str | None:
    """Why SPEC lets this field differ, or None."""
    integration_id = integration["id"]
    pending = db.execute(
        "SELECT id FROM conflicts WHERE incident_id = ? AND integration_id = ? AND field = ? "
        "AND status = 'pending'",
        [incident.id, integration_id, field],
    ).fetchone()
    if pending:
        return f"held by conflict-{pending[0]}"
    rule = rules.get(field)
    if (
        rule is not None
        and rule.owner is Owner.EXTERNAL
        and _authoritative(db, field) != integration_id
    ):
        return "shadowed"
    if _open_dead(db, incident.id, integration_id, lambda row: field in row["fields"]):
        return "in the DLQ"
    if field == "status":
        try:
            check_transition(incident.status, theirs)
        except StateError:
            if (incident.display_id, field) in refused:
                return "refused by the platform's status machine"
        if (
            integration["type"] == "pagerduty"
            and incident.status == "triggered"
            and theirs == "acknowledged"
        ):
            return "PagerDuty refuses acknowledged -> triggered"
    return None


# -- journals -----------------------------------------------------------------------------------


def stored_journal(sim: Simulator, record_id: str) -> list[tuple[str, str]]:
    """(platform journal kind, text) of a record's entries, from the simulator's own store."""
    if isinstance(sim, ServiceNowSimulator):
        return [
            (row["element"], row["value"])
            for row in sim.tables["sys_journal_field"].values()
            if row["element_id"] == record_id
        ]
    if isinstance(sim, JiraSimulator):
        issue = sim.issues[int(record_id)]
        return [
            ("comments" if c.public else "work_notes", adf_to_text(c.body)) for c in issue.comments
        ]
    assert isinstance(sim, PagerDutySimulator)
    return [("work_notes", str(note["content"])) for note in sim.incidents[record_id].notes]


def journals_complete(
    db: Database, sims: Mapping[str, Simulator], connector_for: ConnectorFor
) -> list[str]:
    problems = []
    for number, kind, body, count in db.execute(
        "SELECT incident_id, kind, trim(body), count(*) FROM journal_entries "
        "GROUP BY incident_id, kind, trim(body) HAVING count(*) > 1"
    ):
        problems.append(f"INC-{number} {kind} {body!r}: {count} times on the platform")
    for integration in integration_rows.all_rows(db):
        name = integration["name"]
        connector = connector_for(integration)
        direction = Direction(integration["direction"])
        rules = integration_rows.rules(db, integration["id"])
        table = mapping.mappings(
            integration["type"],
            integration["settings"],
            integration_rows.overrides(db, integration["id"]),
        )
        kinds = [
            k for k in JOURNAL_FIELDS if k in table and table[k].synced and k in connector.journals
        ]
        origin = f"external:{name}"
        for link in db.query(
            "SELECT * FROM links WHERE integration_id = ? AND state = 'linked' ORDER BY id",
            [integration["id"]],
        ):
            number = link["incident_id"]
            theirs = Counter(
                (kind, connector.normalise(kind, text))
                for kind, text in stored_journal(sims[name], link["external_id"])
            )
            for (kind, text), count in sorted(theirs.items()):
                if count > 1:
                    problems.append(f"INC-{number} {kind} {text!r}: {count} times in {name}")
            ours = {
                (row["kind"], connector.normalise(row["kind"], row["body"])): row
                for row in db.query(
                    "SELECT * FROM journal_entries WHERE incident_id = ? ORDER BY id", [number]
                )
            }
            for (kind, text), row in ours.items():
                if kind not in kinds:
                    continue
                wanted = row["source"] == origin or ownership.pushes(direction, rules.get(kind))
                there = (kind, text) in theirs
                entry = row["id"]
                if wanted and not there:
                    dead = _open_dead(
                        db, number, integration["id"], lambda o, e=entry: e in o["journal"]
                    )
                    if not dead:
                        problems.append(
                            f"INC-{number} {kind} {text!r} (from {row['source']}) is missing in "
                            f"{name} (lost)"
                        )
                if there and not wanted:
                    problems.append(
                        f"INC-{number} {kind} {text!r} was sent to {name}, which owns {kind}"
                    )
            for kind, text in sorted(theirs):
                if (
                    kind in kinds
                    and (kind, text) not in ours
                    and ownership.accepts(direction, rules.get(kind))
                ):
                    problems.append(
                        f"INC-{number} {kind} {text!r} made in {name} is missing on the "
                        f"platform (lost)"
                    )
    return problems


# -- the last word --------------------------------------------------------------------------------

# Concurrent changes closer than this (the conflict window and a margin for vendors' whole
# seconds) are for the conflict rules; the last word is only checked outside it.
APART = timedelta(seconds=7)


def last_word(
    db: Database,
    connector_for: ConnectorFor,
    writes: Sequence[Any],
    made_there: Sequence[tuple[str, str]],
) -> list[str]:
    """Agreement alone would pass if every side agreed on an old value (a human's edit
    overwritten, a late echo rolling the platform back): the value they agree on must be
    the last word where SPEC §3 and §6 leave no doubt whose it is. For a field nobody owns
    as external, not in review, with no person's edit where the platform owns it (those
    are set aside, unless they meet a platform change within the conflict window: then the
    times the platform applied things decide, which this check does not follow):

    - the last change was the platform's and no person changed the field: it stands;
    - the last change was a person's (where nobody owns the field) and every other change
      came at least APART before it: it wins (the later change, outside the window).

    ``writes`` are ``tests.simulation.Write``; incidents made in an external system are
    left out (their first values were never followed)."""
    problems = []
    integrations = {row["name"]: row for row in integration_rows.all_rows(db)}
    made = set()
    for system, record in made_there:
        row = db.execute(
            "SELECT incident_id FROM links WHERE integration_id = ? AND external_id = ?",
            [integrations[system]["id"], record],
        ).fetchone()
        if row:
            made.add(row[0])
    by_record = {
        (name, row["external_id"]): row["incident_id"]
        for name, integration in integrations.items()
        for row in db.query(
            "SELECT incident_id, external_id FROM links WHERE integration_id = ?",
            [integration["id"]],
        )
    }
    for field in sorted({w.field for w in writes}):
        owners = {
            name: integration_rows.rules(db, integration["id"]).get(field)
            for name, integration in integrations.items()
        }
        if any(rule is not None and rule.owner is Owner.EXTERNAL for rule in owners.values()):
            continue  # the authoritative owner decides (fields_agree)
        changes: dict[int, list[Any]] = {}
        for w in writes:
            number = w.incident if w.system == "platform" else by_record.get((w.system, w.record))
            if w.field == field and number is not None and number not in made:
                changes.setdefault(number, []).append(w)
        for number, found in sorted(changes.items()):
            if any(w.system != "platform" and owners[w.system] is not None for w in found):
                continue  # a person's edit where the platform owns the field
            pending = db.execute(
                "SELECT 1 FROM conflicts WHERE incident_id = ? AND field = ? AND status = 'pending'",
                [number, field],
            ).fetchone()
            if pending:
                continue
            last = found[-1]  # in the order they were made (the clock may stand still)
            others = found[:-1]
            platform = incidents.get(db, number).value(field)
            if last.system == "platform":
                if any(w.system != "platform" for w in others):
                    continue
                if platform != last.value:
                    problems.append(
                        f"INC-{number} {field}: the platform's last change made it "
                        f"{last.value!r} at {last.at:%H:%M:%S} and no person changed it, but "
                        f"it is {platform!r} now"
                    )
                continue
            if any(w.at > last.at - APART for w in others):
                continue
            connector = connector_for(integrations[last.system])
            theirs = connector.normalise(field, last.value)
            if any(connector.normalise(field, w.value) == theirs for w in others):
                # back to a value it had before (PagerDuty's two urgencies): the record's
                # value alone cannot tell that edit from no edit (an event may repeat it),
                # so the platform's change in between can win
                continue
            if connector.normalise(field, platform) != theirs:
                earlier = ", ".join(f"{w.system} {w.value!r} at {w.at:%H:%M:%S}" for w in others)
                problems.append(
                    f"INC-{number} {field}: a person's change in {last.system} to "
                    f"{last.value!r} at {last.at:%H:%M:%S} was the last word (before it: "
                    f"{earlier or 'nothing'}), but the platform has {platform!r}: lost"
                )
    return problems
