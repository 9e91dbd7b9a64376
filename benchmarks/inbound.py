"""SPEC §13: external -> platform propagation, and external -> external through the platform
(ServiceNow -> PagerDuty), at a steady rate of agent edits, through a real `im daemon` and the
three simulators, each in its own process on loopback, webhooks on. Prints JSON. Not part of
the test run:

    python benchmarks/inbound.py [--rate 50] [--duration 60] [--incidents 50]

Set-up (not timed): ``--incidents`` platform incidents per simulator, created on the platform
and synced to all three; PagerDuty's assigned_to rule is set to platform (as `im demo` step 2
does), so that an assignment made in ServiceNow goes on to PagerDuty.

Load: the simulators' agents edit, in turn, a field their integration owns or shares (each
incident is edited in one simulator only): in ServiceNow the assignee (alice / bob), in Jira
the summary, in PagerDuty the priority (P2 / P3). Each edit is one request to the simulator's
API; the simulator sends its signed webhook to the daemon, which stores it, applies it and
queues the change for the other integrations that take it.

Clocks (one machine, one wall clock): an edit starts when the benchmark sends the agent's
request. external -> platform stops at the platform's field change (``field_changes``, the
applying transaction); ServiceNow -> PagerDuty stops when PagerDuty acknowledged the outbox row
carrying that assignee (``outbox.done_at``), as the platform -> external benchmark does.
``parts`` splits the first: the agent's request, the edit until its delivery was stored by the
daemon (``inbound_events.received_at``: the simulator's delivery loop and the daemon's HTTP
side), and stored until applied (the daemon's applier).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

from common import (
    World,
    agent,
    latencies,
    paced,
    run_im,
    spec_row,
    wait_settled,
    world,
)

from im.clock import SystemClock, format_time, parse_time

KINDS = ("servicenow", "jira", "pagerduty")
FIELDS = {"servicenow": "assigned_to", "jira": "title", "pagerduty": "priority"}
USERS = ("alice@example.com", "bob@example.com")
PRIORITIES = ("P2", "P3")
ROW_2 = "propagation external webhook -> platform applied, p99"
ROW_3 = "external -> external through the platform (ServiceNow -> PagerDuty), p99"


class Edit(NamedTuple):
    kind: str
    incident: int
    field: str  # on the platform
    value: str  # what the platform should come to hold
    started: datetime  # when the agent's request was sent
    status: int  # the simulator's answer
    request_ms: float  # how long the simulator took to answer


class Agents:
    """The three agents, and what each edit should become on the platform."""

    def __init__(self, here: World, external_ids: dict[str, list[tuple[int, str]]]) -> None:
        self.clients = {kind: agent(kind, here.urls[kind]) for kind in KINDS}
        self.external_ids = external_ids
        self.turns: dict[int, int] = {}  # incident -> edits so far
        self.user_ids: dict[str, str] = {}
        for email in USERS:
            found = self.clients["servicenow"].get(
                "/api/now/table/sys_user",
                params={"sysparm_query": f"email={email}", "sysparm_fields": "sys_id"},
            )
            self.user_ids[email] = found.json()["result"][0]["sys_id"]
        self.edits: list[Edit] = []

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def edit(self, n: int) -> None:
        kind = KINDS[n % len(KINDS)]
        pool = self.external_ids[kind]
        incident, external_id = pool[(n // len(KINDS)) % len(pool)]
        turn = self.turns.get(incident, 0)
        self.turns[incident] = turn + 1
        client = self.clients[kind]
        started = datetime.now(UTC)
        if kind == "servicenow":
            email = USERS[turn % 2]
            value = email
            answer = client.patch(
                f"/api/now/table/incident/{external_id}",
                json={"assigned_to": self.user_ids[email]},
            )
        elif kind == "jira":
            value = f"agent change {n}"
            answer = client.put(
                f"/rest/api/3/issue/{external_id}", json={"fields": {"summary": value}}
            )
        else:
            name = PRIORITIES[turn % 2]
            value = name.lower()
            answer = client.put(
                f"/incidents/{external_id}",
                json={"incident": {"type": "incident_reference", "priority": name}},
            )
        took = (datetime.now(UTC) - started).total_seconds() * 1000
        self.edits.append(
            Edit(kind, incident, FIELDS[kind], value, started, answer.status_code, took)
        )


def _ms(later: str | None, earlier: datetime) -> float | None:
    return None if later is None else (parse_time(later) - earlier).total_seconds() * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="agent edits per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--incidents", type=int, default=50, help="incidents per simulator")
    args = parser.parse_args()

    from im import incidents
    from im.store import open_database

    with world(webhooks=True) as here:
        run_im(
            here.env, "integration", "field-ownership", "set", "bench-pagerduty", "assigned_to",
            "--owner", "platform", "--priority", "10",
        )  # fmt: skip
        db = open_database(here.db_path)
        clock = SystemClock()
        made = [
            incidents.create(db, clock, "bench", {"title": f"bench incident {n}"}).incident.id
            for n in range(args.incidents * len(KINDS))
        ]
        if not wait_settled(here.db_path, 300, quiet=1.0):
            raise SystemExit("the incidents were not synced within 5 minutes")
        ids = {kind: here.integration_id(kind) for kind in KINDS}
        external_ids: dict[str, list[tuple[int, str]]] = {}
        for index, kind in enumerate(KINDS):
            mine = made[index :: len(KINDS)]
            found = {
                r["incident_id"]: r["external_id"]
                for r in db.query("SELECT * FROM links WHERE integration_id = ?", [ids[kind]])
            }
            external_ids[kind] = [(n, found[n]) for n in mine]
        agents = Agents(here, external_ids)
        load_start = format_time(clock.now())
        edits, achieved = paced(args.rate, args.duration, agents.edit)
        agents.close()
        drained = wait_settled(here.db_path, 120, quiet=1.0)

        inbound: dict[str, list[float]] = {kind: [] for kind in KINDS}
        reached: dict[str, list[float]] = {kind: [] for kind in KINDS}
        onward: list[float] = []
        missing = {kind: 0 for kind in KINDS}
        refused = sum(1 for e in agents.edits if e.status >= 300)
        for kind, incident, name, value, started, status, _ in agents.edits:
            if status >= 300:
                continue
            since = format_time(started)
            applied = db.execute(
                "SELECT min(changed_at) FROM field_changes WHERE incident_id = ? AND field = ? "
                "AND new_value = ? AND source = ? AND changed_at >= ?",
                [incident, name, value, f"external:bench-{kind}", since],
            ).fetchone()[0]
            delay = _ms(applied, started)
            if delay is None:
                missing[kind] += 1
                continue
            inbound[kind].append(delay)
            # when its delivery reached the daemon (stored), the first part of that
            stored_at = db.execute(
                "SELECT min(received_at) FROM inbound_events WHERE integration_id = ? "
                "AND incident_id = ? AND state = 'applied' AND applied_at >= ?",
                [ids[kind], incident, applied],
            ).fetchone()[0]
            part = _ms(stored_at, started)
            if part is not None:
                reached[kind].append(part)
            if kind == "servicenow":
                # the first row that took this value to PagerDuty after it was applied here
                acknowledged = db.execute(
                    "SELECT min(done_at) FROM outbox WHERE integration_id = ? AND incident_id = ? "
                    "AND state = 'done' AND done_at >= ? "
                    "AND json_extract(fields, '$.assigned_to') = ?",
                    [ids["pagerduty"], incident, applied, value],
                ).fetchone()[0]
                onward_delay = _ms(acknowledged, started)
                if onward_delay is not None:
                    onward.append(onward_delay)
        # the daemon's part alone: the delivery stored, then applied
        stored: dict[str, list[float]] = {kind: [] for kind in KINDS}
        states: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
        for event in db.query(
            "SELECT i.type, e.state, e.received_at, e.applied_at FROM inbound_events e "
            "JOIN integrations i ON i.id = e.integration_id WHERE e.received_at >= ?",
            [load_start],
        ):
            counted = states[event["type"]]
            counted[event["state"]] = counted.get(event["state"], 0) + 1
            if event["state"] == "applied" and event["applied_at"]:
                delay = _ms(event["applied_at"], parse_time(event["received_at"]))
                assert delay is not None
                stored[event["type"]].append(delay)
        db.close()

    everything = [v for values in inbound.values() for v in values]
    overall, through = latencies(everything), latencies(onward)
    load = f"{args.rate:g} agent edits/s for {args.duration:g} s"
    report: dict[str, Any] = {
        "benchmark": "inbound",
        "what": "agent edit in a simulator -> applied on the platform (and on to PagerDuty)",
        "rows": [
            spec_row(2, f"{ROW_2}, {load}", overall["p99_ms"], "ms", "<", 250),
            spec_row(3, f"{ROW_3}, {load}", through["p99_ms"], "ms", "<", 500),
        ],
        "rate_per_s": args.rate,
        "achieved_rate_per_s": round(achieved, 1),
        "duration_s": args.duration,
        "edits": edits,
        "edits_refused_by_simulator": refused,
        "settled_after_load": drained,
        "external_to_platform": {
            **overall,
            "not_applied": sum(missing.values()),
            "by_type": {
                kind: {**latencies(inbound[kind]), "not_applied": missing[kind]} for kind in KINDS
            },
        },
        "servicenow_to_pagerduty": {
            **through,
            "not_delivered": sum(
                1 for e in agents.edits if e.kind == "servicenow" and e.status < 300
            )
            - len(onward),
        },
        "parts": {
            "agent_request_to_simulator": latencies([e.request_ms for e in agents.edits]),
            "edit_to_delivery_stored": {kind: latencies(reached[kind]) for kind in KINDS},
            "delivery_stored_to_applied": {kind: latencies(stored[kind]) for kind in KINDS},
        },
        "deliveries_by_state": states,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
