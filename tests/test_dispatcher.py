"""The outbound dispatcher, stepped by hand on a frozen clock against the three simulators
in-process: delivery, the exact retry schedule into the DLQ, pauses that charge nothing,
coalescing, ordering, in-doubt creates, journals, and the DLQ commands."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from im.clock import FrozenClock, format_time
from im.config.connection import open_connector
from im.connectors.base import Connector, ExternalRecord
from im.incidents import get as get_incident
from im.sim.core import Simulator
from im.sim.jira import JiraSimulator
from im.sim.pagerduty import PagerDutySimulator
from im.sim.servicenow import ServiceNowSimulator
from im.store import integrations as integration_rows
from im.store import open_database, sync_state
from im.store import outbox as outbox_rows
from im.store.db import write
from im.sync.dispatcher import Dispatcher
from tests.conftest import Im
from tests.two_way import external_id

CREATE = {
    "prod-snow": ["--type", "servicenow", "--url", "http://127.0.0.1:1", "--username", "im-integration"],
    "prod-jira": [
        "--type", "jira", "--url", "http://127.0.0.1:2", "--email", "im-integration@example.com",
        "--project", "OPS",
    ],
    "prod-pd": [
        "--type", "pagerduty", "--url", "http://127.0.0.1:3", "--from-email",
        "im-integration@example.com", "--service", "PSVC001", "--escalation-policy", "PEP0001",
    ],
}  # fmt: skip
SECRETS = {
    "prod-snow": "im-integration",
    "prod-jira": "im-integration-token",
    "prod-pd": "im-integration-token",
}


@dataclass
class World:
    im: Im
    clock: FrozenClock
    sims: dict[str, Simulator]
    dispatcher: Dispatcher

    def step(self) -> None:
        self.dispatcher.step()

    def db(self) -> Any:
        return self.dispatcher.db

    def integration(self, name: str) -> dict[str, Any]:
        row = integration_rows.find(self.db(), name)
        assert row is not None
        return row

    def connector(self, name: str) -> Connector:
        integration = self.integration(name)
        return open_connector(
            self.db(), integration, transport=self.sims[name].transport(), sleep=self.clock.advance
        )

    def external(self, name: str, incident: int) -> ExternalRecord:
        record = external_id(self.db(), name, incident)
        connector = self.connector(name)
        try:
            return connector.get(record)
        finally:
            connector.close()

    def rows(self, name: str) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.db().query(
                "SELECT o.* FROM outbox o JOIN integrations i ON i.id = o.integration_id "
                "WHERE i.name = ? ORDER BY o.id",
                [name],
            )
        ]

    def counters(self, name: str) -> dict[str, int]:
        return sync_state.counters(self.db(), self.integration(name)["id"])


@pytest.fixture
def world(initialised: Im, clock: FrozenClock) -> Iterator[World]:
    for name, args in CREATE.items():
        secret_var = "IM_PASSWORD" if name == "prod-snow" else "IM_API_TOKEN"
        initialised.ok("integration", "create", name, *args, env={secret_var: SECRETS[name]})
    sims: dict[str, Simulator] = {
        "prod-snow": ServiceNowSimulator(clock=clock),
        "prod-jira": JiraSimulator(clock=clock),
        "prod-pd": PagerDutySimulator(clock=clock),
    }
    db = open_database(initialised.db_path)
    dispatcher = Dispatcher(
        db,
        clock,
        transport_for=lambda integration: sims[integration["name"]].transport(),
        sleep=clock.advance,
    )
    yield World(initialised, clock, sims, dispatcher)
    dispatcher.close()
    db.close()
    for sim in sims.values():
        sim.shutdown()


def new_incident(world: World, title: str = "Checkout API 5xx", *extra: str) -> int:
    out = world.im.ok("incident", "create", "--title", title, "--format", "json", *extra)
    return int(json.loads(out)["incident"]["id"].removeprefix("INC-"))


def test_a_new_incident_reaches_all_three_systems_once(world: World) -> None:
    n = new_incident(
        world, "Checkout API 5xx", "--severity", "sev1", "--assigned-to", "alice@example.com"
    )
    world.step()
    for name in CREATE:
        record = world.external(name, n)
        assert record.fields["title"] == "Checkout API 5xx"
        assert record.correlation_key and record.correlation_key.endswith(f":INC-{n}")
        assert world.counters(name) == {"outbound_success": 1}
        assert [r["state"] for r in world.rows(name)] == ["done"]
        assert world.sims[name].record_count() == 1
    assert world.external("prod-pd", n).fields["assigned_to"] == "alice@example.com"
    world.step()  # nothing left: nothing sent twice
    assert all(world.sims[name].record_count() == 1 for name in CREATE)


def test_an_update_goes_out_and_external_owned_fields_stay_home(world: World) -> None:
    n = new_incident(world)
    world.step()
    world.im.ok(
        "incident",
        "update",
        f"INC-{n}",
        "--title",
        "Checkout API recovering",
        "--assigned-to",
        "bob@example.com",
    )
    world.step()
    # ServiceNow owns assigned_to (default ownership), so only the title went there
    snow = world.external("prod-snow", n)
    assert snow.fields["title"] == "Checkout API recovering"
    assert snow.fields.get("assigned_to", "") == ""
    assert world.external("prod-jira", n).fields["title"] == "Checkout API recovering"


def test_a_failing_row_walks_the_exact_schedule_into_the_dlq(world: World) -> None:
    n = new_incident(world)
    world.sims["prod-pd"].faults.update({"error_rate": 1})
    start = world.clock.now()
    world.step()
    waits = [30, 120, 480, 1800]
    for attempt, wait in enumerate(waits, start=1):
        row = world.rows("prod-pd")[0]
        assert row["attempts"] == attempt and row["state"] in ("pending", "in_doubt")
        world.clock.advance(wait - 1)
        world.step()
        assert world.rows("prod-pd")[0]["attempts"] == attempt  # not a second early
        world.clock.advance(1)
        world.step()
    row = world.rows("prod-pd")[0]
    assert row["state"] == "dead" and row["attempts"] == 5
    times = [a["at"] for a in json.loads(row["attempt_log"])]
    elapsed = [0, 30, 150, 630, 2430]
    assert times == [
        format_time(start + __import__("datetime").timedelta(seconds=s)) for s in elapsed
    ]
    assert world.counters("prod-pd") == {"outbound_failed": 5}
    shown = json.loads(world.im.ok("integration", "dlq", "prod-pd", "--format", "json"))
    assert len(shown) == 1
    assert shown[0]["incident"] == f"INC-{n}" and len(shown[0]["attempts"]) == 5
    assert "500" in shown[0]["error"]
    # the other integrations were not held up
    assert world.sims["prod-snow"].record_count() == 1


def test_rate_limit_pauses_the_integration_and_charges_no_attempt(world: World) -> None:
    first = new_incident(world, "first")
    second = new_incident(world, "second")
    world.sims["prod-jira"].faults.update({"rate_limit_rate": 1, "retry_after": 7})
    world.step()
    rows = world.rows("prod-jira")
    assert rows[0]["attempts"] == 0 and rows[0]["pauses"] == 1
    state = sync_state.get(world.db(), world.integration("prod-jira")["id"])
    assert state["pause_reason"] == "rate-limited"
    world.sims["prod-jira"].faults.update({"rate_limit_rate": 0})
    world.clock.advance(6)
    world.step()
    assert world.sims["prod-jira"].record_count() == 0  # still paused
    world.clock.advance(1)
    world.step()
    assert world.sims["prod-jira"].record_count() == 2
    assert world.external("prod-jira", first).fields["title"] == "first"
    assert world.external("prod-jira", second).fields["title"] == "second"
    assert all(r["attempts"] == 0 for r in world.rows("prod-jira"))


def test_auth_failure_pauses_until_the_credentials_change(world: World) -> None:
    world.im.ok("integration", "configure", "prod-pd", "--api-token", "wrong-token")
    n = new_incident(world)
    world.step()
    row = world.rows("prod-pd")[0]
    assert row["attempts"] == 0 and row["state"] == "pending"
    world.clock.advance(3600)
    world.step()
    assert world.rows("prod-pd")[0]["attempts"] == 0  # nothing sent while failing
    assert world.counters("prod-pd")["outbound_failed"] == 1
    world.im.ok("integration", "configure", "prod-pd", "--api-token", "im-integration-token")
    world.clock.advance(1)
    world.step()
    assert world.external("prod-pd", n).fields["title"] == "Checkout API 5xx"


def test_a_permanent_error_goes_to_the_dlq_at_once(world: World) -> None:
    new_incident(world)
    world.sims["prod-snow"].faults.update({"permanent_error": 400})
    world.step()
    row = world.rows("prod-snow")[0]
    assert row["state"] == "dead" and row["attempts"] == 1
    assert "simulated permanent error" in row["last_error"]


def test_a_newer_change_coalesces_into_the_waiting_row_and_keeps_its_schedule(world: World) -> None:
    n = new_incident(world)
    world.step()
    world.sims["prod-jira"].faults.update({"error_rate": 1})
    world.im.ok("incident", "update", f"INC-{n}", "--title", "second title")
    world.step()
    world.sims["prod-jira"].faults.update({"error_rate": 0})
    world.clock.advance(10)
    world.im.ok("incident", "update", f"INC-{n}", "--title", "third title", "--priority", "p1")
    rows = world.rows("prod-jira")
    assert len(rows) == 2  # the create, and one update row holding both changes
    assert json.loads(rows[1]["fields"]) == {"priority": "p1", "title": "third title"}
    assert rows[1]["attempts"] == 1
    world.clock.advance(19)
    world.step()
    assert world.external("prod-jira", n).fields["title"] == "Checkout API 5xx"  # not yet due
    world.clock.advance(1)
    world.step()
    record = world.external("prod-jira", n)
    assert (record.fields["title"], record.fields["priority"]) == ("third title", "p1")


def test_rows_behind_an_unlinked_create_wait_for_it(world: World) -> None:
    world.sims["prod-snow"].faults.update({"error_rate": 1})
    n = new_incident(world, "created late")
    world.step()  # the create fails: it is in doubt, so a later change gets its own row
    world.im.ok("incident", "update", f"INC-{n}", "--title", "renamed")
    world.sims["prod-snow"].faults.update({"error_rate": 0})
    world.step()
    assert world.sims["prod-snow"].record_count() == 0  # the update did not jump the queue
    world.clock.advance(30)
    world.step()  # the create
    world.step()  # then the update
    assert world.sims["prod-snow"].record_count() == 1
    assert world.external("prod-snow", n).fields["title"] == "renamed"
    assert [r["state"] for r in world.rows("prod-snow")] == ["done", "done"]


def test_a_create_whose_answer_was_lost_is_not_made_twice(world: World) -> None:
    n = new_incident(world)
    world.sims["prod-jira"].faults.update({"write_timeout_rate": 1})
    world.step()
    assert world.rows("prod-jira")[0]["state"] == "in_doubt"
    assert world.sims["prod-jira"].record_count() == 1  # it did reach Jira
    world.sims["prod-jira"].faults.update({"write_timeout_rate": 0})
    world.clock.advance(30)
    world.step()
    assert world.sims["prod-jira"].record_count() == 1
    assert world.external("prod-jira", n).fields["title"] == "Checkout API 5xx"


def test_a_crashed_dispatchers_lease_expires_and_its_create_is_looked_up(world: World) -> None:
    n = new_incident(world)
    crashed = Dispatcher(
        world.dispatcher.db,
        world.clock,
        owner="crashed",
        transport_for=lambda i: world.sims[i["name"]].transport(),
    )
    _, jobs = crashed._claim()  # leased, then the process "dies" mid-send
    pd_job = next(j for j in jobs if j.integration["name"] == "prod-pd")
    with write(world.db()):
        outbox_rows.sending(world.db(), pd_job.row["id"], format_time(world.clock.now()))
    crashed._send(pd_job)  # it reached PagerDuty, but nothing was recorded
    world.step()
    assert world.sims["prod-pd"].record_count() == 1  # leased rows are not taken again early
    world.clock.advance(61)
    world.step()
    assert world.sims["prod-pd"].record_count() == 1
    assert world.external("prod-pd", n).fields["title"] == "Checkout API 5xx"
    row = world.rows("prod-pd")[0]
    assert row["state"] == "done"
    assert "stopped while sending" in row["attempt_log"]


def test_journal_entries_are_appended_once(world: World) -> None:
    n = new_incident(world)
    world.im.ok("incident", "comment", f"INC-{n}", "DB failover at 09:12", "--work-note")
    world.step()
    world.step()
    connector = world.connector("prod-pd")
    notes = connector.list_journal(world.external("prod-pd", n).id)
    connector.close()
    assert [(e.field, e.body) for e in notes] == [("work_notes", "DB failover at 09:12")]
    linked = world.db().execute("SELECT count(*) FROM journal_links").fetchone()[0]
    assert linked >= 1


def test_an_agents_concurrent_edit_is_not_overwritten_blindly(world: World) -> None:
    world.im.ok("integration", "configure", "prod-jira", "--direction", "bidirectional")
    n = new_incident(world)
    world.step()
    world.sims["prod-jira"].faults.update({"error_rate": 1})
    world.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    world.step()  # fails; retried in 30 s
    world.sims["prod-jira"].faults.update({"error_rate": 0})
    world.clock.advance(10)
    record = world.external("prod-jira", n)
    agent = world.connector("prod-jira")  # stands in for a person's edit through the API
    agent.update(record.id, {"title": "agent title"})
    agent.close()
    world.clock.advance(20)
    world.step()
    assert world.external("prod-jira", n).fields["title"] == "agent title"


def test_a_404_on_update_breaks_the_link_and_dead_letters_the_row(world: World) -> None:
    n = new_incident(world)
    world.step()
    sim = world.sims["prod-jira"]
    record = world.external("prod-jira", n)
    with httpx.Client(
        transport=sim.transport(), base_url="http://sim", auth=("agent@example.com", "agent-token")
    ) as agent:
        assert agent.delete(f"/rest/api/3/issue/{record.id}").status_code == 204
    world.im.ok("incident", "update", f"INC-{n}", "--title", "after delete")
    world.step()
    state = (
        world.db()
        .execute(
            "SELECT l.state FROM links l JOIN integrations i ON i.id = l.integration_id WHERE i.name = 'prod-jira'"
        )
        .fetchone()[0]
    )
    assert state == "broken"
    assert world.rows("prod-jira")[-1]["state"] == "dead"
    assert (
        "gone" in world.rows("prod-jira")[-1]["last_error"]
        or "404" in world.rows("prod-jira")[-1]["last_error"]
    )


def test_dlq_retry_sends_current_values_and_discard_removes(world: World) -> None:
    first = new_incident(world, "first")
    second = new_incident(world, "second")
    world.sims["prod-pd"].faults.update({"permanent_error": 422})
    world.step()
    entries = json.loads(world.im.ok("integration", "dlq", "prod-pd", "--format", "json"))
    assert [e["incident"] for e in entries] == [f"INC-{first}", f"INC-{second}"]
    world.sims["prod-pd"].faults.update({"permanent_error": 0})
    world.im.ok("incident", "update", f"INC-{first}", "--title", "first, renamed")
    out = world.im.ok("integration", "dlq-retry", "prod-pd", entries[0]["id"])
    assert entries[0]["id"] in out
    world.step()
    assert world.external("prod-pd", first).fields["title"] == "first, renamed"
    world.im.ok("integration", "dlq-discard", "prod-pd", entries[1]["id"])
    assert json.loads(world.im.ok("integration", "dlq", "prod-pd", "--format", "json")) == []
    assert world.sims["prod-pd"].record_count() == 1


def test_dlq_commands_refuse_unknown_entries(world: World) -> None:
    result = world.im("integration", "dlq-retry", "prod-pd", "entry-99")
    assert result.exit_code == 1 and "no DLQ entry entry-99" in result.stderr
    result = world.im("integration", "dlq-discard", "prod-pd", "garbage")
    assert result.exit_code == 1 and "not a DLQ entry id" in result.stderr
    result = world.im("integration", "dlq-retry", "prod-pd")
    assert result.exit_code == 2 and "ENTRY or --all" in result.stderr


def test_dlq_retry_all(world: World) -> None:
    for title in ("a", "b", "c"):
        new_incident(world, title)
    world.sims["prod-snow"].faults.update({"permanent_error": 400})
    world.step()
    world.sims["prod-snow"].faults.update({"permanent_error": 0})
    out = world.im.ok("integration", "dlq-retry", "prod-snow", "--all")
    assert out.count("entry-") == 3
    world.step()
    assert world.sims["prod-snow"].record_count() == 3
    assert get_incident(world.db(), 1).title == "a"


def test_client_side_rate_limit_paces_sending(world: World) -> None:
    world.im.ok("integration", "configure", "prod-pd", "--rate-limit", "2/s")
    for n in range(5):
        new_incident(world, f"paced {n}")
    world.step()
    assert world.sims["prod-pd"].record_count() == 2
    world.step()
    assert world.sims["prod-pd"].record_count() == 2  # the next second's budget is not here yet
    world.clock.advance(1)
    world.step()
    assert world.sims["prod-pd"].record_count() == 4
    world.clock.advance(1)
    world.step()
    assert world.sims["prod-pd"].record_count() == 5
    assert world.sims["prod-jira"].record_count() == 5  # other integrations are not paced


def test_dlq_table_shows_every_attempt(world: World) -> None:
    n = new_incident(world)
    world.sims["prod-pd"].faults.update({"error_rate": 1})
    world.step()
    for wait in (30, 120, 480, 1800):
        world.clock.advance(wait)
        world.step()
    out = world.im.ok("integration", "dlq", "prod-pd")
    lines = [line for line in out.splitlines() if line.startswith("entry-")]
    assert len(lines) == 5
    assert all(f"INC-{n}" in line and "500" in line for line in lines)
    assert [line.split()[5] for line in lines] == ["1", "2", "3", "4", "5"]


def test_a_missing_master_key_blocks_sending_and_says_so_once(world: World, tmp_path: Any) -> None:
    new_incident(world)
    for key_file in tmp_path.rglob("master.key"):
        key_file.unlink()
    said: list[tuple[str, dict[str, Any]]] = []
    blocked = Dispatcher(
        world.dispatcher.db,
        world.clock,
        transport_for=lambda i: world.sims[i["name"]].transport(),
        log=lambda event, values: said.append((event, values)),
    )
    try:
        blocked.step()
        blocked.step()
    finally:
        blocked.close()
    assert [event for event, _ in said] == ["outbound.blocked"] * 3
    assert all("key" in values["error"] for _, values in said)
    assert all(r["state"] == "pending" for r in world.rows("prod-pd"))
    assert world.sims["prod-pd"].record_count() == 0


def test_a_passing_integration_test_resumes_an_auth_pause(world: World) -> None:
    from im.config.connection import run_checks

    new_incident(world)
    world.sims["prod-pd"].faults.update({"permanent_error": 401})
    world.step()
    pd = world.integration("prod-pd")["id"]
    assert sync_state.get(world.db(), pd)["pause_reason"] == "auth-failing"
    world.sims["prod-pd"].faults.update({"permanent_error": 0})  # fixed on PagerDuty's side
    world.clock.advance(3600)
    world.step()
    assert world.sims["prod-pd"].record_count() == 0  # nothing tries while paused
    report = run_checks(world.db(), "prod-pd", transport=world.sims["prod-pd"].transport())
    assert report.ok
    assert sync_state.get(world.db(), pd)["pause_reason"] is None
    world.step()
    assert world.sims["prod-pd"].record_count() == 1


def test_the_daemons_dispatcher_sends_rows_of_different_incidents_at_once(world: World) -> None:
    """One slow vendor round trip must not hold back every other incident's change: the
    daemon's dispatcher has several of one integration's rows in flight at once."""
    numbers = [new_incident(world, f"incident {n}") for n in range(6)]
    jira = world.sims["prod-jira"].transport()
    together = threading.Barrier(3, timeout=10)  # broken (an error) unless 3 creates overlap

    class Overlapping(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.path.endswith("/issue"):
                together.wait()
            return jira.handle_request(request)

    transports = {"prod-jira": Overlapping()}
    parallel = Dispatcher(
        world.db(),
        world.clock,
        transport_for=lambda i: transports.get(i["name"]) or world.sims[i["name"]].transport(),
        sleep=world.clock.advance,
        parallel=True,
    )
    try:
        parallel.step()
    finally:
        parallel.close()
    assert not together.broken
    assert world.sims["prod-jira"].record_count() == 6
    assert [world.external("prod-jira", n).fields["title"] for n in numbers] == [
        f"incident {n}" for n in range(6)
    ]
    assert all(r["state"] == "done" for r in world.rows("prod-jira"))
