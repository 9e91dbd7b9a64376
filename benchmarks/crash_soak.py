"""SPEC §14 crash safety: the real `im daemon`, SIGKILLed at random points under load and
restarted, loses nothing and duplicates nothing. Prints JSON; exits 1 when the invariant does
not hold. Not part of the test run (tests/test_crash_soak.py runs a short version):

    python benchmarks/crash_soak.py [--kills 20] [--seed 1] [--rate 8] [--duration SECONDS]
                                    [--latency 0.04] [--keep]

What runs, all on loopback and in a throw-away directory (database, a fresh IM_MASTER_KEY,
XDG config and data directories; the user's keyring, key file and IM_DB are never touched):

- the three simulators, served on real sockets in threads of this process, so they survive
  every kill and keep their state. Each answers every API request ``--latency`` seconds late,
  so that a kill often lands while a request is in flight. Their webhook retries keep the
  vendor's rules (ServiceNow never retries, so a webhook sent while the daemon is down is lost
  until reconciliation finds it) on a compressed schedule (SOAK_RETRY_DELAYS), so that the
  final drain takes seconds, not PagerDuty's hours;
- one bidirectional integration of each type with the default field ownership (ServiceNow
  first: it is the authoritative owner of ``assigned_to``);
- a load generator (a thread here) making ``--rate`` changes a second: platform creates,
  updates (title, description, severity, priority; status one step forward: acknowledged,
  then resolved), work notes and comments through the library, and agent edits in the
  simulators through their APIs (a ServiceNow reassignment, ServiceNow work notes and
  comments, Jira public and internal comments, PagerDuty notes).
  Every change goes into a ledger: the oracle the end state is checked against;
- the real ``im daemon`` as a subprocess, SIGKILLed ``--kills`` times and restarted at once
  each time (see ``Killer`` for how kills are timed).

At the end: the load stops, the last daemon drains (no outbox row pending, in flight or in
doubt, no stored webhook unapplied, no simulator webhook waiting, for QUIET_SECONDS), one
``im integration reconcile NAME --auto-heal`` runs per integration (each followed by a drain),
the daemon stops, and the ledger is compared with the platform and with each simulator's
store:

- lost: a platform value, an external value or a journal entry that is not where the ledger
  and the ownership rules say it must be, unless its outbox row is in the DLQ (``in_dlq``).
  Scalar fields are checked at their last value (earlier ones were coalesced or superseded);
- lost_before_reconcile: what a reconcile had to push (a platform change the outbox never
  delivered). What it pulls is expected: a webhook sent while the daemon was down, which
  ServiceNow never retries;
- duplicated: more than one external record with an incident's correlation key, a journal
  entry present twice anywhere, or a platform incident that nobody created (an adopted copy of
  our own record);
- unexpected: a journal entry somewhere the ownership rules say it must not go (sent back to
  where it came from, or past an owner);
- ``PRAGMA integrity_check`` after every kill (quick_check) and at the end (full).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import ClientDisconnect

from im import incidents
from im.clock import SystemClock
from im.config.connection import open_connector
from im.config.webhook_secrets import new_secret
from im.errors import DatabaseBusyError
from im.sim.core import RetryPolicy, Simulator
from im.sim.jira import JiraSimulator, adf_to_text, text_to_adf
from im.sim.pagerduty import PagerDutySimulator
from im.sim.server import free_port, serve_in_thread
from im.sim.servicenow import ServiceNowSimulator
from im.sim.world import (
    SIMULATORS,
    DaemonNotReadyError,
    create_integration,
    environment,
    isolated_environment,
    new_master_key,
    start_daemon,
    stop_daemon,
    wait_ready,
)
from im.store import initialise, links, meta, open_database
from im.sync.outbound import correlation_key

PRINCIPAL = "soak"
KINDS = ("servicenow", "jira", "pagerduty")  # created in this order: ServiceNow is the oldest
NAMES = {"servicenow": "soak-snow", "jira": "soak-jira", "pagerduty": "soak-pd"}
JIRA_SEVERITY_FIELD = "customfield_10050"  # the Jira simulator's Severity field
# settings on top of the simulators' default accounts (im.sim.world.CONNECTIONS)
SETTINGS = {"jira": {"severity_field": JIRA_SEVERITY_FIELD}}
# Jira and PagerDuty retry a webhook the daemon did not take (it was down): the vendors' own
# statuses, on this compressed schedule (seconds before each retry) instead of 10 s / 30 s
# and up. ServiceNow keeps its rule: no retries at all.
SOAK_RETRY_DELAYS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
# how long nothing may move before the daemon counts as drained (a simulator queues a write's
# webhook before it answers, and the daemon stores a delivery before it answers: nothing
# hides between the three things drain() watches)
QUIET_SECONDS = 0.5

# -- the oracle: SPEC §3's default ownership and what each type syncs ---------------------------

OWNED_BY_PLATFORM = {
    "servicenow": {"severity", "title", "description"},
    "jira": {"severity", "priority"},
    "pagerduty": {"title", "description"},
}
OWNED_BY_EXTERNAL = {
    "servicenow": {"assigned_to", "work_notes"},
    "jira": {"assigned_to", "comments"},
    "pagerduty": {"escalation_policy", "assigned_to"},
}
# the platform fields the load changes that each type keeps in step after the create
# (ServiceNow does not sync priority; PagerDuty's description is set on create only)
UPDATED_FIELDS = {
    "servicenow": ("title", "description", "severity", "status"),
    "jira": ("title", "description", "severity", "priority", "status"),
    "pagerduty": ("title", "severity", "priority", "status"),
}
# the load moves an incident's status one step forward at a time. Never to closed (final),
# never reopened: a reopen coalesced with the resolve before it reaches PagerDuty as
# acknowledged -> triggered, which PagerDuty refuses (SPEC §3: skipped with a warning)
NEXT_STATUS = {"triggered": "acknowledged", "acknowledged": "resolved"}
JOURNALS = {
    "servicenow": ("work_notes", "comments"),
    "jira": ("work_notes", "comments"),
    "pagerduty": ("work_notes",),
}
PLATFORM = "platform"
SEVERITIES = ("sev1", "sev2", "sev3", "sev4", "sev5")
PRIORITIES = ("p1", "p2", "p3", "p4", "p5")
ASSIGNEES = ("alice@example.com", "bob@example.com")


def reaches(kind: str, origin: str, system: str) -> bool:
    """Whether a journal entry of ``kind`` made in ``origin`` (the platform or a type) must end
    up in ``system``: where it was made; in the platform unless the origin's rules keep that
    kind platform-owned; in another type when it has that journal and does not own it."""
    if system == origin:
        return True
    if origin != PLATFORM and kind in OWNED_BY_PLATFORM[origin]:
        return False
    if system == PLATFORM:
        return True
    return kind in JOURNALS[system] and kind not in OWNED_BY_EXTERNAL[system]


@dataclass
class Settings:
    kills: int = 20
    seed: int = 1
    rate: float = 8.0  # changes per second, platform and agents together
    duration: float | None = None  # seconds of load; None: 4 s per kill
    latency: float = 0.04  # seconds the simulators add to every API answer
    drain_timeout: float = 120.0
    workdir: Path | None = None  # None: a new temporary directory, removed at the end
    keep: bool = False  # keep the directory (the daemon's log) for a post-mortem

    @property
    def load_seconds(self) -> float:
        return self.duration if self.duration is not None else 4.0 * self.kills


# -- the world: directory, environment, simulators, integrations, daemon ----------------------


class _QuietDisconnects(logging.Filter):
    """A simulator request cut off by a SIGKILL is what the soak does, not news: no
    traceback for it (any other simulator error is still logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ClientDisconnect)


@dataclass
class World:
    workdir: Path
    db_path: Path
    daemon_port: int
    sims: dict[str, Simulator]
    urls: dict[str, str]
    integrations: dict[str, dict[str, Any]]

    @property
    def daemon_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"


def _set_up(stack: contextlib.ExitStack, settings: Settings, keep: list[bool]) -> World:
    """Everything the soak needs, each piece registered on ``stack`` to be stopped. A
    temporary directory is removed at the end unless ``keep[0]`` is then true."""
    if settings.workdir is not None:
        workdir = settings.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="im-crash-soak-"))

        def remove() -> None:
            if not keep[0]:
                shutil.rmtree(workdir, ignore_errors=True)

        stack.callback(remove)
    values = isolated_environment(workdir, new_master_key(), PRINCIPAL)
    stack.enter_context(environment({**values, "IM_BUSY_TIMEOUT": "10"}))
    quiet = _QuietDisconnects()
    logging.getLogger("uvicorn.error").addFilter(quiet)
    stack.callback(logging.getLogger("uvicorn.error").removeFilter, quiet)
    clock = SystemClock()
    db = initialise(workdir / "im.db", clock, PRINCIPAL).db
    stack.callback(db.close)
    daemon_port = free_port()
    sims: dict[str, Simulator] = {}
    urls: dict[str, str] = {}
    integrations: dict[str, dict[str, Any]] = {}
    for n, kind in enumerate(KINDS):
        webhook_secret = new_secret(kind)
        sim = SIMULATORS[kind](
            seed=settings.seed * 10 + n,
            webhook_url=f"http://127.0.0.1:{daemon_port}/webhooks/{NAMES[kind]}",
            webhook_secret=webhook_secret,
        )
        if sim.retry.delays:  # ServiceNow: none
            sim.retry = RetryPolicy(sim.retry.statuses, SOAK_RETRY_DELAYS)
        sim.faults.update({"latency": settings.latency})
        sims[kind] = sim
        urls[kind] = stack.enter_context(serve_in_thread(sim)).url
        integrations[kind] = create_integration(
            db, clock, PRINCIPAL, NAMES[kind], kind, urls[kind], webhook_secret, SETTINGS.get(kind)
        )
    return World(workdir, workdir / "im.db", daemon_port, sims, urls, integrations)


class Daemon:
    """The real `im daemon`, one process at a time, on the same port every time (the
    simulators' webhooks point there)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_times: list[float] = []

    def start(self, timeout: float = 30.0) -> float:
        """Start a daemon and wait until /readyz answers 200; the seconds it took. Raises
        RuntimeError (with the log's tail) when it does not get there."""
        world = self.world
        args = ["--port", str(world.daemon_port), "--public-url", world.daemon_url]
        with world.log_path.open("ab") as log:  # its log lines and any traceback, every daemon
            self.process = start_daemon(args, stderr=log)  # the soak's environment (_set_up)
        self.started_at = time.monotonic()
        try:
            wait_ready(self.process, world.daemon_url, timeout=timeout, interval=0.02)
        except DaemonNotReadyError:
            self.kill()
            raise RuntimeError(f"the daemon did not become ready: {self.tail()}") from None
        took = time.monotonic() - self.started_at
        self.ready_times.append(took)
        return took

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM, as a person stops it (SIGKILL after 15 s); the exit status."""
        return None if self.process is None else stop_daemon(self.process, timeout=15)

    def tail(self, lines: int = 5) -> str:
        path = self.world.log_path
        text = path.read_text(errors="replace") if path.exists() else ""
        wanted = [line for line in text.splitlines() if "level=info" not in line]
        return " | ".join(wanted[-lines:]) or "no log line"


def _read(db_path: Path, sql: str, args: tuple[Any, ...] = ()) -> Any:
    """One value, read with a plain connection of its own (safe from any thread)."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return conn.execute(sql, args).fetchone()[0]
    finally:
        conn.close()


# -- the ledger and the load ---------------------------------------------------------------


@dataclass
class Entry:
    incident: int
    kind: str  # work_notes | comments
    body: str
    origin: str  # PLATFORM or a type


@dataclass
class Ledger:
    """Every change the load made and that its system confirmed, in order."""

    fields: dict[int, dict[str, str]] = field(default_factory=dict)  # incident -> platform values
    assigned: dict[int, str] = field(default_factory=dict)  # incident -> ServiceNow's assignee
    entries: list[Entry] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Load(threading.Thread):
    """Changes at a steady rate until stopped: the platform's through the library (its own
    connection), the agents' through the simulators' APIs. Picks incidents among the newest
    few, so that changes meet in the outbox and in flight."""

    HOT = 8  # how many of the newest incidents take the updates

    def __init__(self, world: World, settings: Settings, ledger: Ledger) -> None:
        super().__init__(name="soak-load", daemon=True)
        self.world = world
        self.rate = settings.rate
        self.rng = random.Random(settings.seed)
        self.ledger = ledger
        self.stopping = threading.Event()
        self.clock = SystemClock()
        self._seq = 0
        self._user_ids: dict[str, str] = {}

    # the mix: (weight, what)
    def _mix(self) -> list[tuple[float, Callable[[], None]]]:
        return [
            (10, self.create),
            (26, self.update),
            (6, self.move),
            (12, lambda: self.platform_entry("work_notes")),
            (10, lambda: self.platform_entry("comments")),
            (8, self.snow_assign),
            (6, lambda: self.snow_entry("work_notes")),
            (4, lambda: self.snow_entry("comments")),
            (6, lambda: self.jira_entry("comments")),
            (5, lambda: self.jira_entry("work_notes")),
            (6, self.pd_note),
        ]

    def run(self) -> None:
        self.db = open_database(self.world.db_path)
        self.agents = {
            "servicenow": httpx.Client(
                base_url=self.world.urls["servicenow"], auth=("agent", "agent"), timeout=30
            ),
            "jira": httpx.Client(
                base_url=self.world.urls["jira"],
                auth=("agent@example.com", "agent-token"),
                timeout=30,
            ),
            "pagerduty": httpx.Client(
                base_url=self.world.urls["pagerduty"],
                headers={"Authorization": "Token token=agent-token", "From": "agent@example.com"},
                timeout=30,
            ),
        }
        try:
            for email in ASSIGNEES:
                answer = self.agents["servicenow"].get(
                    "/api/now/table/sys_user", params={"sysparm_query": f"email={email}"}
                )
                self._user_ids[email] = answer.json()["result"][0]["sys_id"]
            for _ in range(3):  # something to update from the start
                self._guarded(self.create)
            mix = self._mix()
            weights = [w for w, _ in mix]
            began = time.monotonic()
            done = 0
            while not self.stopping.is_set():
                what = self.rng.choices(mix, weights)[0][1]
                self._guarded(what)
                done += 1
                delay = began + done / self.rate - time.monotonic()
                if delay > 0:
                    self.stopping.wait(delay)
        finally:
            for client in self.agents.values():
                client.close()
            self.db.close()

    def _guarded(self, what: Callable[[], None]) -> None:
        for attempt in range(3):
            try:
                what()
                return
            except DatabaseBusyError as exc:  # the soak's own writes wait for the daemon's
                if attempt == 2:
                    self.ledger.errors.append(f"busy: {exc.message}")
            except Exception as exc:
                self.ledger.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                return

    def _text(self, what: str) -> str:
        self._seq += 1
        return f"soak {self._seq} {what}"

    def _hot(self) -> int:
        newest = max(self.ledger.fields)
        return self.rng.randint(max(1, newest - self.HOT + 1), newest)

    def _linked(self, kind: str) -> tuple[int, str] | None:
        """A hot incident linked in ``kind`` and its external id, or None yet."""
        rows = self.db.execute(
            "SELECT incident_id, external_id FROM links WHERE integration_id = ? "
            "AND state = 'linked' ORDER BY incident_id DESC LIMIT ?",
            [self.world.integrations[kind]["id"], self.HOT],
        ).fetchall()
        if not rows:
            return None
        incident_id, external_id = self.rng.choice(rows)
        return int(incident_id), str(external_id)

    # -- platform changes

    def create(self) -> None:
        values = {
            "title": self._text("title"),
            "description": self._text("description"),
            "severity": self.rng.choice(SEVERITIES),
            "priority": self.rng.choice(PRIORITIES),
        }
        change = incidents.create(self.db, self.clock, PRINCIPAL, values)
        self.ledger.fields[change.incident.id] = {**values, "status": "triggered"}
        self.ledger.counts["platform_create"] += 1

    def update(self) -> None:
        incident = self._hot()
        names = self.rng.sample(("title", "description", "severity", "priority"), k=2)
        values = {}
        for name in names:
            if name == "severity":
                values[name] = self.rng.choice(SEVERITIES)
            elif name == "priority":
                values[name] = self.rng.choice(PRIORITIES)
            else:
                values[name] = self._text(name)
        incidents.update(self.db, self.clock, PRINCIPAL, str(incident), values)
        self.ledger.fields[incident].update(values)
        self.ledger.counts["platform_update"] += 1

    def move(self) -> None:
        """The status, one step forward (a resolved incident gets an update instead)."""
        incident = self._hot()
        status = NEXT_STATUS.get(self.ledger.fields[incident]["status"])
        if status is None:
            return self.update()
        incidents.update(self.db, self.clock, PRINCIPAL, str(incident), {"status": status})
        self.ledger.fields[incident]["status"] = status
        self.ledger.counts["platform_status"] += 1
        return None

    def platform_entry(self, kind: str) -> None:
        incident = self._hot()
        body = self._text(f"platform {kind}")
        incidents.comment(self.db, self.clock, PRINCIPAL, str(incident), kind, body)
        self.ledger.entries.append(Entry(incident, kind, body, PLATFORM))
        self.ledger.counts[f"platform_{kind}"] += 1

    # -- the people on the other side

    def _agent(self, kind: str, method: str, path: str, body: Any, want: int) -> None:
        answer = self.agents[kind].request(method, path, json=body)
        if answer.status_code != want:
            raise RuntimeError(f"{kind} agent {method} {path}: {answer.status_code} {answer.text}")

    def snow_assign(self) -> None:
        linked = self._linked("servicenow")
        if linked is None:
            return self.update()
        incident, sys_id = linked
        email = next(e for e in ASSIGNEES if e != self.ledger.assigned.get(incident))
        path = f"/api/now/table/incident/{sys_id}"
        self._agent("servicenow", "PATCH", path, {"assigned_to": self._user_ids[email]}, 200)
        self.ledger.assigned[incident] = email
        self.ledger.counts["agent_servicenow_assign"] += 1
        return None

    def snow_entry(self, kind: str) -> None:
        linked = self._linked("servicenow")
        if linked is None:
            return self.platform_entry(kind)
        incident, sys_id = linked
        body = self._text(f"servicenow {kind}")
        self._agent("servicenow", "PATCH", f"/api/now/table/incident/{sys_id}", {kind: body}, 200)
        self.ledger.entries.append(Entry(incident, kind, body, "servicenow"))
        self.ledger.counts[f"agent_servicenow_{kind}"] += 1
        return None

    def jira_entry(self, kind: str) -> None:
        linked = self._linked("jira")
        if linked is None:
            return self.platform_entry(kind)
        incident, issue = linked
        body = self._text(f"jira {kind}")
        payload: dict[str, Any] = {"body": text_to_adf(body)}
        if kind == "work_notes":  # an internal comment (JSM)
            payload["properties"] = [{"key": "sd.public.comment", "value": {"internal": True}}]
        self._agent("jira", "POST", f"/rest/api/3/issue/{issue}/comment", payload, 201)
        self.ledger.entries.append(Entry(incident, kind, body, "jira"))
        self.ledger.counts[f"agent_jira_{kind}"] += 1
        return None

    def pd_note(self) -> None:
        linked = self._linked("pagerduty")
        if linked is None:
            return self.platform_entry("work_notes")
        incident, pd_id = linked
        body = self._text("pagerduty work_notes")
        self._agent(
            "pagerduty", "POST", f"/incidents/{pd_id}/notes", {"note": {"content": body}}, 200
        )
        self.ledger.entries.append(Entry(incident, "work_notes", body, "pagerduty"))
        self.ledger.counts["agent_pagerduty_work_notes"] += 1
        return None


# -- the kills ------------------------------------------------------------------------------


@dataclass
class Kill:
    number: int
    mode: str
    at_s: float  # since the load began
    up_s: float  # how long the killed daemon had been running
    sends_in_flight: int  # outbox rows whose send had begun
    leased: int  # outbox rows leased by the killed daemon
    webhooks_unapplied: int  # stored deliveries not yet applied
    quick_check: str
    restart_s: float = 0.0


class Killer:
    """How kills are timed. The load's duration is cut into ``kills`` equal slots; kill k is
    aimed at a seeded random point of slot k (20-80 % into it), in one of three seeded modes:

    - ``random`` (40 %): at that point, whatever the daemon is doing;
    - ``in-flight`` (45 %): from that point, as soon as the database shows a send that has
      begun (``outbox.sending_since``), polled every 2 ms for up to 2 s; with the simulators'
      latency that is while a request is on the wire or being answered;
    - ``early`` (15 %): 0-300 ms after the restarted daemon is ready, while it takes back the
      previous one's leases and sends the backlog that built up while it was down.

    A kill never comes before the daemon is ready (it would only kill Python starting up), and
    the next daemon is started at once. After each kill the database is inspected: sends in
    flight, leases, stored webhooks not yet applied, and ``PRAGMA quick_check``."""

    MODES = (("random", 40), ("in-flight", 45), ("early", 15))

    def __init__(self, world: World, daemon: Daemon, settings: Settings) -> None:
        self.world = world
        self.daemon = daemon
        self.settings = settings
        self.rng = random.Random(settings.seed * 7919 + 1)
        self.kills: list[Kill] = []
        self.restart_failures: list[str] = []

    def run(self, began: float) -> None:
        slot = self.settings.load_seconds / self.settings.kills
        names = [m for m, _ in self.MODES]
        weights = [w for _, w in self.MODES]
        for k in range(self.settings.kills):
            mode = self.rng.choices(names, weights)[0]
            target = began + slot * (k + self.rng.uniform(0.2, 0.8))
            ready_at = self.daemon.started_at + self.daemon.ready_times[-1]
            if mode == "early":
                _sleep_until(ready_at + self.rng.uniform(0.0, 0.3))
            else:
                _sleep_until(max(target, ready_at + 0.1))
                if mode == "in-flight":
                    self._await_send(time.monotonic() + 2.0)
            up = time.monotonic() - self.daemon.started_at
            self.daemon.kill()
            kill = self._inspect(k + 1, mode, time.monotonic() - began, up)
            self.kills.append(kill)
            kill.restart_s = self._restart()

    def _await_send(self, deadline: float) -> None:
        conn = sqlite3.connect(self.world.db_path, timeout=30)
        try:
            while time.monotonic() < deadline:
                found = conn.execute(
                    "SELECT 1 FROM outbox WHERE state = 'in_flight' AND sending_since IS NOT NULL"
                ).fetchone()
                if found:
                    return
                time.sleep(0.002)
        finally:
            conn.close()

    def _inspect(self, number: int, mode: str, at: float, up: float) -> Kill:
        conn = sqlite3.connect(self.world.db_path, timeout=30)
        try:

            def one(sql: str) -> Any:
                return conn.execute(sql).fetchone()[0]

            return Kill(
                number=number,
                mode=mode,
                at_s=round(at, 2),
                up_s=round(up, 2),
                sends_in_flight=one(
                    "SELECT count(*) FROM outbox WHERE state = 'in_flight' "
                    "AND sending_since IS NOT NULL"
                ),
                leased=one("SELECT count(*) FROM outbox WHERE state = 'in_flight'"),
                webhooks_unapplied=one(
                    "SELECT count(*) FROM inbound_events WHERE state = 'received'"
                ),
                quick_check=one("PRAGMA quick_check"),
            )
        finally:
            conn.close()

    def _restart(self) -> float:
        for attempt in range(2):
            try:
                return self.daemon.start()
            except RuntimeError as exc:
                self.restart_failures.append(str(exc))
                if attempt == 1:
                    raise
        return 0.0


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# -- draining, reconciling ------------------------------------------------------------------


def _unsettled(world: World) -> dict[str, int]:
    """What is still moving: outbox rows not settled, stored webhooks not applied, and
    deliveries each simulator still has to make."""
    conn = sqlite3.connect(world.db_path, timeout=30)
    try:
        outbox = conn.execute(
            "SELECT count(*) FROM outbox WHERE state IN ('pending', 'in_flight', 'in_doubt')"
        ).fetchone()[0]
        inbound = conn.execute(
            "SELECT count(*) FROM inbound_events WHERE state = 'received'"
        ).fetchone()[0]
    finally:
        conn.close()
    moving = {"outbox": outbox, "webhooks_unapplied": inbound}
    for kind, sim in world.sims.items():
        moving[f"{kind}_webhooks_waiting"] = len(sim.webhooks.pending)
    return moving


def drain(world: World, timeout: float) -> dict[str, int]:
    """Wait until nothing has moved for QUIET_SECONDS; what still moved at the timeout ({}
    when drained)."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while True:
        moving = {k: v for k, v in _unsettled(world).items() if v}
        now = time.monotonic()
        if moving:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= QUIET_SECONDS:
            return {}
        if now > deadline:
            return moving or {}
        time.sleep(0.1)


def reconcile(world: World, kind: str) -> dict[str, Any]:
    """`im integration reconcile NAME --auto-heal --format json`, as cron would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "im", "integration", "reconcile", NAMES[kind], "--auto-heal",
         "--format", "json"],
        env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        return {"exit": done.returncode, "error": done.stderr.strip()[-300:]}
    report = json.loads(done.stdout)
    actions = Counter(d["action"] for d in report["discrepancies"])
    healed = Counter(_heal_direction(d) for d in report["discrepancies"])
    return {
        "exit": 0,
        "checked": report["checked"],
        "discrepancies": len(report["discrepancies"]),
        "actions": dict(sorted(actions.items())),
        "healed_inbound": healed["inbound"],
        "healed_outbound": healed["outbound"],
        "outbound_examples": [
            f"{d['incident_id']} {d['field']}: {d['action']} ({d['reason']})"
            for d in report["discrepancies"]
            if _heal_direction(d) == "outbound"
        ][:5],
    }


def _heal_direction(discrepancy: Mapping[str, Any]) -> str:
    """Which way a healing action carries a change: ``outbound`` (the platform's change had
    not reached the system: the outbox lost it), ``inbound`` (the system's change had not
    reached the platform: expected, a webhook sent while the daemon was down and never
    retried) or ``none``."""
    action, reason = discrepancy["action"], discrepancy["reason"]
    if action == "push" or (action == "append-journal" and "external record" in reason):
        return "outbound"
    if action in ("pull", "append-journal", "create-platform", "link"):
        return "inbound"
    return "none"


# -- the check ------------------------------------------------------------------------------


@dataclass
class Verdict:
    checks: int = 0
    delivered: int = 0
    in_dlq: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, counter: str, text: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        if len(self.problems) < 30:
            self.problems.append(f"{counter}: {text}")


def _external_journals(sim: Simulator, kind: str, external_id: str) -> list[tuple[str, str]]:
    """(journal kind, text) of every entry of one record, read from the simulator's store."""
    if isinstance(sim, ServiceNowSimulator):
        return [
            (row["element"], row["value"].strip())
            for row in sim.tables["sys_journal_field"].values()
            if row["element_id"] == external_id
        ]
    if isinstance(sim, JiraSimulator):
        issue = sim.issues[int(external_id)]
        return [
            ("comments" if c.public else "work_notes", adf_to_text(c.body).strip())
            for c in issue.comments
        ]
    assert isinstance(sim, PagerDutySimulator)
    return [("work_notes", str(n["content"]).strip()) for n in sim.incidents[external_id].notes]


def _records_with_key(sim: Simulator, key: str) -> list[str]:
    """The ids of the simulator's records carrying ``key`` (ours: exactly one each)."""
    if isinstance(sim, ServiceNowSimulator):
        return [s for s, row in sim.tables["incident"].items() if row["correlation_id"] == key]
    if isinstance(sim, JiraSimulator):
        return [str(i) for i, issue in sim.issues.items() if key in issue.labels]
    assert isinstance(sim, PagerDutySimulator)
    return [i for i, incident in sim.incidents.items() if incident.key == key]


def check(world: World, ledger: Ledger) -> Verdict:
    verdict = Verdict()
    db = open_database(world.db_path)
    try:
        install = meta.get(db, "install_id") or ""
        ids = {kind: world.integrations[kind]["id"] for kind in KINDS}
        # what the DLQ holds, per (incident, integration): excused, and counted
        dead: set[tuple[int, int]] = {
            (r["incident_id"], r["integration_id"])
            for r in db.query("SELECT incident_id, integration_id FROM outbox WHERE state = 'dead'")
        }
        created = set(ledger.fields)
        platform_ids = {r["id"] for r in db.query("SELECT id FROM incidents")}
        for extra in sorted(platform_ids - created):
            verdict.problem("duplicated", f"INC-{extra} exists on the platform; the load made none")

        def miss(incident: int, kind: str, text: str) -> None:
            if (incident, ids[kind]) in dead:
                verdict.in_dlq += 1
            else:
                verdict.problem("lost", text)

        for kind in KINDS:
            sim = world.sims[kind]
            ours = {correlation_key(install, n) for n in created}
            for key in sorted(_keys_of(sim) - ours):
                verdict.problem("duplicated", f"{kind} has a record keyed {key!r} that is not ours")
        external_ids: dict[tuple[int, str], str] = {}
        for incident in sorted(created):
            key = correlation_key(install, incident)
            expected = ledger.fields[incident]
            current = incidents.get(db, incident)
            for name, value in expected.items():
                verdict.checks += 1
                if current.value(name) != value:
                    verdict.problem(
                        "lost",
                        f"INC-{incident} {name} is {current.value(name)!r} on the platform, "
                        f"the last change made it {value!r}",
                    )
                else:
                    verdict.delivered += 1
            assignee = ledger.assigned.get(incident, "")
            verdict.checks += 1
            if current.assigned_to != assignee:
                verdict.problem(
                    "lost",
                    f"INC-{incident} assigned_to is {current.assigned_to!r} on the platform, "
                    f"the ServiceNow agent made it {assignee!r}",
                )
            else:
                verdict.delivered += 1
            for kind in KINDS:
                sim = world.sims[kind]
                found = _records_with_key(sim, key)
                for _ in found[1:]:
                    verdict.problem("duplicated", f"INC-{incident}: {len(found)} records in {kind}")
                link = links.find(db, incident, ids[kind])
                if link is None or not found:
                    miss(incident, kind, f"INC-{incident} has no record in {kind}")
                    continue
                if link["external_id"] not in found:
                    verdict.problem(
                        "lost", f"INC-{incident} is linked to {link['external_id']} in {kind}, "
                        f"which does not carry its key"
                    )  # fmt: skip
                external_ids[(incident, kind)] = link["external_id"]
        # scalar fields, read as each integration reads them
        for kind in KINDS:
            connector = open_connector(db, world.integrations[kind], timeout=30)
            try:
                for incident in sorted(created):
                    external_id = external_ids.get((incident, kind))
                    if external_id is None:
                        continue
                    record = connector.get(external_id)
                    wanted = {
                        name: connector.normalise(name, ledger.fields[incident][name])
                        for name in UPDATED_FIELDS[kind]
                        if name not in OWNED_BY_EXTERNAL[kind]
                    }
                    if kind == "servicenow":
                        wanted["assigned_to"] = ledger.assigned.get(incident, "")
                    for name, value in wanted.items():
                        verdict.checks += 1
                        theirs = record.fields.get(name, "")
                        if theirs != value:
                            miss(
                                incident,
                                kind,
                                f"INC-{incident} {name} is {theirs!r} in {kind}, "
                                f"expected {value!r}",
                            )
                        else:
                            verdict.delivered += 1
            finally:
                connector.close()
        # journals: every entry exactly once where it must be, nowhere else
        where: dict[tuple[int, str], Counter[tuple[str, str]]] = {}
        for incident in sorted(created):
            where[(incident, PLATFORM)] = Counter(
                (e["kind"], e["body"].strip())
                for e in db.query(
                    "SELECT kind, body FROM journal_entries WHERE incident_id = ?", [incident]
                )
            )
            for kind in KINDS:
                external_id = external_ids.get((incident, kind))
                if external_id is not None:
                    where[(incident, kind)] = Counter(
                        _external_journals(world.sims[kind], kind, external_id)
                    )
        for entry in ledger.entries:
            for system in (PLATFORM, *KINDS):
                counts = where.get((entry.incident, system))
                if counts is None:
                    continue  # no record there: counted above
                seen = counts[(entry.kind, entry.body)]
                label = f"INC-{entry.incident} {entry.kind} {entry.body!r} from {entry.origin}"
                if reaches(entry.kind, entry.origin, system):
                    verdict.checks += 1
                    if seen == 0:
                        if system == PLATFORM:
                            verdict.problem("lost", f"{label}: not on the platform")
                        else:
                            miss(entry.incident, system, f"{label}: not in {system}")
                    else:
                        verdict.delivered += 1
                    if seen > 1:
                        verdict.problem("duplicated", f"{label}: {seen} times in {system}")
                elif seen:
                    verdict.problem("unexpected", f"{label}: in {system} ({seen})")
    finally:
        db.close()
    return verdict


def _keys_of(sim: Simulator) -> set[str]:
    """Every correlation key (or none) on the simulator's records."""
    if isinstance(sim, ServiceNowSimulator):
        return {row["correlation_id"] for row in sim.tables["incident"].values()}
    if isinstance(sim, JiraSimulator):
        return {
            next((label for label in issue.labels if label.startswith("im:")), "")
            for issue in sim.issues.values()
        }
    assert isinstance(sim, PagerDutySimulator)
    return {incident.key for incident in sim.incidents.values()}


# -- the run --------------------------------------------------------------------------------


def run(settings: Settings) -> dict[str, Any]:
    """The whole soak; the report (``ok`` says whether the invariant held)."""
    if settings.kills < 1 or settings.rate <= 0 or settings.load_seconds <= 0:
        raise ValueError("--kills, --rate and --duration must be positive")
    began = time.monotonic()
    keep = [settings.keep]  # a failed soak keeps its directory for a post-mortem
    with contextlib.ExitStack() as stack:
        world = _set_up(stack, settings, keep)
        daemon = Daemon(world)
        stack.callback(daemon.kill)
        daemon.start()
        ledger = Ledger()
        load = Load(world, settings, ledger)
        killer = Killer(world, daemon, settings)
        load_began = time.monotonic()
        load.start()
        try:
            killer.run(load_began)
            _sleep_until(load_began + settings.load_seconds)
        finally:
            load.stopping.set()
            load.join(timeout=60)
        load_seconds = time.monotonic() - load_began
        phases = {"setup": load_began - began, "load": load_seconds}
        for sim in world.sims.values():  # the kills are over: no need to wait any more
            sim.faults.update({"latency": 0})
        mark = time.monotonic()
        still = drain(world, settings.drain_timeout)
        phases["drain"] = time.monotonic() - mark
        mark = time.monotonic()
        reconciled = {}
        for kind in KINDS:
            reconciled[NAMES[kind]] = reconcile(world, kind)
            still = drain(world, settings.drain_timeout) or still
        stopped = daemon.stop()
        phases["reconcile"] = time.monotonic() - mark
        mark = time.monotonic()
        verdict = check(world, ledger)
        integrity = _read(world.db_path, "PRAGMA integrity_check")
        phases["check"] = time.monotonic() - mark
        delivered_rows = _read(world.db_path, "SELECT count(*) FROM outbox WHERE state = 'done'")
        dlq = _read(world.db_path, "SELECT count(*) FROM outbox WHERE state = 'dead'")
        kills = killer.kills
        outbound_heals = sum(r.get("healed_outbound", 0) for r in reconciled.values())
        report: dict[str, Any] = {
            "what": "crash soak: im daemon SIGKILLed under load and restarted (SPEC §14)",
            "seed": settings.seed,
            "kills": len(kills),
            "kills_by_mode": dict(sorted(Counter(k.mode for k in kills).items())),
            "kills_with_sends_in_flight": sum(1 for k in kills if k.sends_in_flight),
            "kills_with_leased_rows": sum(1 for k in kills if k.leased),
            "kills_with_webhooks_unapplied": sum(1 for k in kills if k.webhooks_unapplied),
            "sends_in_flight_at_kills": sum(k.sends_in_flight for k in kills),
            "restart_failures": len(killer.restart_failures),
            "daemon_ready_s": {
                "median": round(statistics.median(daemon.ready_times), 2),
                "max": round(max(daemon.ready_times), 2),
            },
            "rate_per_s": settings.rate,
            "latency_s": settings.latency,
            "load_s": round(load_seconds, 1),
            "changes": ledger.total,
            "achieved_rate_per_s": round(ledger.total / load_seconds, 1),
            "changes_by_kind": dict(sorted(ledger.counts.items())),
            "load_errors": len(ledger.errors),
            "outbox_rows_delivered": delivered_rows,
            "drained": not still,
            "reconcile": reconciled,
            "checks": verdict.checks,
            "delivered": verdict.delivered,
            "in_dlq": verdict.in_dlq,
            "dlq_rows": dlq,
            "lost": verdict.lost,
            "lost_before_reconcile": outbound_heals,
            "duplicated": verdict.duplicated,
            "unexpected": verdict.unexpected,
            "integrity_check": integrity,
            "quick_check_failures_after_kills": sum(1 for k in kills if k.quick_check != "ok"),
            "daemon_stop_exit": stopped,
            "time_s": round(time.monotonic() - began, 1),
            "phases_s": {name: round(seconds, 1) for name, seconds in phases.items()},
        }
        report["ok"] = bool(
            report["lost"] == 0
            and outbound_heals == 0
            and report["duplicated"] == 0
            and report["unexpected"] == 0
            and integrity == "ok"
            and report["quick_check_failures_after_kills"] == 0
            and report["load_errors"] == 0
            and report["drained"]
            and len(kills) == settings.kills
            and all(r.get("exit") == 0 for r in reconciled.values())
        )
        if still:
            report["not_drained"] = still
        if verdict.problems:
            report["problems"] = verdict.problems
        if ledger.errors:
            report["load_error_examples"] = ledger.errors[:5]
        if killer.restart_failures:
            report["restart_failure_examples"] = killer.restart_failures[:3]
        report["kill_log"] = [
            {
                "n": k.number,
                "mode": k.mode,
                "at_s": k.at_s,
                "up_s": k.up_s,
                "sends_in_flight": k.sends_in_flight,
                "leased": k.leased,
                "webhooks_unapplied": k.webhooks_unapplied,
                "restart_s": round(k.restart_s, 2),
            }
            for k in kills
        ]
        if settings.keep or not report["ok"]:
            keep[0] = True
            report["workdir"] = str(world.workdir)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the load and the kills")
    parser.add_argument("--rate", type=float, default=8.0, help="changes per second (default 8)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of load (default: 4 per kill)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.04, help="seconds the simulators add to each answer"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the throw-away directory (logs, database)"
    )
    args = parser.parse_args()
    settings = Settings(
        kills=args.kills,
        seed=args.seed,
        rate=args.rate,
        duration=args.duration,
        latency=args.latency,
        keep=args.keep,
    )
    # the simulators' webhook loops print a line when a delivery dies with the daemon that was
    # receiving it: stdout is the report's
    with contextlib.redirect_stdout(sys.stderr):
        report = run(settings)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
