"""Field ownership: the guide's defaults, the CLI, and the routing rules as properties."""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from im.config import ownership
from im.errors import ValidationError
from im.model import SCALAR_FIELDS, SYNC_FIELDS, Direction, Owner, Rule
from tests.conftest import Im

GUIDE_DEFAULTS = {
    "prod-snow": {
        "severity": ("platform", 10),
        "title": ("platform", 10),
        "description": ("platform", 10),
        "assigned_to": ("external", 5),
        "work_notes": ("external", 5),
    },
    "prod-jira": {
        "severity": ("platform", 10),
        "priority": ("platform", 10),
        "assigned_to": ("external", 5),
        "comments": ("external", 5),
    },
    "prod-pd": {
        "title": ("platform", 10),
        "description": ("platform", 10),
        "escalation_policy": ("external", 5),
        "assigned_to": ("external", 5),
    },
}


def _rules(im: Im, name: str) -> dict[str, tuple[str, int | None]]:
    rows = json.loads(im.ok("integration", "field-ownership", "list", name, "--format", "json"))
    return {r["field"]: (r["owner"], r["priority"]) for r in rows if r["owner"] != "none"}


def test_new_integrations_get_the_guide_defaults(three: Im) -> None:
    for name, expected in GUIDE_DEFAULTS.items():
        assert _rules(three, name) == expected


def test_list_shows_platform_and_external_names(three: Im) -> None:
    assert three.ok("integration", "field-ownership", "list", "prod-jira").splitlines() == [
        "field        external_field    owner     priority  default",
        "title        summary           none                no",
        "description  description       none                no",
        "severity                       platform  10        yes",
        "priority     priority          platform  10        yes",
        "status       status            none                no",
        "assigned_to  assignee          external  5         yes",
        "work_notes   comment.internal  none                no",
        "comments     comment.public    external  5         yes",
    ]


def test_the_guides_commands(three: Im) -> None:
    out = three.ok(
        "integration",
        "field-ownership",
        "set",
        "prod-snow",
        "severity",
        "--owner",
        "platform",
        "--priority",
        "10",
    )
    assert out == "prod-snow: severity owned by platform, priority 10\n"
    out = three.ok(
        "integration",
        "field-ownership",
        "set",
        "prod-snow",
        "assigned_to",
        "--owner",
        "external",
        "--priority",
        "5",
    )
    assert out == "prod-snow: assigned_to owned by external, priority 5\n"
    listed = json.loads(
        three.ok("integration", "field-ownership", "list", "prod-snow", "--format", "json")
    )
    severity = next(r for r in listed if r["field"] == "severity")
    assert severity == {
        "field": "severity",
        "external_field": "impact,urgency",
        "owner": "platform",
        "priority": 10,
        "default": False,
    }


def test_external_field_names_are_accepted(three: Im) -> None:
    out = three.ok(
        "integration", "field-ownership", "set", "prod-jira", "assignee", "--owner", "platform"
    )
    assert out == "prod-jira: assigned_to owned by platform, priority 0\n"
    out = three.ok(
        "integration",
        "field-ownership",
        "set",
        "prod-snow",
        "short_description",
        "--owner",
        "external",
        "--priority",
        "3",
    )
    assert out == "prod-snow: title owned by external, priority 3\n"


def test_unset_leaves_the_field_unowned(three: Im) -> None:
    assert three.ok("integration", "field-ownership", "unset", "prod-pd", "assigned_to") == (
        "prod-pd: assigned_to has no owner now\n"
    )
    assert "assigned_to" not in _rules(three, "prod-pd")
    again = three("integration", "field-ownership", "unset", "prod-pd", "assigned_to")
    assert (again.exit_code, again.stderr) == (
        1,
        "error: prod-pd has no ownership rule for assigned_to\n",
    )


def test_fields_an_integration_does_not_sync_are_refused(three: Im) -> None:
    result = three(
        "integration", "field-ownership", "set", "prod-snow", "priority", "--owner", "platform"
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "error: priority is not synced with servicenow integrations: "
        "ServiceNow derives its priority from impact and urgency\n"
    )
    result = three(
        "integration", "field-ownership", "set", "prod-snow", "colour", "--owner", "platform"
    )
    assert result.stderr.startswith(
        "error: unknown field 'colour' for a servicenow integration (use title, "
    )
    result = three(
        "integration", "field-ownership", "set", "prod-snow", "title", "--owner", "vendor"
    )
    assert (
        result.exit_code == 2 and "'vendor' is not one of 'platform', 'external'" in result.stderr
    )


def test_bidirectional_warning_goes_once_ownership_is_reviewed(three: Im) -> None:
    three.ok(
        "integration", "field-ownership", "set", "prod-snow", "assigned_to", "--owner", "platform"
    )
    result = three("integration", "configure", "prod-snow", "--direction", "bidirectional")
    assert result.exit_code == 0
    assert "field ownership is still the defaults" not in result.stderr


def test_mapping_list_set_unset(three: Im) -> None:
    rows = json.loads(
        three.ok("integration", "field-mapping", "list", "prod-snow", "--format", "json")
    )
    assert [(r["field"], r["external_field"]) for r in rows] == [
        ("title", "short_description"),
        ("description", "description"),
        ("severity", "impact,urgency"),
        ("status", "state"),
        ("assigned_to", "assigned_to"),
        ("work_notes", "work_notes"),
        ("comments", "comments"),
    ]
    severity = rows[2]
    assert severity["values"] == "sev1=1/1, sev2=1/2, sev3=2/2, sev4=2/3, sev5=3/3"
    jira = json.loads(
        three.ok("integration", "field-mapping", "list", "prod-jira", "--format", "json")
    )
    assert jira[2] == {
        "field": "severity",
        "external_field": "",
        "synced": False,
        "values": "sev1=Sev-1, sev2=Sev-2, sev3=Sev-3, sev4=Sev-4, sev5=Sev-5",
        "overridden": False,
        "note": "not synced until --severity-field names the custom field",
    }
    out = three.ok(
        "integration",
        "field-mapping",
        "set",
        "prod-jira",
        "severity",
        "customfield_10050",
        "--value",
        "sev1=Critical",
    )
    assert (
        out
        == "prod-jira: severity -> customfield_10050 (sev1=Critical, sev2=Sev-2, sev3=Sev-3, sev4=Sev-4, sev5=Sev-5)\n"
    )
    # Once mapped, severity changes go to Jira too.
    created = three.ok("incident", "create", "--title", "t")
    assert "queued for prod-jira: create of title, severity, priority, status" in created
    assert three.ok("integration", "field-mapping", "unset", "prod-jira", "severity") == (
        "prod-jira: severity has its default mapping again\n"
    )
    bad = three(
        "integration",
        "field-mapping",
        "set",
        "prod-jira",
        "severity",
        "customfield_1",
        "--value",
        "sev9=x",
    )
    assert bad.exit_code == 2 and "'sev9' is not a severity" in bad.stderr


def test_the_severity_field_option_maps_jira_severity(initialised: Im) -> None:
    from tests.conftest import JIRA, SECRETS

    initialised.ok(
        "integration", "create", "j", *JIRA, "--severity-field", "customfield_10050", env=SECRETS
    )
    rows = json.loads(
        initialised.ok("integration", "field-mapping", "list", "j", "--format", "json")
    )
    assert rows[2]["external_field"] == "customfield_10050" and rows[2]["synced"] is True


# The routing rules, as properties.

directions = st.sampled_from(list(Direction))
owners = st.sampled_from([None, Owner.PLATFORM, Owner.EXTERNAL])
rule_sets = st.dictionaries(
    st.sampled_from(SYNC_FIELDS), st.tuples(st.sampled_from(list(Owner)), st.integers(-5, 20))
).map(lambda d: {f: Rule(f, o, p) for f, (o, p) in d.items()})
field_lists = st.lists(st.sampled_from(SYNC_FIELDS), unique=True)


@given(directions, rule_sets, field_lists, field_lists, st.booleans())
def test_outbound_fields_follow_direction_ownership_and_mapping(
    direction: Direction,
    rules: dict[str, Rule],
    synced: list[str],
    changed: list[str],
    creating: bool,
) -> None:
    sent = ownership.outbound_fields(direction, rules, synced, changed, creating)
    for name in SYNC_FIELDS:
        rule = rules.get(name)
        expected = (
            direction is not Direction.INBOUND
            and name in synced
            and name in changed
            and (creating or rule is None or rule.owner is Owner.PLATFORM)
        )
        assert (name in sent) == expected
    assert sent == [f for f in changed if f in sent]  # order kept


@given(directions, owners)
def test_a_field_flows_in_at_most_the_directions_its_owner_allows(
    direction: Direction, owner: Owner | None
) -> None:
    rule = None if owner is None else Rule("title", owner, 0)
    pushed, accepted = ownership.pushes(direction, rule), ownership.accepts(direction, rule)
    assert not (owner is Owner.PLATFORM and accepted)
    assert not (owner is Owner.EXTERNAL and pushed)
    if owner is None:
        assert pushed == direction.sends and accepted == direction.receives


edits = st.lists(
    st.one_of(
        st.tuples(
            st.just("field"),
            st.sampled_from(["severity", "priority", "assigned_to", "title", "status"]),
        ),
        st.tuples(st.just("journal"), st.sampled_from(["work_notes", "comments"])),
        st.tuples(st.just("link"), st.sampled_from(["prod-snow", "prod-jira", "prod-pd"])),
    ),
    max_size=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.fixed_dictionaries({n: directions for n in ("prod-snow", "prod-jira", "prod-pd")}),
    st.dictionaries(
        st.sampled_from(["prod-snow", "prod-jira", "prod-pd"]),
        st.tuples(st.sampled_from(SCALAR_FIELDS[:7]), st.sampled_from(list(Owner))),
    ),
    edits,
)
def test_queued_rows_obey_the_rules_through_the_database(
    three: Im,
    directions_by_name: dict[str, Direction],
    extra_rules: dict[str, tuple[str, Owner]],
    steps: list[tuple[str, str]],
) -> None:
    """Whatever the configuration and edits: rows only carry what each integration may receive,
    at most one row per pair is waiting, and an inbound-only integration gets nothing."""
    from im import incidents
    from im.cli.context import AppContext
    from im.config import fields as field_rules
    from im.store import integrations as integration_rows

    ctx = AppContext(db_path=three.db_path, clock=three.clock)
    db = ctx.db
    db.execute("DELETE FROM outbox")
    db.execute("DELETE FROM links")
    db.execute("DELETE FROM incidents")
    for name, direction in directions_by_name.items():
        db.execute("UPDATE integrations SET direction = ? WHERE name = ?", [direction.value, name])
    for name, (field, owner) in extra_rules.items():
        with contextlib.suppress(ValidationError):  # a field that integration does not sync
            field_rules.set_ownership(db, name, field, owner.value, 1)
    incident = incidents.create(db, three.clock, "alice", {"title": "t"}).incident
    alternatives = {
        "severity": ("sev1", "sev2"),
        "priority": ("p1", "p2"),
        "assigned_to": ("bob@example.com", "carol@example.com"),
        "title": ("t2", "t3"),
        "status": ("triggered", "resolved"),  # resolved <-> triggered is always allowed
    }
    for kind, what in steps:
        if kind == "field":
            current = incidents.get(db, incident.id).value(what)
            new = next(v for v in alternatives[what] if v != current)
            incidents.update(db, three.clock, "alice", f"INC-{incident.id}", {what: new})
        elif kind == "journal":
            incidents.comment(db, three.clock, "alice", f"INC-{incident.id}", what, "note")
        else:
            integration_id = integration_rows.find(db, what)["id"]  # type: ignore[index]
            db.execute(
                "UPDATE outbox SET state = 'done' WHERE integration_id = ? AND state = 'pending'",
                [integration_id],
            )
            db.execute(
                "INSERT OR IGNORE INTO links (incident_id, integration_id, external_id, created_at) VALUES (?, ?, ?, 'now')",
                [incident.id, integration_id, f"x-{integration_id}"],
            )
    for integration in integration_rows.all_rows(db):
        direction = Direction(integration["direction"])
        rules = integration_rows.rules(db, integration["id"])
        rows = list(db.query("SELECT * FROM outbox WHERE integration_id = ?", [integration["id"]]))
        if not direction.sends:
            assert rows == []
        assert sum(1 for r in rows if r["state"] == "pending") <= 1
        for row in rows:
            sent = json.loads(row["fields"])
            journal_kinds = (
                [
                    k
                    for (k,) in db.execute(
                        f"SELECT kind FROM journal_entries WHERE id IN ({','.join('?' * len(json.loads(row['journal'])))})",
                        json.loads(row["journal"]),
                    ).fetchall()
                ]
                if json.loads(row["journal"])
                else []
            )
            for kind in journal_kinds:
                assert ownership.pushes(direction, rules.get(kind))
            if row["operation"] == "update":
                for name in sent:
                    assert ownership.pushes(direction, rules.get(name)), (integration["name"], name)
    ctx.close()
