"""``im demo``: the guide's story end to end, on the three simulators and a real daemon, with
no account anywhere.

The simulators are served on free loopback ports (threads of this process) and send their
signed webhooks to a real ``im daemon`` subprocess on another free port. Everything lives in a
throw-away directory: the database, the daemon's log, and the configuration directory the
demo's processes are pointed at. The master key is a fresh one, in ``IM_MASTER_KEY`` for the
demo's own processes only (this one while the demo runs, and its daemon); the user's keyring,
key file, ``IM_DB`` and configuration are never read or written, and this process's
environment is given back as it was.

Then it walks through the guide one step at a time, saying what each step shows and which
``im`` command does the same by hand, and showing the propagation times it measured by
polling every ``POLL_SECONDS`` (real time: this is a demo, not a test). A step holds when what
it shows happened within ``STEP_TIMEOUT``; the first one that does not ends the demo with
``DemoFailedError`` naming it. Whatever happens (success, failure, Ctrl-C), the daemon and the
simulators are stopped and the directory is removed before ``run`` returns or raises.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlite_utils import Database

from im import incidents
from im.clock import SystemClock
from im.config import fields as field_rules
from im.config import integrations as config
from im.config.connection import open_connector
from im.config.webhook_secrets import new_secret
from im.connectors.base import Connector
from im.errors import ImError
from im.model import Incident, incident_display_id
from im.sim import world
from im.sim.server import free_port, serve_in_thread
from im.store import initialise, links
from im.sync import conflicts, reconcile, retry

STEP_TIMEOUT = 15.0  # seconds a step waits for what it shows; then it did not hold
POLL_SECONDS = 0.02
PRINCIPAL = "demo"  # who the demo acts as (IM_USER of its processes): its database's administrator
SIMULTANEOUS_DELAY = 1.0  # seconds the Jira agent's webhook is held back in step 3
CONFLICT_STRATEGY = "manual-review"  # Jira's in step 3: the conflict waits for a person
PERMANENT_ERROR = 422  # what the failing system answers every write with in step 5

KINDS = ("servicenow", "jira", "pagerduty")
# the guide's names, so that its commands (and the README's) work on a `--keep` demo as written
SNOW, JIRA, PD = "prod-snow", "prod-jira", "prod-pd"
NAMES = {"servicenow": SNOW, "jira": JIRA, "pagerduty": PD}
LABELS = {"servicenow": "ServiceNow", "jira": "Jira", "pagerduty": "PagerDuty"}
SECRET_VARIABLES = {"password": "IM_PASSWORD", "api_token": "IM_API_TOKEN"}
# the people on the other side: each simulator's agent account, and the integration's
AGENT_LOGINS = {
    "servicenow": "Basic agent / agent",
    "jira": "Basic agent@example.com / agent-token",
    "pagerduty": "API token agent-token (From: agent@example.com)",
}
INTEGRATION_LOGINS = {
    "servicenow": "Basic im-integration / im-integration",
    "jira": "Basic im-integration@example.com / im-integration-token",
    "pagerduty": "API token im-integration-token",
}

T = TypeVar("T")
Measured = list[tuple[str, float]]


class DemoFailedError(ImError):
    """A step of the demo did not hold, or the demo could not be set up."""


class StepFailedError(Exception):
    """What a step saw instead of what it shows; the demo names the step."""


@dataclass
class Outcome:
    number: int
    title: str
    short: str
    held: bool | None = None  # None: not run
    seconds: float = 0.0
    measured: Measured = field(default_factory=list)
    reason: str = ""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


# -- narration -------------------------------------------------------------------------------


class Narrator:
    """What the demo says, on stdout: rich with colour on a terminal, plain text in a pipe.
    Values from the systems are escaped, never read as markup."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def line(self, markup: str = "") -> None:
        self.console.print(markup, highlight=False, soft_wrap=True)

    def title(self, text: str) -> None:
        self.line(f"[bold]{escape(text)}[/bold]")

    def fact(self, label: str, value: str) -> None:
        self.line(f"  {escape(label):<21} {escape(value)}")

    def heading(self, outcome: Outcome) -> None:
        self.line()
        self.line(f"[bold cyan]Step {outcome.number}[/]  [bold]{escape(outcome.title)}[/]")

    def say(self, text: str) -> None:
        self.line(f"  {escape(text)}")

    def command(self, text: str) -> None:
        """The `im` command (or call) that does the same by hand."""
        self.line(f"  [dim]$[/dim] [green]{escape(text)}[/green]")

    def measured(self, label: str, seconds: float, note: str = "") -> None:
        extra = f"  [dim]({escape(note)})[/dim]" if note else ""
        self.line(f"    {escape(label):<34} [bold]{_ms(seconds):>7}[/bold]{extra}")

    def verdict(self, outcome: Outcome) -> None:
        if outcome.held:
            self.line(f"  [bold green]held[/] (step {outcome.number}, {outcome.seconds:.1f} s)")
        else:
            self.line(f"  [bold red]did not hold[/]: {escape(outcome.reason)}")

    def summary(self, outcomes: list[Outcome], total: float) -> None:
        table = Table(
            box=box.SIMPLE_HEAD if self.console.is_terminal else None,
            show_edge=False,
            pad_edge=False,
        )
        for column in ("step", "what it shows", "verdict", "time", "measured"):
            table.add_column(column, no_wrap=True)
        for o in outcomes:
            verdict, style = {
                None: ("not run", "dim"),
                True: ("held", "green"),
                False: ("did not hold", "bold red"),
            }[o.held]
            table.add_row(
                str(o.number),
                escape(o.short),
                f"[{style}]{verdict}[/{style}]",
                f"{o.seconds:.1f} s" if o.held is not None else "",
                escape("\n".join(f"{label} {_ms(s)}" for label, s in o.measured)),
            )
        self.line()
        self.title("Summary")
        # in a pipe, nothing wraps (the narration does not either)
        terminal = self.console.is_terminal
        self.console.print(table, width=None if terminal else max(self.console.width, 120))
        self.line(f"total {total:.1f} s")


# -- the stage: simulators, database, integrations, daemon -----------------------------------


@dataclass
class Stage:
    """Everything the demo started, and how its processes are configured."""

    workdir: Path
    key: str
    db: Database
    urls: dict[str, str]
    integrations: dict[str, dict[str, Any]]
    connectors: dict[str, Connector]
    daemon_url: str
    clock: SystemClock = field(default_factory=SystemClock)

    @property
    def db_path(self) -> Path:
        return self.workdir / "im.db"

    @property
    def daemon_log(self) -> Path:
        return self.workdir / "daemon.log"

    def agent(self, kind: str) -> httpx.Client:
        """A client of the simulator ``kind`` logged in as its agent: the person there."""
        if kind == "pagerduty":
            headers = {"Authorization": "Token token=agent-token", "From": "agent@example.com"}
            return httpx.Client(base_url=self.urls[kind], headers=headers, timeout=10)
        login = {"servicenow": ("agent", "agent"), "jira": ("agent@example.com", "agent-token")}
        return httpx.Client(base_url=self.urls[kind], auth=login[kind], timeout=10)

    def faults(self, kind: str, changes: Mapping[str, Any]) -> None:
        """Change the simulator's faults at run time (``POST /_sim/faults``)."""
        answer = httpx.post(f"{self.urls[kind]}/_sim/faults", json=dict(changes), timeout=10)
        if answer.status_code != 200:
            raise StepFailedError(f"the {LABELS[kind]} simulator refused {changes}: {answer.text}")

    def link(self, kind: str, incident_id: int) -> dict[str, Any]:
        found = links.find(self.db, incident_id, self.integrations[kind]["id"])
        if found is None:
            raise StepFailedError(f"{incident_display_id(incident_id)} is not linked to {kind}")
        return found

    def shows(self, kind: str, incident_id: int, name: str, value: str) -> bool:
        """Whether the incident's record in ``kind``, read as its integration reads it, has
        ``value`` in the platform field ``name`` (False before the record is linked)."""
        found = links.find(self.db, incident_id, self.integrations[kind]["id"])
        if found is None:
            return False
        record = self.connectors[kind].get(found["external_id"])
        return record.fields.get(name, "") == value

    def platform(self, incident_id: int) -> Incident:
        return incidents.get(self.db, incident_id)

    def user_id(self, email: str) -> str:
        """The ServiceNow sys_id of the user with ``email``, as the agent looks it up."""
        with self.agent("servicenow") as agent:
            answer = agent.get(
                "/api/now/table/sys_user",
                params={"sysparm_query": f"email={email}", "sysparm_fields": "sys_id"},
            )
        found = answer.json().get("result") if answer.status_code == 200 else None
        if not found:
            raise StepFailedError(f"ServiceNow has no user {email} ({answer.status_code})")
        return str(found[0]["sys_id"])


def _log_tail(path: Path, lines: int = 3) -> str:
    """The daemon's last warnings and errors, to explain a failure."""
    if not path.exists():
        return ""
    wanted = [
        line
        for line in path.read_text(errors="replace").splitlines()
        if "level=warning" in line or "level=error" in line or line.startswith("error:")
    ]
    return " | ".join(wanted[-lines:])


def _set_up(stack: contextlib.ExitStack, say: Narrator) -> Stage:
    """Start everything; each piece is registered on ``stack`` to be stopped or removed."""
    workdir = Path(tempfile.mkdtemp(prefix="im-demo-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    key = world.new_master_key()
    stack.enter_context(world.environment(world.isolated_environment(workdir, key, PRINCIPAL)))
    say.title("im demo: the guide's walk-through on local simulators (no account anywhere)")
    say.fact("throw-away directory", f"{workdir} (removed at the end)")
    clock = SystemClock()
    db = initialise(workdir / "im.db", clock, PRINCIPAL).db
    stack.callback(db.close)
    say.command(f"im init   # {workdir / 'im.db'}, a new master key in $IM_MASTER_KEY")

    daemon_port = free_port()
    daemon_url = f"http://127.0.0.1:{daemon_port}"
    urls: dict[str, str] = {}
    integrations: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        webhook_url = f"{daemon_url}/webhooks/{NAMES[kind]}"
        webhook_secret = new_secret(kind)
        sim = world.SIMULATORS[kind](
            seed=secrets.randbelow(2**31), webhook_url=webhook_url, webhook_secret=webhook_secret
        )
        urls[kind] = stack.enter_context(serve_in_thread(sim)).url
        say.fact(f"{LABELS[kind]} simulator", f"{urls[kind]}, webhooks to {webhook_url}")
        integrations[kind] = world.create_integration(
            db, clock, PRINCIPAL, NAMES[kind], kind, urls[kind], webhook_secret
        )
        settings, credentials = world.CONNECTIONS[kind]
        options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
        variables = " ".join(f"${SECRET_VARIABLES[name]}" for name in credentials)
        say.command(
            f"im integration create {NAMES[kind]} --type {kind} --url {urls[kind]} {options} "
            f"--direction bidirectional   # secrets from {variables}, $IM_WEBHOOK_SECRET"
        )
    connectors = {kind: open_connector(db, integrations[kind], timeout=10) for kind in KINDS}
    for connector in connectors.values():
        stack.callback(connector.close)
    stage = Stage(workdir, key, db, urls, integrations, connectors, daemon_url)

    log = stack.enter_context(stage.daemon_log.open("wb"))
    args = ["--port", str(daemon_port), "--public-url", daemon_url]
    process = world.start_daemon(args, stdout=log, stderr=log)  # the environment set above
    stack.callback(world.stop_daemon, process)
    say.command(f"im daemon {' '.join(args)} &")
    try:
        ready = world.wait_ready(process, daemon_url)
    except world.DaemonNotReadyError:
        why = _log_tail(stage.daemon_log) or "no log line"
        raise DemoFailedError(
            f"demo failed while setting up: the daemon did not start ({why})"
        ) from None
    say.fact("im daemon", f"{daemon_url} (pid {process.pid}), ready in {ready:.1f} s")
    say.fact("integrations", f"{SNOW}, {JIRA}, {PD}: bidirectional, default ownership")
    return stage


# -- waiting and measuring -------------------------------------------------------------------


def _wait(what: str, check: Callable[[], T | None], since: float) -> tuple[T, float]:
    """Poll ``check`` until it gives something true; that, and the seconds since ``since``.
    Raises StepFailedError after STEP_TIMEOUT."""
    while True:
        value = check()
        if value:
            return value, time.monotonic() - since
        if time.monotonic() - since > STEP_TIMEOUT:
            raise StepFailedError(f"{what}: not seen within {STEP_TIMEOUT:.0f} s")
        time.sleep(POLL_SECONDS)


def _wait_all(checks: Mapping[str, Callable[[], bool]], since: float) -> dict[str, float]:
    """Poll every check until each has held once; the seconds since ``since`` at which each
    first held. Raises StepFailedError naming those still missing after STEP_TIMEOUT."""
    seen: dict[str, float] = {}
    while True:
        for label, check in checks.items():
            if label not in seen and check():
                seen[label] = time.monotonic() - since
        if len(seen) == len(checks):
            return {label: seen[label] for label in checks}
        if time.monotonic() - since > STEP_TIMEOUT:
            missing = ", ".join(label for label in checks if label not in seen)
            raise StepFailedError(f"not seen within {STEP_TIMEOUT:.0f} s: {missing}")
        time.sleep(POLL_SECONDS)


# -- the story -------------------------------------------------------------------------------


class Story:
    """The guide's walk-through, one method per step; each returns what it measured and
    raises StepFailedError (or an ImError) when what it shows did not happen."""

    def __init__(self, stage: Stage, say: Narrator) -> None:
        self.stage = stage
        self.say = say
        self.incident = 0  # the incident the story follows

    @property
    def ref(self) -> str:
        return incident_display_id(self.incident)

    def _showing(
        self, kinds: tuple[str, ...], name: str, value: str
    ) -> dict[str, Callable[[], bool]]:
        """A check per system: does its record of the incident show ``value`` in ``name``."""
        return {LABELS[k]: partial(self.stage.shows, k, self.incident, name, value) for k in kinds}

    def created_everywhere(self) -> Measured:
        stage, say = self.stage, self.say
        title = "Checkout API returns 502"
        say.command(f'im incident create --title "{title}" --severity sev2')
        since = time.monotonic()
        change = incidents.create(
            stage.db, stage.clock, PRINCIPAL, {"title": title, "severity": "sev2"}
        )
        self.incident = change.incident.id
        say.say(f"{self.ref} and one outbox row per integration, in one transaction; the daemon")
        say.say("sends them. Measured: the commit, until each system shows the record")
        times = _wait_all(self._showing(KINDS, "title", title), since)
        for kind in KINDS:
            key = stage.link(kind, self.incident)["external_key"]
            shown = f"#{key}" if key.isdigit() else key
            say.measured(f"platform -> {LABELS[kind]} {shown}", times[LABELS[kind]])
        return [(f"-> {label}", seconds) for label, seconds in times.items()]

    def reassigned_in_servicenow(self) -> Measured:
        stage, say = self.stage, self.say
        say.say("PagerDuty owns assigned_to by default, so an assignment made elsewhere would")
        say.say("stop at the platform. Here people assign in ServiceNow, and PagerDuty follows:")
        say.command(
            f"im integration field-ownership set {PD} assigned_to --owner platform --priority 10"
        )
        field_rules.set_ownership(stage.db, PD, "assigned_to", "platform", 10)
        record = stage.link("servicenow", self.incident)
        bob = "bob@example.com"
        bob_id = stage.user_id(bob)
        say.say(f"The ServiceNow agent assigns {record['external_key']} to {bob}")
        since = time.monotonic()
        with stage.agent("servicenow") as agent:
            answer = agent.patch(
                f"/api/now/table/incident/{record['external_id']}", json={"assigned_to": bob_id}
            )
        if answer.status_code != 200:
            raise StepFailedError(f"ServiceNow refused the agent's edit ({answer.status_code})")
        times = _wait_all(
            {
                "platform": lambda: stage.platform(self.incident).assigned_to == bob,
                "PagerDuty": lambda: stage.shows("pagerduty", self.incident, "assigned_to", bob),
            },
            since,
        )
        say.measured("ServiceNow -> platform", times["platform"], "webhook, applied")
        say.measured("ServiceNow -> PagerDuty", times["PagerDuty"], "external -> external")
        return [("-> platform", times["platform"]), ("-> PagerDuty", times["PagerDuty"])]

    def simultaneous_edit(self) -> Measured:
        stage, say = self.stage, self.say
        say.command(f"im integration configure {JIRA} --conflict-strategy {CONFLICT_STRATEGY}")
        config.configure(
            stage.db,
            stage.clock,
            PRINCIPAL,
            JIRA,
            config.IntegrationInput(conflict_strategy=CONFLICT_STRATEGY),
        )
        issue = stage.link("jira", self.incident)
        theirs, ours = "Checkout 502s: payment gateway timeouts", "Checkout 502s: bad deploy 4711"
        say.say(
            f'The Jira agent renames {issue["external_key"]} "{theirs}" (its webhook held back '
            f"{SIMULTANEOUS_DELAY:g} s, as a slow network would); at the same moment"
        )
        say.command(f'im incident update {self.ref} --title "{ours}"')
        since = time.monotonic()
        # The agent's edit first, its webhook held back a second (as a slow network would):
        # our commit lands before either side has seen the other's change, however loaded the
        # machine is.
        stage.faults("jira", {"delay-webhooks": SIMULTANEOUS_DELAY})
        try:
            with stage.agent("jira") as agent:
                answer = agent.put(
                    f"/rest/api/3/issue/{issue['external_id']}",
                    json={"fields": {"summary": theirs}},
                )
            incidents.update(stage.db, stage.clock, PRINCIPAL, self.ref, {"title": ours})
        finally:
            stage.faults("jira", {"delay-webhooks": 0})
        if answer.status_code != 204:
            raise StepFailedError(f"Jira refused the agent's edit ({answer.status_code})")
        integration_id = stage.integrations["jira"]["id"]

        def detected() -> dict[str, Any] | None:
            for row in conflicts.listing(stage.db, None, integration_id):
                if row["incident"] != self.ref or row["field"] != "title":
                    continue
                if row["status"] != "pending":
                    raise StepFailedError(
                        f"{row['id']} was {row['status']} at once by {row['strategy']} "
                        f"({row['winner'] or 'nobody'} won), not held for a person"
                    )
                return row
            return None

        found, seen = _wait("a pending conflict on the title", detected, since)
        conflict_id = found["id"]
        say.measured(f"both edits -> {conflict_id} pending", seen)
        say.say(f'{conflict_id}: platform "{found["platform_value"]}",')
        say.say(f'  Jira "{found["external_value"]}"')
        if stage.platform(self.incident).title != ours:
            raise StepFailedError("the platform did not keep its title while the conflict waits")
        say.say("The platform keeps its value; the title is held back from Jira until resolved")
        say.command(f"im conflict resolve {conflict_id} --use-platform")
        since = time.monotonic()
        conflicts.resolve(stage.db, stage.clock, PRINCIPAL, conflict_id, "platform")
        _, equal = _wait(
            "every system showing the platform's title",
            lambda: all(check() for check in self._showing(KINDS, "title", ours).values()),
            since,
        )
        say.measured("resolved -> every system equal", equal)
        return [(f"{conflict_id} pending", seen), ("resolved -> equal", equal)]

    def lost_webhook(self) -> Measured:
        stage, say = self.stage, self.say
        snow = stage.urls["servicenow"]
        record = stage.link("servicenow", self.incident)
        alice = "alice@example.com"
        alice_id = stage.user_id(alice)
        say.say("ServiceNow never retries a webhook. The simulator drops every one:")
        say.command(f"""curl -X POST {snow}/_sim/faults -d '{{"drop-webhooks": 1}}'""")
        stage.faults("servicenow", {"drop-webhooks": 1})
        say.say(f"The ServiceNow agent hands {record['external_key']} to {alice}")
        since = time.monotonic()
        with stage.agent("servicenow") as agent:
            agent.patch(
                f"/api/now/table/incident/{record['external_id']}",
                json={"assigned_to": alice_id},
            )

        def dropped() -> bool:
            log = httpx.get(f"{snow}/_sim/webhooks", timeout=10).json()["log"]
            return any(
                d["resource"] == record["external_id"] and d["outcome"] == "dropped" for d in log
            )

        _wait("the simulator dropping the webhook", dropped, since)
        stage.faults("servicenow", {"drop-webhooks": 0})
        assigned = stage.platform(self.incident).assigned_to
        if assigned == alice:
            raise StepFailedError("the platform has the change although its webhook was dropped")
        say.say(f"Its webhook is lost: the platform still says {assigned}")
        integration = config.find(stage.db, SNOW)
        say.command(f"im integration reconcile {SNOW} --dry-run")
        since = time.monotonic()
        report = reconcile.run(stage.db, stage.clock, integration, reconcile.Options())
        dry = time.monotonic() - since
        for d in report.discrepancies:
            say.say(
                f"  {d.view()['incident_id'] or d.external_key} {d.field}: platform "
                f"{d.platform_value or '-'}, ServiceNow {d.external_value or '-'} -> {d.action}"
            )
        if report.failed or not any(
            (d.incident_id, d.field, d.action) == (self.incident, "assigned_to", "pull")
            for d in report.discrepancies
        ):
            raise StepFailedError(
                f"{report.run_id} did not find the lost reassignment"
                + (f": {report.failed}" if report.failed else "")
            )
        found = len(report.discrepancies)
        say.measured(f"{report.run_id} dry run: {found} found", dry)
        say.command(f"im integration reconcile {SNOW} --auto-heal")
        since = time.monotonic()
        healing = reconcile.run(
            stage.db, stage.clock, integration, reconcile.Options(auto_heal=True)
        )
        heal = time.monotonic() - since
        if healing.failed or stage.platform(self.incident).assigned_to != alice:
            raise StepFailedError(
                f"{healing.run_id} did not heal the reassignment"
                + (f": {healing.failed}" if healing.failed else "")
            )
        say.measured(f"{healing.run_id} auto-heal: healed {healing.healed}", heal)
        _, onward = _wait(
            "PagerDuty following the healed assignment",
            lambda: stage.shows("pagerduty", self.incident, "assigned_to", alice),
            since,
        )
        say.measured("auto-heal -> PagerDuty", onward, "the pull goes on like a webhook")
        return [("dry run", dry), ("auto-heal", heal), ("-> PagerDuty", onward)]

    def dead_letter(self) -> Measured:
        stage, say = self.stage, self.say
        pd = stage.urls["pagerduty"]
        say.say(f"PagerDuty answers every write {PERMANENT_ERROR}. A permanent error goes to the")
        say.say("DLQ at once; a 5xx or a timeout would be tried 4 more times over 40 minutes first")
        say.command(
            f"""curl -X POST {pd}/_sim/faults -d '{{"permanent-error": {PERMANENT_ERROR}}}'"""
        )
        stage.faults("pagerduty", {"permanent-error": PERMANENT_ERROR})
        title = "Checkout 502s: deploy 4711 rolled back"
        say.command(f'im incident update {self.ref} --title "{title}"')
        since = time.monotonic()
        incidents.update(stage.db, stage.clock, PRINCIPAL, self.ref, {"title": title})
        integration = config.find(stage.db, PD)
        entry, dead = _wait(
            "the update in PagerDuty's DLQ",
            lambda: next(iter(retry.dead_entries(stage.db, integration)), None),
            since,
        )
        say.measured("update -> DLQ", dead)
        say.command(f"im integration dlq {PD}")
        attempts = f"{len(entry.attempts)} attempt{'s' if len(entry.attempts) != 1 else ''}"
        say.say(f"{entry.id}: {entry.incident} {entry.operation} of {', '.join(entry.fields)}")
        say.say(f"  after {attempts}: {entry.error[:90]}")
        _wait_all(self._showing(("servicenow", "jira"), "title", title), since)
        say.say("ServiceNow and Jira have the new title. PagerDuty is fixed:")
        say.command(f"""curl -X POST {pd}/_sim/faults -d '{{"permanent-error": 0}}'""")
        stage.faults("pagerduty", {"permanent-error": 0})
        say.command(f"im integration dlq-retry {PD} {entry.id}")
        since = time.monotonic()
        retry.retry_dead(stage.db, stage.clock, integration, entry.id)
        _, delivered = _wait(
            "PagerDuty showing the title after dlq-retry",
            lambda: stage.shows("pagerduty", self.incident, "title", title),
            since,
        )
        if retry.dead_entries(stage.db, integration):
            raise StepFailedError("the DLQ is not empty after dlq-retry")
        say.measured("dlq-retry -> PagerDuty", delivered, "the DLQ is empty")
        return [("update -> DLQ", dead), ("retry -> PagerDuty", delivered)]


# (title, as the summary shows it, the step)
STEPS: list[tuple[str, str, Callable[[Story], Measured]]] = [
    ("an incident created on the platform appears in all three systems",
     "created -> all 3 systems", Story.created_everywhere),
    ("an agent's reassignment in ServiceNow flows back and on to PagerDuty",
     "ServiceNow -> PagerDuty", Story.reassigned_in_servicenow),
    ("a simultaneous edit becomes a conflict and is resolved",
     "two edits -> conflict", Story.simultaneous_edit),
    ("a lost webhook is found by drift reconciliation and healed",
     "lost webhook -> healed", Story.lost_webhook),
    ("a failing system's update lands in the DLQ and dlq-retry delivers it",
     "DLQ -> dlq-retry", Story.dead_letter),
]  # fmt: skip


# -- running it ------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals() -> Iterator[Callable[[], None]]:
    """While the demo runs, SIGTERM and SIGHUP stop it like Ctrl-C (so it still cleans up). Gives a
    function that shields the cleanup from both; the handlers are put back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def shield() -> None:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)

    # a closed terminal (SIGHUP) must clean up too, or the throw-away directory stays
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    try:
        yield shield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (or SIGTERM)."""
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


def _keep(stage: Stage, say: Narrator) -> None:
    say.line()
    say.title("Everything keeps running. Point the CLI at it from another shell:")
    say.line(f"  export IM_DB={stage.db_path}")
    say.line(f"  export IM_MASTER_KEY={stage.key}   # the demo's throw-away key")
    say.line(f"  export XDG_CONFIG_HOME={stage.workdir / 'config'}")
    say.line(f"  export IM_USER={PRINCIPAL}   # the demo database's administrator")
    say.line("  im incident list; im incident history INC-1; im conflict list --status resolved")
    say.line(f"  im integration sync-status {SNOW}; im integration reconcile history {SNOW}")
    say.line("Simulators (play the person on the other side with the agent account):")
    for kind in KINDS:
        say.line(
            f"  {LABELS[kind]:<10} {stage.urls[kind]}   faults: {stage.urls[kind]}/_sim/faults"
        )
        say.line(f"             agent: {AGENT_LOGINS[kind]}")
        say.line(f"             integration: {INTEGRATION_LOGINS[kind]}")
    say.line(f"Daemon: {stage.daemon_url} (log: {stage.daemon_log})")
    say.line(f"Ctrl-C stops everything and removes {stage.workdir}.")


def run(keep: bool = False, console: Console | None = None) -> None:
    """Run the demo, narrating on ``console`` (stdout by default). With ``keep``, leave
    everything running after the steps until Ctrl-C.

    Raises DemoFailedError naming the first step that did not hold; KeyboardInterrupt (Ctrl-C,
    SIGTERM) passes through. Either way, and on success, everything it started is stopped and
    its directory removed first. Writes only in that directory.
    """
    say = Narrator(console or Console(highlight=False))
    outcomes = [Outcome(n, title, short) for n, (title, short, _) in enumerate(STEPS, start=1)]
    failed: Outcome | None = None
    began = time.monotonic()
    with _signals() as shield, contextlib.ExitStack() as stack:
        stage = _set_up(stack, say)
        stack.callback(shield)  # runs first: a second Ctrl-C does not cut the cleanup short
        story = Story(stage, say)
        for outcome, (_, _, step) in zip(outcomes, STEPS, strict=True):
            say.heading(outcome)
            started = time.monotonic()
            try:
                outcome.measured = step(story)
                outcome.held = True
            except (StepFailedError, ImError, httpx.HTTPError) as exc:
                outcome.held, failed = False, outcome
                outcome.reason = str(exc) or type(exc).__name__
                if tail := _log_tail(stage.daemon_log):
                    outcome.reason += f" (daemon log: {tail})"
            outcome.seconds = time.monotonic() - started
            say.verdict(outcome)
            if failed:
                break
        say.summary(outcomes, time.monotonic() - began)
        if failed is None and keep:
            _keep(stage, say)
            wait_for_interrupt()
        say.line("Stopping the daemon and the simulators; removing the throw-away directory.")
    if failed is not None:
        raise DemoFailedError(
            f"demo failed at step {failed.number} ({failed.title}): {failed.reason}"
        )
    say.line("Every step held." if not keep else "Stopped; everything removed.")
