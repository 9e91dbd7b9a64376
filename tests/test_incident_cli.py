"""`im incident ...`: fields, validation, the status machine, history and what gets queued."""

from __future__ import annotations

import json

import pytest

from im import incidents
from im.cli.context import AppContext
from tests.conftest import Im


def test_create_queues_every_mapped_non_empty_field_for_each_integration(three: Im) -> None:
    out = three.ok(
        "incident",
        "create",
        "--title",
        "Checkout 5xx",
        "--severity",
        "sev1",
        "--assigned-to",
        "Bob@Example.com",
        "--escalation-policy",
        "PEP0001",
    )
    assert out.splitlines() == [
        "created INC-1: Checkout 5xx",
        "  queued for prod-snow: create of title, severity, status, assigned_to",
        "  queued for prod-jira: create of title, priority, status, assigned_to",
        "  queued for prod-pd: create of title, severity, priority, status, assigned_to, escalation_policy",
    ]
    shown = json.loads(three.ok("incident", "show", "INC-1", "--format", "json"))
    assert shown["assigned_to"] == "bob@example.com"  # emails are normalised
    assert (shown["status"], shown["priority"], shown["created_by"]) == ("triggered", "p3", "alice")
    keys = {q["integration"]: q for q in shown["queued"]}
    assert keys["prod-pd"]["fields"] == sorted(
        ["title", "severity", "priority", "status", "assigned_to", "escalation_policy"]
    )
    row = (
        three.db()
        .execute("SELECT correlation_key, attempts, state FROM outbox WHERE id = 1")
        .fetchone()
    )
    install_id = three.db().execute("SELECT value FROM meta WHERE key = 'install_id'").fetchone()[0]
    assert row == (f"im:{install_id}:INC-1", 0, "pending")


def test_update_coalesces_into_the_waiting_row(three: Im) -> None:
    three.ok("incident", "create", "--title", "Checkout 5xx")
    three.clock.advance(2)
    out = three.ok(
        "incident", "update", "INC-1", "--severity", "sev2", "--title", "Checkout 5xx EU"
    )
    assert out.splitlines() == [
        "updated INC-1: Checkout 5xx EU",
        "  title: Checkout 5xx -> Checkout 5xx EU",
        "  severity: sev3 -> sev2",
        "  queued for prod-snow: create of title, severity, status (merged into the waiting change)",
        "  queued for prod-jira: create of title, priority, status (merged into the waiting change)",
        "  queued for prod-pd: create of title, severity, priority, status (merged into the waiting change)",
    ]
    rows = (
        three.db()
        .execute("SELECT integration_id, fields, next_attempt_at FROM outbox ORDER BY id")
        .fetchall()
    )
    assert len(rows) == 3
    assert json.loads(rows[0][1])["title"] == "Checkout 5xx EU"
    assert rows[0][2] == "2026-11-27T09:00:00.000Z"  # the row keeps its schedule


def test_updates_to_a_linked_incident_follow_ownership(three: Im) -> None:
    three.ok("incident", "create", "--title", "Checkout 5xx")
    db = three.db()
    # As if the daemon had created all three records and linked them.
    db.execute("UPDATE outbox SET state = 'done'")
    for integration_id in (1, 2, 3):
        db.execute(
            "INSERT INTO links (incident_id, integration_id, external_id, created_at) VALUES (1, ?, ?, 'now')",
            [integration_id, f"ext-{integration_id}"],
        )
    db.conn.commit()
    out = three.ok(
        "incident", "update", "INC-1", "--assigned-to", "bob@example.com", "--severity", "sev1"
    )
    # assigned_to is external-owned everywhere by default; severity is not mapped to Jira.
    assert out.splitlines()[3:] == [
        "  queued for prod-snow: update of severity",
        "  queued for prod-pd: update of severity",
    ]
    out = three.ok("incident", "comment", "INC-1", "Rolled back")
    # comments: external-owned in Jira, not a PagerDuty field.
    assert out.splitlines()[1:] == [
        "  queued for prod-snow: update of 1 journal entry (merged into the waiting change)"
    ]
    out = three.ok("incident", "comment", "INC-1", "db failover", "--work-note")
    # work notes: external-owned in ServiceNow.
    assert out.splitlines()[1:] == [
        "  queued for prod-jira: update of 1 journal entry",
        "  queued for prod-pd: update of 1 journal entry (merged into the waiting change)",
    ]


def test_status_machine(initialised: Im) -> None:
    initialised.ok("incident", "create", "--title", "t")
    assert (
        initialised("incident", "update", "INC-1", "--status", "resolved").exit_code == 0
    )  # skips ack
    assert (
        initialised("incident", "update", "INC-1", "--status", "triggered").exit_code == 0
    )  # reopen
    assert initialised("incident", "update", "INC-1", "--status", "acknowledged").exit_code == 0
    back = initialised("incident", "update", "INC-1", "--status", "triggered")
    assert back.exit_code == 1
    assert back.stderr == (
        "error: status cannot go back from acknowledged to triggered "
        "(only a resolved incident can go back, to triggered)\n"
    )
    assert initialised("incident", "update", "INC-1", "--status", "closed").exit_code == 0
    final = initialised("incident", "update", "INC-1", "--status", "resolved")
    assert (
        final.stderr == "error: the incident is closed; closed is final (create a new incident)\n"
    )


def test_a_refused_update_writes_nothing(three: Im) -> None:
    three.ok("incident", "create", "--title", "t")
    three.ok("incident", "update", "INC-1", "--status", "acknowledged")
    before = three.db().execute("SELECT count(*) FROM field_changes").fetchone()[0]
    result = three("incident", "update", "INC-1", "--severity", "sev1", "--status", "triggered")
    assert result.exit_code == 1
    shown = json.loads(three.ok("incident", "show", "INC-1", "--format", "json"))
    assert shown["severity"] == "sev3"
    assert three.db().execute("SELECT count(*) FROM field_changes").fetchone()[0] == before


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("create", "--title", ""), 2, "error: title must not be empty\n"),
        (("create", "--title", "x" * 256), 2, "error: title is 256 characters; the limit is 255\n"),
        (("create",), 2, "error: --title is required\n"),
        (
            ("create", "--title", "t", "--assigned-to", "bob"),
            2,
            "error: assigned_to must be a user's email address, not 'bob' (pass \"\" to unassign)\n",
        ),
        (
            ("create", "--title", "t", "--priority", "p0"),
            2,
            "error: Invalid value for '--priority': 'p0' is not one of 'p1', 'p2', 'p3', 'p4', 'p5'. "
            "(see `im incident create --help`)\n",
        ),
        (
            ("update", "INC-1"),
            2,
            "error: nothing to update (give at least one field option, e.g. --severity sev2)\n",
        ),
        (
            ("update", "INC-7", "--severity", "sev1"),
            1,
            "error: no incident INC-7 (incidents run from INC-1 to INC-1; see `im incident list`)\n",
        ),
        (("show", "banana"), 1, "error: no incident 'banana' (incident ids look like INC-12)\n"),
        (("comment", "INC-1", "   "), 2, "error: a comment must not be empty\n"),
        (
            ("list", "--limit", "0"),
            2,
            "error: Invalid value for '--limit': 0 is not in the range 1<=x<=1000000. (see `im incident list --help`)\n",
        ),
        (("frobnicate",), 2, "error: No such command 'frobnicate'. (see `im incident --help`)\n"),
    ],
)
def test_bad_input_gives_one_line_and_an_exit_code(
    initialised: Im, args: tuple[str, ...], code: int, message: str
) -> None:
    initialised.ok("incident", "create", "--title", "t")
    result = initialised("incident", *args)
    assert (result.exit_code, result.stderr) == (code, message)
    assert initialised.db().execute("SELECT count(*) FROM incidents").fetchone()[0] == 1


def test_show_and_history(three: Im) -> None:
    three.ok("incident", "create", "--title", "Checkout 5xx", "--description", "since 08:55")
    three.clock.advance(60)
    three.ok("incident", "update", "INC-1", "--status", "acknowledged", "--commander", "carol")
    three.clock.advance(1.5)
    three.ok("incident", "comment", "INC-1", "Rolled back deploy 42")
    history = three.ok("incident", "history", "INC-1")
    # the sync timeline: each change with where it goes (nothing is sent without a daemon)
    assert history.splitlines() == [
        "time                      what                               origin            sent to / acknowledged",
        "2026-11-27T09:00:00.000Z  title = Checkout 5xx               platform (alice)  prod-snow: pending; prod-jira: pending; prod-pd: pending",
        "2026-11-27T09:00:00.000Z  description = since 08:55          platform (alice)  prod-snow: pending; prod-jira: pending; prod-pd: pending",
        "2026-11-27T09:00:00.000Z  severity = sev3                    platform (alice)  prod-snow: pending; prod-pd: pending",
        "2026-11-27T09:00:00.000Z  priority = p3                      platform (alice)  prod-jira: pending; prod-pd: pending",
        "2026-11-27T09:00:00.000Z  status = triggered                 platform (alice)  prod-snow: pending (queued with a later change); prod-jira: pending (queued with a later change); prod-pd: pending (queued with a later change)",
        "2026-11-27T09:01:00.000Z  status: triggered -> acknowledged  platform (alice)  prod-snow: pending; prod-jira: pending; prod-pd: pending",
        "2026-11-27T09:01:00.000Z  commander: (empty) -> carol        platform (alice)",
        "2026-11-27T09:01:01.500Z  comment: Rolled back deploy 42     platform (alice)  prod-snow: pending",
    ]
    shown = three.ok("incident", "show", "INC-1")
    assert (
        "comment by alice at 2026-11-27T09:01:01.500Z (platform):\n  Rolled back deploy 42" in shown
    )
    assert "prod-snow    create     pending" in shown
    data = json.loads(three.ok("incident", "show", "inc-1", "--format", "json"))
    assert data["journal"][0]["body"] == "Rolled back deploy 42"
    assert data["commander"] == "carol"


def test_list_shows_the_newest_fifty_by_default(initialised: Im) -> None:
    ctx = AppContext(db_path=initialised.db_path, clock=initialised.clock)
    for n in range(55):
        incidents.create(ctx.db, initialised.clock, "alice", {"title": f"incident {n + 1}"})
    ctx.close()
    listed = json.loads(initialised.ok("incident", "list", "--format", "json"))
    assert len(listed) == 50
    assert (listed[0]["id"], listed[-1]["id"]) == ("INC-55", "INC-6")
    assert len(json.loads(initialised.ok("incident", "list", "--all", "--format", "json"))) == 55
    assert (
        len(json.loads(initialised.ok("incident", "list", "--limit", "3", "--format", "json"))) == 3
    )
    initialised.ok("incident", "update", "INC-2", "--status", "resolved")
    resolved = initialised.ok("incident", "list", "--status", "resolved", "--format", "jsonl")
    assert [json.loads(line)["id"] for line in resolved.splitlines()] == ["INC-2"]


def test_comment_from_standard_input(initialised: Im) -> None:
    initialised.ok("incident", "create", "--title", "t")
    initialised.ok("incident", "comment", "INC-1", "-", input="line one\nline two\n")
    data = json.loads(initialised.ok("incident", "show", "INC-1", "--format", "json"))
    assert data["journal"][0]["body"] == "line one\nline two\n"


def test_an_unexpected_error_is_one_line_without_details(
    initialised: Im, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret-ish internal detail")

    monkeypatch.setattr(incidents, "listing", explode)
    result = initialised("incident", "list")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: internal error (RuntimeError); rerun with IM_DEBUG=1 to see the traceback "
        "and please report it\n"
    )
