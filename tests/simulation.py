"""The deterministic simulation of SPEC §14: one seeded workload on both sides of the real
sync engine, with faults, then the invariant (``tests.invariants``).

One ``random.Random(seed)`` drives everything: the integrations' conflict strategies, the
simulators' own seeds and fault probabilities, and a few dozen operations, each followed by a
small step of the frozen clock:

- platform edits through the library the CLI calls: create, an update of a mapped field (a
  status move the status machine allows), a comment or a work note;
- people's edits in the three simulators through their APIs, with the agent accounts: every
  mapped field (status by the vendor's own moves), comments, work notes, PagerDuty notes, now
  and then a new incident; and races: the platform and a person changing the same field a
  moment apart;
- the daemon's work in small pieces, in random order: a dispatcher step, one webhook (or all
  that are due) delivered to the daemon's webhook route (``tests.two_way.platform``), an
  applier step; a reconcile from cron;
- whatever happens *meanwhile*: while a request of the daemon is on its way, webhooks arrive
  and are applied, people and the platform edit, the other half of the daemon works (see
  ``Wire``);
- the clock jumping ahead (retries and rate-limit pauses come due on the real schedule);
- daemon restarts: the dispatcher, applier and webhook route dropped with their connections
  and built again, leases taken back as ``im daemon`` does at start; sometimes the
  dispatcher dies in the middle of a send (before the request, or after the vendor applied
  it), and the vendors' deliveries meanwhile find nobody answering;
- from a random point on, the simulators' faults: lost requests, lost answers (timeouts),
  429s, 500s, and dropped, duplicated, delayed and reordered webhooks.

Then the faults stop, everything is delivered ("drained": the clock moved to each next
retry), one ``im integration reconcile NAME --auto-heal`` runs per integration (the real
``reconcile.run``), everything is drained again, and ``tests.invariants`` checks the result,
with the changes this module followed (``Write``) for the last word. Nothing depends on
wall-clock time, thread timing or hash order: the same seed makes the same run
(``Outcome.digest``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlite_utils import Database

from im import incidents
from im.clock import FrozenClock, format_time, parse_time
from im.config.integrations import IntegrationInput, configure
from im.sim.core import Simulator
from im.sim.jira import JiraSimulator, adf_to_text, text_to_adf
from im.sim.pagerduty import PagerDutySimulator
from im.sim.servicenow import ServiceNowSimulator
from im.sim.transport import LOST_RESPONSE, ASGIBridge
from im.store import integrations as integration_rows
from im.store import meta, open_database
from im.store import outbox as outbox_rows
from im.store.db import write
from im.sync import reconcile
from tests.conftest import START, Im
from tests.two_way import CREATE, SECRET, Two, agent_client, platform

NAMES = ("prod-snow", "prod-jira", "prod-pd")
OPERATIONS = 44  # per seed: a few incidents, a few dozen operations
MAX_INCIDENTS = 4  # made on the platform
MAX_AGENT_CREATES = 2  # made by people in the vendors' systems
DRAIN_ROUNDS = 200
MEANWHILE = 0.15  # how often something else happens while a request is on its way
STRATEGIES = ("last-write-wins",) * 3 + ("ownership-priority", "manual-review")
PEOPLE = ("alice@example.com", "bob@example.com", "")
SEVERITIES = ("sev1", "sev2", "sev3", "sev4", "sev5")
PRIORITIES = ("p1", "p2", "p3", "p4", "p5")
POLICIES = ("PEP0001", "PEP0002")
# the fields whose last word is followed (tests.invariants.last_word)
FOLLOWED = ("title", "description", "severity", "priority")
# a platform field -> the agent's edit of it in each system (the race operation)
RACED = {
    "prod-snow": {
        "title": "title",
        "description": "description",
        "severity": "severity",
        "status": "state",
        "assigned_to": "assignee",
    },
    "prod-jira": {
        "title": "title",
        "description": "description",
        "priority": "priority",
        "severity": "severity",
        "status": "status",
        "assigned_to": "assignee",
    },
    "prod-pd": {
        "title": "title",
        "severity": "urgency",
        "priority": "priority",
        "status": "status",
        "assigned_to": "assignee",
        "escalation_policy": "policy",
    },
}
# the platform's status moves (SPEC §2): forward, skipping steps, and reopen
STATUS_MOVES = {
    "triggered": ("acknowledged", "acknowledged", "resolved", "closed"),
    "acknowledged": ("resolved", "resolved", "closed"),
    "resolved": ("triggered", "triggered", "closed"),
    "closed": (),
}


class Crash(BaseException):
    """The daemon dies (SIGKILL) in the middle of a send: nothing after it runs."""


@dataclass(frozen=True)
class Write:
    """One change of a field that the last-word check follows, by whoever made it: the
    platform (``record`` None) or a person in one system (its record there)."""

    at: datetime
    system: str  # "platform" or an integration's name
    record: str | None
    incident: int | None  # known for the platform's; a record's is found through its link
    field: str
    value: str  # as a platform value


@dataclass
class Outcome:
    seed: int
    trace: list[str]
    reconciles: dict[str, dict[str, Any]] = field(default_factory=dict)
    digest: str = ""
    writes: list[Write] = field(default_factory=list)
    made_there: list[tuple[str, str]] = field(default_factory=list)  # (system, record)


def fault_profile(rng: random.Random) -> dict[str, float]:
    """One simulator's faults for the fault phase (each one often off)."""
    return {
        "lost_request_rate": rng.choice((0, 0, 0.05, 0.15)),
        "timeout_rate": rng.choice((0, 0, 0.05, 0.15)),
        "rate_limit_rate": rng.choice((0, 0, 0.05, 0.15)),
        "error_rate": rng.choice((0, 0, 0.05, 0.2)),
        "drop_webhooks": rng.choice((0, 0, 0.1, 0.3)),
        "duplicate_webhooks": rng.choice((0, 0, 0.1, 0.3)),
        "reorder_webhooks": rng.choice((0, 0, 0.2, 0.5)),
        "delay_webhooks": rng.choice((0, 0, 0, 3, 20)),
    }


NO_FAULTS = dict.fromkeys(fault_profile(random.Random(0)), 0)


class Wire:
    """The daemon's side of the network (its sender, applier and reconciliation reach the
    simulators through it). Two things happen on it:

    - a crash armed for the next request to one simulator: the daemon dies ``before`` the
      vendor sees the request, or ``after`` the vendor applied it (the answer never read);
    - ``meanwhile``: once the vendor has answered a request, before the caller reads the
      answer, the rest of the world may move on (webhooks arrive and are applied, people
      edit, the other half of the daemon works). A daemon runs its sender, applier and
      webhook route at once, and reconciliation runs from cron beside it; this interleaves
      them at request boundaries, deterministically, on one thread.
    """

    def __init__(self, sims: dict[str, Simulator], meanwhile: Callable[[], None]) -> None:
        self.sims = sims
        self.meanwhile = meanwhile
        self.armed: tuple[str, str] | None = None
        self._busy = False  # no meanwhile inside a meanwhile

    def transport(self, name: str) -> httpx.BaseTransport:
        return WireTransport(self, name)

    def send(self, name: str, request: httpx.Request) -> httpx.Response:
        armed = self.armed
        if armed is not None and armed[0] == name:
            self.armed = None
            if armed[1] == "after":
                with contextlib.suppress(httpx.HTTPError):  # lost with the daemon anyway
                    self.sims[name].transport().handle_request(request)
            raise Crash
        try:
            response = self.sims[name].transport().handle_request(request)
        except httpx.HTTPError:
            self._then()
            raise
        self._then()
        return response

    def _then(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self.meanwhile()
        finally:
            self._busy = False


class WireTransport(httpx.BaseTransport):
    def __init__(self, wire: Wire, name: str) -> None:
        self.wire = wire
        self.name = name

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.wire.send(self.name, request)


class InlineBridge(ASGIBridge):
    """``ASGIBridge`` without its thread: the app runs on an event loop of the calling thread.
    Everything in the simulation is called from one thread, one request at a time, and
    nothing the apps do calls out again, so the thread hop (most of a seed's time) buys
    nothing here."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        forwarded = httpx.Request(
            request.method, request.url, headers=request.headers, content=body
        )

        async def call() -> tuple[int, httpx.Headers, bytes]:
            response = await self._inner.handle_async_request(forwarded)
            return response.status_code, response.headers, await response.aread()

        status, headers, content = self._loop.run_until_complete(call())
        if LOST_RESPONSE in headers:
            raise httpx.ReadTimeout("the simulator lost the response", request=request)
        return httpx.Response(status, headers=headers, content=content, request=request)

    def shutdown(self) -> None:
        """The loop belongs to the simulation, which closes it."""


class Down(httpx.BaseTransport):
    """The daemon's address while it is restarting: nobody answers."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)


class Simulation:
    """One seed's run: ``run`` sets up, plays the workload, stops the faults, drains,
    reconciles and drains again; ``tests.test_simulation`` then checks the invariant."""

    def __init__(self, seed: int, im: Im, clock: FrozenClock) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.im = im
        self.clock = clock
        self.trace: list[str] = []
        self.counter = 0
        self.calm = False  # no faults and nothing happening meanwhile: the final phase
        self.doing = ""  # the daemon's work under way (dispatch, apply, reconcile)
        self.surprises: list[str] = []  # what went wrong in the harness meanwhile
        self.writes: list[Write] = []
        self.made_there: list[tuple[str, str]] = []
        self.agent_creates = 0
        self.strategies = {name: self.rng.choice(STRATEGIES) for name in NAMES}
        self.faults = {name: fault_profile(self.rng) for name in NAMES}
        self.sims: dict[str, Simulator] = {
            "prod-snow": ServiceNowSimulator(clock=clock, seed=self.rng.randrange(2**31), webhook_url="http://im/webhooks/prod-snow", webhook_secret=SECRET["prod-snow"]),
            "prod-jira": JiraSimulator(clock=clock, seed=self.rng.randrange(2**31), webhook_url="http://im/webhooks/prod-jira", webhook_secret=SECRET["prod-jira"]),
            "prod-pd": PagerDutySimulator(clock=clock, seed=self.rng.randrange(2**31), webhook_url="http://im/webhooks/prod-pd", webhook_secret=SECRET["prod-pd"]),
        }  # fmt: skip
        self.wire = Wire(self.sims, self.meanwhile)
        self.loop = asyncio.new_event_loop()
        for sim in self.sims.values():
            bridge = InlineBridge(sim.app, self.loop)
            sim.transport = lambda bridge=bridge: bridge  # type: ignore[method-assign]
        self._stack = ExitStack()
        self.world: Two | None = None
        self.db: Database | None = None  # the connection platform edits are made on

    # -- set-up -------------------------------------------------------------------------------

    def setup(self, template: Path) -> None:
        """A copy of ``template`` (see ``make_template``) with this seed's conflict
        strategies, and the daemon started on it."""
        source = sqlite3.connect(template)
        target = sqlite3.connect(self.im.db_path)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        db = open_database(self.im.db_path)
        self.db = db
        for name in NAMES:
            strategy = IntegrationInput(conflict_strategy=self.strategies[name])
            configure(db, self.clock, "alice", name, strategy)
        self.note(f"strategies {self.strategies}")
        self.note(f"faults {self.faults}")
        self._start()

    def _transport_for(self, integration: dict[str, Any]) -> httpx.BaseTransport:
        return self.wire.transport(integration["name"])

    def _start(self) -> None:
        """The daemon starting: leases of the one before it taken back, then its work."""
        db = open_database(self.im.db_path)
        try:
            with write(db):
                outbox_rows.reap(db, format_time(self.clock.now()), every=True)
        finally:
            db.close()
        self.world = self._stack.enter_context(
            platform(
                self.im, self.clock, self.sims, self._transport_for,
                serve=lambda app: InlineBridge(app, self.loop),
            )
        )  # fmt: skip

    def _stop(self) -> None:
        self._stack.close()
        self._stack = ExitStack()
        self.world = None

    def close(self) -> None:
        self._stop()
        if self.db is not None:
            self.db.close()
        self.loop.close()

    @property
    def two(self) -> Two:
        assert self.world is not None
        return self.world

    # -- the run ------------------------------------------------------------------------------

    def run(self, template: Path) -> Outcome:
        self.setup(template)
        faults_from = self.rng.randrange(4, 14)
        for number in range(OPERATIONS):
            if number == faults_from:
                for name, sim in self.sims.items():
                    sim.faults.update(self.faults[name])
                self.note("faults on")
            self.operation(first=number == 0)
            self.clock.advance(self.rng.choice((1, 1, 1, 2, 3)))
        for sim in self.sims.values():
            sim.faults.update(NO_FAULTS)
        self.calm = True
        self.note("faults off")
        self.drain()
        reconciles = {}
        self.clock.advance(5)  # Jira's search index catches up
        for name in NAMES:
            reconciles[name] = self.reconcile(name)
            failed = reconciles[name]["failed"]
            assert not failed, f"seed {self.seed}: reconcile {name} failed: {failed}"
        self.drain()
        assert not self.surprises, f"seed {self.seed}: the harness failed: {self.surprises}"
        return Outcome(
            self.seed, self.trace, reconciles, self.digest(), self.writes, self.made_there
        )

    def reconcile(
        self, name: str, auto_heal: bool = True, trigger: str = "manual"
    ) -> dict[str, Any]:
        """``im integration reconcile NAME --auto-heal`` (or ``--dry-run``): its JSON
        report."""
        db = open_database(self.im.db_path)  # a process of its own (cron, a person)
        try:
            integration = integration_rows.find(db, name)
            assert integration is not None
            self.doing = "reconcile"
            report = reconcile.run(
                db, self.clock, integration,
                reconcile.Options(auto_heal=auto_heal, trigger=trigger),
                transport_for=self._transport_for, sleep=self.clock.advance, concurrency=1,
            ).as_json()  # fmt: skip
        finally:
            self.doing = ""
            db.close()
        found = [(d["incident_id"], d["field"], d["action"]) for d in report["discrepancies"]]
        self.note(
            f"reconcile {name} ({trigger}, {report['mode']}): {found} errors {report['errors']}"
            f" failed {report['failed']}"
        )
        return report

    def cron_reconcile(self) -> None:
        """A reconcile from cron while the daemon runs (and the faults may hit it)."""
        self.reconcile(self.rng.choice(NAMES), self.rng.random() < 0.7, "cron")

    def note(self, line: str) -> None:
        self.trace.append(f"{format_time(self.clock.now())[11:19]} {line}")

    def operation(self, first: bool) -> None:
        """One operation, drawn by weight (the first one creates an incident)."""
        rng = self.rng
        count = self.incident_count()
        choices: list[tuple[float, Callable[[], None]]] = [
            (2.0 if count < MAX_INCIDENTS else 0.0, self.platform_create),
            (4.0 if count else 0.0, self.platform_update),
            (1.5 if count else 0.0, self.platform_journal),
            (5.0, self.agent_edit),
            (2.0 if count else 0.0, self.race),
            (1.5, self.agent_journal),
            (3.0, self.dispatch),
            (3.0, self.deliver),
            (2.5, self.apply),
            (0.5 if self.agent_creates < MAX_AGENT_CREATES else 0.0, self.agent_create),
            (0.4, self.cron_reconcile),
            (1.0, self.jump),
            (0.3, self.restart),
            (0.4, self.crash_while_sending),
        ]
        if first:
            self.platform_create()
            return
        weights = [w for w, _ in choices]
        action = rng.choices([a for _, a in choices], weights)[0]
        action()

    def unique(self, what: str) -> str:
        self.counter += 1
        return f"{what} {self.counter}"

    def incident_count(self) -> int:
        assert self.db is not None
        return int(self.db.execute("SELECT count(*) FROM incidents").fetchone()[0])

    # -- the platform's side -----------------------------------------------------------------

    def platform_create(self) -> None:
        values = {"title": self.unique("title")}
        if self.rng.random() < 0.5:
            values["description"] = self.unique("description")
        if self.rng.random() < 0.5:
            values["severity"] = self.rng.choice(SEVERITIES)
        if self.rng.random() < 0.3:
            values["assigned_to"] = self.rng.choice(PEOPLE[:2])
        change = incidents.create(self.db, self.clock, "alice", values)
        self.note(f"platform create {change.incident.display_id} {values}")
        for name in FOLLOWED:
            self._wrote("platform", None, change.incident.id, name, change.incident.value(name))

    def _pick_incident(self) -> Any:
        number = self.rng.randrange(1, self.incident_count() + 1)
        return incidents.get(self.db, number)

    def platform_update(self) -> tuple[int, str] | None:
        incident = self._pick_incident()
        name = self.rng.choice(
            ("title", "description", "severity", "priority", "status", "status",
             "assigned_to", "escalation_policy")
        )  # fmt: skip
        value = {
            "title": lambda: self.unique("title"),
            "description": lambda: self.unique("description"),
            "severity": lambda: self.rng.choice(SEVERITIES),
            "priority": lambda: self.rng.choice(PRIORITIES),
            "status": lambda: self.rng.choice(STATUS_MOVES[incident.status] or ("",)),
            "assigned_to": lambda: self.rng.choice(PEOPLE),
            "escalation_policy": lambda: self.rng.choice(POLICIES),
        }[name]()
        if name == "status" and not value:
            return None
        incidents.update(self.db, self.clock, "alice", str(incident.id), {name: value})
        self.note(f"platform update {incident.display_id} {name}={value!r}")
        if name in FOLLOWED and incident.value(name) != value:
            self._wrote("platform", None, incident.id, name, value)
        return incident.id, name

    def _wrote(
        self, system: str, record: str | None, incident: int | None, name: str, value: str
    ) -> None:
        self.writes.append(Write(self.clock.now(), system, record, incident, name, value))

    def platform_journal(self) -> None:
        incident = self._pick_incident()
        kind = self.rng.choice(("comments", "work_notes"))
        body = self.unique(f"platform {kind}")
        incidents.comment(self.db, self.clock, "alice", str(incident.id), kind, body)
        self.note(f"platform {kind} {incident.display_id} {body!r}")

    # -- the agents' side ----------------------------------------------------------------------

    def agent(self, name: str) -> httpx.Client:
        return agent_client(self.sims[name], name, trust_env=False)

    def _record(self, name: str) -> str | None:
        """A record of ours in the simulator's own store (linked yet or not)."""
        sim = self.sims[name]
        if isinstance(sim, ServiceNowSimulator):
            ids = list(sim.tables["incident"])
        elif isinstance(sim, JiraSimulator):
            ids = [issue.key for issue in sim.issues.values()]
        else:
            assert isinstance(sim, PagerDutySimulator)
            ids = list(sim.incidents)
        return self.rng.choice(ids) if ids else None

    def agent_edit(self) -> None:
        name = self.rng.choice(NAMES)
        record = self._record(name)
        if record is None:
            return
        edit = {
            "prod-snow": self._snow_edit,
            "prod-jira": self._jira_edit,
            "prod-pd": self._pd_edit,
        }
        self._agent_call(name, record, edit[name])

    def race(self) -> None:
        """The same field changed on the platform and by a person in one system, a moment
        apart, before either side has seen the other (SPEC §6)."""
        field = self.platform_update()
        if field is None:
            return
        number, name = field
        system = self.rng.choice(NAMES)
        assert self.db is not None
        row = self.db.execute(
            "SELECT l.external_id, l.external_key FROM links l JOIN integrations i "
            "ON i.id = l.integration_id WHERE i.name = ? AND l.incident_id = ?",
            [system, number],
        ).fetchone()
        if row is None:
            return
        record = row[1] if system == "prod-jira" else row[0]
        self.clock.advance(self.rng.choice((0, 1, 2, 4)))
        edit = {
            "prod-snow": self._snow_edit,
            "prod-jira": self._jira_edit,
            "prod-pd": self._pd_edit,
        }
        choice = RACED[system].get(name)  # None: the system does not map it (any edit)
        self._agent_call(
            system,
            record,
            lambda n, r, c: edit[system](n, r, c, choice),  # type: ignore[operator]
        )

    def agent_create(self) -> None:
        """A person opens an incident in one of the systems (it becomes a platform one)."""
        self.agent_creates += 1
        name = self.rng.choice(NAMES)
        title = self.unique(f"{name} agent incident")
        with self.agent(name) as client:
            try:
                if name == "prod-snow":
                    answer = client.post(
                        "/api/now/table/incident",
                        json={"short_description": title, "urgency": str(self.rng.randint(1, 3))},
                    )
                elif name == "prod-jira":
                    fields = {
                        "project": {"key": "OPS"},
                        "issuetype": {"name": "Incident"},
                        "summary": title,
                    }
                    answer = client.post("/rest/api/3/issue", json={"fields": fields})
                else:
                    incident = {
                        "type": "incident", "title": title, "urgency": self.rng.choice(("high", "low")),
                        "service": {"id": "PSVC001", "type": "service_reference"},
                    }  # fmt: skip
                    answer = client.post("/incidents", json={"incident": incident})
                what = f"-> {answer.status_code}"
            except httpx.HTTPError as exc:
                what = f"lost ({type(exc).__name__})"
        self.note(f"agent {name} creates {title!r} {what}")
        made = self._made_there(name, title)
        if made is not None:
            self.made_there.append((name, made))

    def _made_there(self, name: str, title: str) -> str | None:
        sim = self.sims[name]
        if isinstance(sim, ServiceNowSimulator):
            rows = sim.tables["incident"].items()
            return next((k for k, r in rows if r["short_description"] == title), None)
        if isinstance(sim, JiraSimulator):
            return next((str(i.id) for i in sim.issues.values() if i.summary == title), None)
        assert isinstance(sim, PagerDutySimulator)
        return next((k for k, i in sim.incidents.items() if i.title == title), None)

    def agent_journal(self) -> None:
        name = self.rng.choice(NAMES)
        record = self._record(name)
        if record is None:
            return
        self._agent_call(name, record, self._journal_call)

    def _agent_call(
        self, name: str, record: str, make: Callable[[str, str, httpx.Client], str]
    ) -> None:
        before = self._followed(name, record)
        with self.agent(name) as client:
            try:
                what = make(name, record, client)
            except httpx.HTTPError as exc:  # a fault ate the request or its answer
                what = f"lost ({type(exc).__name__})"
        self.note(f"agent {name} {record}: {what}")
        # what the vendor now holds, whatever the agent was told
        for field_name, value in self._followed(name, record).items():
            if before.get(field_name) != value:
                self._wrote(name, self._record_id(name, record), None, field_name, value)

    def _record_id(self, name: str, record: str) -> str:
        """The vendor id links hold (a Jira issue is edited by its key)."""
        sim = self.sims[name]
        if isinstance(sim, JiraSimulator):
            return str(next(i.id for i in sim.issues.values() if i.key == record))
        return record

    def _followed(self, name: str, record: str) -> dict[str, str]:
        """The followed fields of a record, read from the simulator's own store: as platform
        values where nobody owns the field there (a Jira issue's summary and description, a
        PagerDuty incident's urgency as the severity it maps to, and its priority), in
        parentheses where the platform owns it (a person's edit there is noted, its value
        never compared)."""
        sim = self.sims[name]
        if isinstance(sim, JiraSimulator):
            issue = next(i for i in sim.issues.values() if i.key == record)
            return {
                "title": issue.summary,
                "description": adf_to_text(issue.description),
                "severity": f"({issue.severity})",  # the platform owns these two there:
                "priority": f"({issue.priority})",  # their values are never compared
            }
        if isinstance(sim, PagerDutySimulator):
            incident = sim.incidents[record]
            priority = sim.priorities.get(incident.priority or "", {}).get("name", "")
            return {
                "title": f"({incident.title})",
                "severity": {"high": "sev2", "low": "sev4"}[incident.urgency],
                "priority": priority.lower(),
            }
        assert isinstance(sim, ServiceNowSimulator)
        row = sim.tables["incident"][record]
        return {
            "title": f"({row['short_description']})",
            "description": f"({row['description']})",
            "severity": f"({row['impact']}/{row['urgency']})",
        }

    def _snow_edit(
        self, name: str, sys_id: str, client: httpx.Client, choice: str | None = None
    ) -> str:
        sim = self.sims[name]
        assert isinstance(sim, ServiceNowSimulator)
        users = {u.get("email", ""): sid for sid, u in sim.tables["sys_user"].items()}
        choice = choice or self.rng.choice(
            ("title", "description", "severity", "state", "state", "assignee")
        )
        if choice == "title":
            body = {"short_description": self.unique("snow title")}
        elif choice == "description":
            body = {"description": self.unique("snow description")}
        elif choice == "severity":
            body = {"impact": str(self.rng.randint(1, 3)), "urgency": str(self.rng.randint(1, 3))}
        elif choice == "state":
            state = self.rng.choice(("1", "2", "2", "3", "6", "6", "7", "8"))
            body = {"state": state}
            if state in ("6", "7"):
                body |= {"close_code": "Solved (Permanently)", "close_notes": "done by agent"}
        else:
            body = {"assigned_to": users.get(self.rng.choice(PEOPLE), "")}
        answer = client.patch(f"/api/now/table/incident/{sys_id}", json=body)
        return f"{body} -> {answer.status_code}"

    def _jira_edit(
        self, name: str, key: str, client: httpx.Client, choice: str | None = None
    ) -> str:
        sim = self.sims[name]
        assert isinstance(sim, JiraSimulator)
        choice = choice or self.rng.choice(
            ("title", "description", "priority", "severity", "status", "status", "assignee")
        )
        if choice == "status":
            listed = client.get(f"/rest/api/3/issue/{key}/transitions")
            if listed.status_code != 200:
                return f"transitions -> {listed.status_code}"
            moves = listed.json()["transitions"]
            if not moves:
                return "no transition"
            move = self.rng.choice(moves)
            answer = client.post(
                f"/rest/api/3/issue/{key}/transitions", json={"transition": {"id": move["id"]}}
            )
            return f"transition to {move['to']['name']} -> {answer.status_code}"
        if choice == "assignee":
            email = self.rng.choice(PEOPLE)
            account = next((u.account_id for u in sim.users if u.email == email), None)
            answer = client.put(f"/rest/api/3/issue/{key}/assignee", json={"accountId": account})
            return f"assignee {email or None} -> {answer.status_code}"
        fields: dict[str, Any] = {
            "title": lambda: {"summary": self.unique("jira title")},
            "description": lambda: {"description": text_to_adf(self.unique("jira description"))},
            "priority": lambda: {
                "priority": {"name": self.rng.choice(("Highest", "High", "Medium", "Low", "Lowest"))}
            },
            "severity": lambda: {
                "customfield_10050": {"value": self.rng.choice(("Sev-1", "Sev-2", "Sev-3", "Sev-4", "Sev-5"))}
            },
        }[choice]()  # fmt: skip
        answer = client.put(f"/rest/api/3/issue/{key}", json={"fields": fields})
        shown = {k: (v if k != "description" else "(adf)") for k, v in fields.items()}
        return f"{shown} -> {answer.status_code}"

    def _pd_edit(
        self, name: str, incident_id: str, client: httpx.Client, choice: str | None = None
    ) -> str:
        sim = self.sims[name]
        assert isinstance(sim, PagerDutySimulator)
        choice = choice or self.rng.choice(
            ("title", "urgency", "priority", "status", "status", "assignee", "policy")
        )
        body: dict[str, Any] = {"type": "incident_reference"}
        if choice == "title":
            body["title"] = self.unique("pd title")
        elif choice == "urgency":
            body["urgency"] = self.rng.choice(("high", "low"))
        elif choice == "priority":
            pid = self.rng.choice(sorted(sim.priorities))
            body["priority"] = {"id": pid, "type": "priority_reference"}
        elif choice == "status":
            body["status"] = self.rng.choice(("acknowledged", "acknowledged", "resolved"))
        elif choice == "assignee":
            email = self.rng.choice(PEOPLE[:2])
            user = next(uid for uid, u in sim.users.items() if u["email"] == email)
            body["assignments"] = [{"assignee": {"id": user, "type": "user_reference"}}]
        else:
            body["escalation_policy"] = {
                "id": self.rng.choice(POLICIES), "type": "escalation_policy_reference",
            }  # fmt: skip
        answer = client.put(f"/incidents/{incident_id}", json={"incident": body})
        shown = {k: v for k, v in body.items() if k != "type"}
        return f"{shown} -> {answer.status_code}"

    def _journal_call(self, name: str, record: str, client: httpx.Client) -> str:
        if name == "prod-snow":
            kind = self.rng.choice(("work_notes", "comments"))
            text = self.unique(f"snow {kind}")
            answer = client.patch(f"/api/now/table/incident/{record}", json={kind: text})
        elif name == "prod-jira":
            public = self.rng.random() < 0.5
            text = self.unique("jira public comment" if public else "jira internal comment")
            if public:
                answer = client.post(
                    f"/rest/api/3/issue/{record}/comment", json={"body": text_to_adf(text)}
                )
            else:
                answer = client.post(
                    f"/rest/servicedeskapi/request/{record}/comment",
                    json={"body": text, "public": False},
                )
        else:
            text = self.unique("pd note")
            answer = client.post(f"/incidents/{record}/notes", json={"note": {"content": text}})
        return f"{text!r} -> {answer.status_code}"

    # -- the daemon's side ---------------------------------------------------------------------

    def dispatch(self) -> None:
        self.doing = "dispatch"
        try:
            report = self.two.dispatcher.step()
        finally:
            self.doing = ""
        self.note(f"dispatch sent={report.sent} failed={report.failed}")

    def deliver(self) -> None:
        name = self.rng.choice(NAMES)
        webhooks = self.sims[name].webhooks
        if self.rng.random() < 0.5:
            sent = webhooks.deliver(self.two.daemon)
        else:  # just the first one due
            due = webhooks.due()
            sent = 0
            if due:
                url, headers, body = webhooks.prepare(due[0])
                status = self.two.daemon.post(url, headers=headers, content=body).status_code
                webhooks.record(due[0], status)
                sent = 1
        self.note(f"deliver {name}: {sent}")

    def apply(self) -> None:
        self.doing = "apply"
        try:
            settled = self.two.applier.step()
        finally:
            self.doing = ""
        self.note(f"apply: {settled}")

    def meanwhile(self) -> None:
        """While a request of the daemon (or of a reconcile run) is on its way, something
        else happens, now and then: see ``Wire``."""
        if self.calm or self.world is None or self.rng.random() >= MEANWHILE:
            return
        doing = self.doing
        choices: list[tuple[float, Callable[[], Any]]] = [
            (3.0, self.deliver),
            (2.0 if doing not in ("apply", "dispatch") else 0.0, self.apply),
            (1.0 if doing not in ("apply", "dispatch") else 0.0, self.dispatch),
            (2.0, self.platform_update),
            (1.0, self.platform_journal),
            (2.0, self.agent_edit),
        ]
        action = self.rng.choices([a for _, a in choices], [w for w, _ in choices])[0]
        self.note(f"meanwhile ({doing or 'a request'}):")
        try:
            action()
        except Exception as exc:  # a harness fault: reported, never taken for the engine's
            self.surprises.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.doing = doing

    def jump(self) -> None:
        seconds = self.rng.choice((10, 30, 60, 120, 600, 1800))
        self.clock.advance(seconds)
        self.note(f"clock +{seconds}s")

    def restart(self) -> None:
        self._stop()
        if self.rng.random() < 0.5:  # the vendors find nobody home meanwhile
            with httpx.Client(transport=Down(), base_url="http://im") as down:
                for sim in self.sims.values():
                    sim.webhooks.deliver(down)
        self.clock.advance(self.rng.choice((1, 5, 30)))
        self._start()
        self.note("daemon restarted")

    def crash_while_sending(self) -> None:
        name = self.rng.choice(NAMES)
        when = self.rng.choice(("before", "after"))
        self.wire.armed = (name, when)
        self.doing = "dispatch"
        try:
            self.two.dispatcher.step()
        except Crash:
            self.note(f"daemon killed while sending to {name} ({when} the vendor saw it)")
            self._stop()
            self.clock.advance(self.rng.choice((1, 5, 30)))
            self._start()
            return
        finally:
            self.wire.armed = None
            self.doing = ""
        self.note(f"dispatch (no send to {name} to crash in)")

    # -- draining -------------------------------------------------------------------------------

    def drain(self) -> None:
        """Sync until nothing moves, stepping the clock to each next retry or delivery."""
        for _ in range(DRAIN_ROUNDS):
            two = self.two
            two.dispatcher.step()
            for sim in self.sims.values():
                sim.webhooks.deliver(two.daemon)
            two.applier.step()
            two.dispatcher.step()
            due = self.next_due()
            if due is None:
                return
            self.clock.advance(max(1.0, (due - self.clock.now()).total_seconds()))
        # left for the invariant to report (what is stuck, and where)

    def next_due(self) -> datetime | None:
        """When something still waiting is due: an outbox row, an inbound event to apply
        again, a webhook delivery; None when nothing waits."""
        assert self.db is not None
        moments: list[datetime] = []
        row = self.db.execute(
            "SELECT min(max(o.next_attempt_at, COALESCE(s.paused_until, ''), "
            "COALESCE(s.next_send_at, ''))) FROM outbox o LEFT JOIN integration_state s "
            "ON s.integration_id = o.integration_id "
            "WHERE o.state IN ('pending', 'in_flight', 'in_doubt') AND NOT EXISTS (SELECT 1 "
            "FROM outbox p WHERE p.incident_id = o.incident_id AND p.integration_id = "
            "o.integration_id AND p.id < o.id AND p.state IN ('pending', 'in_flight', 'in_doubt'))"
        ).fetchone()
        if row[0]:
            moments.append(parse_time(row[0]))
        row = self.db.execute(
            "SELECT min(next_attempt_at) FROM inbound_events WHERE state = 'received'"
        ).fetchone()
        if row[0]:
            moments.append(parse_time(row[0]))
        for sim in self.sims.values():
            moments += [d.due_at for d in sim.webhooks.pending]
        return min(moments) if moments else None

    # -- determinism ---------------------------------------------------------------------------

    def digest(self) -> str:
        """The run in one hash: every operation, and the final state on every side."""
        assert self.db is not None
        state: list[Any] = [self.trace]
        for table in ("incidents", "journal_entries", "links", "sync_snapshots", "conflicts"):
            state.append([list(r) for r in self.db.execute(f"SELECT * FROM {table} ORDER BY 1")])
        for sim in self.sims.values():
            state.append([(d.id, d.outcome) for d in sim.webhooks.log])
        return hashlib.sha256(json.dumps(state, default=str).encode()).hexdigest()


def make_template(directory: Path) -> Path:
    """A database made by the real CLI: ``im init`` and one bidirectional integration of
    each type (Jira with its severity field), the install id fixed (the same correlation
    keys every run). Every seed starts from a copy. Needs ``$IM_MASTER_KEY``."""
    im = Im(directory / "template.db", FrozenClock(START))
    im.ok("init")
    db = open_database(im.db_path)
    with write(db):
        meta.put(db, "install_id", "sim")
    db.close()
    for name, (args, env) in CREATE.items():
        extra = ["--severity-field", "customfield_10050"] if name == "prod-jira" else []
        im.ok(
            "integration", "create", name, *args, *extra,
            env={**env, "IM_WEBHOOK_SECRET": SECRET[name]},
        )  # fmt: skip
        im.ok("integration", "configure", name, "--direction", "bidirectional")
    return im.db_path


@contextmanager
def simulation(seed: int, tmp_path: Path) -> Iterator[Simulation]:
    clock = FrozenClock(START)
    world = Simulation(seed, Im(tmp_path / "im.db", clock), clock)
    try:
        yield world
    finally:
        world.close()
