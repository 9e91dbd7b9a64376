"""Sync status (SPEC §8): one integration's health with every reason that applies, and what
it is made of (daemon, last webhook, last outbound outcome, pause, backlog, DLQ, conflicts,
last reconcile, counters). Read-only: everything comes from one read of the database, judged
at the injected clock's now."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time, parse_time
from im.config import integrations as config
from im.store import daemon, dead_letters, outbox, sync_state
from im.store import reconcile as runs
from im.store.db import busy_error
from im.sync.schedules import format_interval

HEALTHY = "healthy"
DEGRADED = "degraded"
FAILING = "failing"

# the verdict table's thresholds
BACKLOG_FAILING = timedelta(minutes=30)
BACKLOG_DEGRADED = timedelta(minutes=5)
RECONCILE_STALE = timedelta(hours=2)
UNMAPPABLE_WINDOW = timedelta(hours=1)

METRICS = sync_state.GUIDE_METRICS
OTHER_COUNTERS = sync_state.OTHER_COUNTERS


@dataclass(frozen=True)
class SyncStatus:
    health: str  # healthy | degraded | failing
    reasons: tuple[str, ...]  # failing ones first, each saying what to do
    integration: str
    integration_id: int
    type: str
    enabled: bool
    direction: str
    conflict_strategy: str
    daemon_running: bool
    daemon_heartbeat_at: str | None
    last_webhook_received_at: str | None
    # informational, no verdict: while a webhook secret rotation is in progress, until when
    # the old secret is accepted
    webhook_secret_previous_until: str | None
    last_outbound_success_at: str | None
    last_outbound_failure_at: str | None
    last_outbound_error: str | None
    paused: str | None  # rate-limited | auth-failing, while the pause is in force
    paused_at: str | None
    paused_until: str | None
    backlog: int
    backlog_oldest_seconds: float | None
    dlq_size: int
    pending_conflicts: int
    unmappable_events_last_hour: int
    last_reconcile_run_id: str | None
    last_reconcile_started_at: str | None
    last_reconcile_finished_at: str | None
    last_reconcile_state: str | None  # running | done | failed
    last_reconcile_discrepancies: int | None
    last_reconcile_unresolved: int | None  # left to heal or for a person after that run
    last_reconcile_error: str | None
    reconcile_schedule_interval: str | None
    reconcile_schedule_enabled: bool | None
    reconcile_next_run_at: str | None
    checked_at: str
    metrics: dict[str, int]
    other_counters: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        """Flat snake_case keys, the counters in their two groups (``--format json`` and the
        API answer alike)."""
        shown = asdict(self)
        shown["reasons"] = list(self.reasons)
        return shown


def read(db: Database, clock: Clock, name_or_id: str) -> SyncStatus:
    """The sync status of the integration named (or numbered) ``name_or_id``. Writes nothing.

    Raises NotFoundError (listing what exists) for an unknown integration, DatabaseError when
    the database cannot be read.
    """
    now = clock.now()
    with _one_read(db):
        integration = config.find(db, name_or_id)
        return _status(db, now, integration)


@contextmanager
def _one_read(db: Database) -> Iterator[None]:
    """One read transaction, so that every figure comes from the same moment of the database
    while the daemon keeps writing (WAL readers see one snapshot from their first read)."""
    if db.conn.in_transaction:
        yield
        return
    try:
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")  # nothing was written: ending the read
    except sqlite3.OperationalError as exc:
        raise busy_error(db, exc) from None


def _status(db: Database, now: datetime, integration: dict[str, Any]) -> SyncStatus:
    """Gather the figures, then judge them."""
    integration_id = integration["id"]
    state = sync_state.get(db, integration_id)
    running = daemon.status(db, now)
    counters = sync_state.counters(db, integration_id)
    last_webhook = _scalar(
        db, "SELECT max(received_at) FROM inbound_events WHERE integration_id = ?", integration_id
    )
    backlog, oldest = outbox.backlog(db, integration_id)
    dlq_size = dead_letters.open_count(db, integration_id)
    pending = _scalar(
        db,
        "SELECT count(*) FROM conflicts WHERE integration_id = ? AND status = 'pending'",
        integration_id,
    )
    # events whose values had no mapping (the connector's warnings), newest first
    unmappable = [
        json.loads(row[0])
        for row in db.execute(
            "SELECT warnings FROM inbound_events WHERE integration_id = ? AND received_at >= ? "
            "AND json_valid(warnings) AND json_array_length(warnings) > 0 ORDER BY id DESC",
            [integration_id, format_time(now - UNMAPPABLE_WINDOW)],
        )
    ]
    # a run in progress says nothing yet: the last finished one is the last result
    last_run = runs.last(db, integration_id, ("done", "failed"))
    last_good = runs.last(db, integration_id, ("done",))
    schedule = runs.schedule(db, integration_id)
    scheduled = schedule is not None and bool(schedule["enabled"])

    # a pause counts while it is in force, as the dispatcher judges it
    in_force = sync_state.pause_in_force(db, integration["id"], format_time(now)) is not None

    found = SyncStatus(
        health=HEALTHY,
        reasons=(),
        integration=integration["name"],
        integration_id=integration_id,
        type=integration["type"],
        enabled=bool(integration["enabled"]),
        direction=integration["direction"],
        conflict_strategy=integration["conflict_strategy"],
        daemon_running=running.running,
        daemon_heartbeat_at=running.heartbeat_at,
        last_webhook_received_at=last_webhook,
        webhook_secret_previous_until=config.previous_webhook_secret_until(db, integration_id, now),
        last_outbound_success_at=state.get("last_success_at"),
        last_outbound_failure_at=state.get("last_failure_at"),
        last_outbound_error=state.get("last_error"),
        paused=state.get("pause_reason") if in_force else None,
        paused_at=state.get("paused_at") if in_force else None,
        paused_until=state.get("paused_until") if in_force else None,
        backlog=int(backlog),
        backlog_oldest_seconds=(
            round((now - parse_time(oldest)).total_seconds(), 3) if oldest else None
        ),
        dlq_size=dlq_size,
        pending_conflicts=int(pending),
        unmappable_events_last_hour=len(unmappable),
        last_reconcile_run_id=f"run-{last_run['id']}" if last_run else None,
        last_reconcile_started_at=last_run["started_at"] if last_run else None,
        last_reconcile_finished_at=last_run["finished_at"] if last_run else None,
        last_reconcile_state=last_run["state"] if last_run else None,
        last_reconcile_discrepancies=last_run["discrepancies"] if last_run else None,
        last_reconcile_unresolved=last_run["unresolved"] if last_run else None,
        last_reconcile_error=last_run["error"] if last_run else None,
        reconcile_schedule_interval=(
            format_interval(schedule["interval_seconds"]) if schedule is not None else None
        ),
        reconcile_schedule_enabled=bool(schedule["enabled"]) if schedule is not None else None,
        reconcile_next_run_at=schedule["next_run_at"] if scheduled and schedule else None,
        checked_at=format_time(now),
        metrics={counter: counters.get(counter, 0) for counter in METRICS},
        other_counters={counter: counters.get(counter, 0) for counter in OTHER_COUNTERS},
    )
    # staleness counts from the last run that worked; a schedule that never ran well is
    # judged from when it was set (it runs at once then)
    since = last_good["started_at"] if last_good else (schedule["updated_at"] if schedule else None)
    example = str(unmappable[0][0])[:120] if unmappable else None
    failing, degraded = judge(
        found,
        now,
        scheduled_since=since if scheduled else None,
        unmappable_example=example,
        worked=last_good is not None,
    )
    health = FAILING if failing else DEGRADED if degraded else HEALTHY
    return replace(found, health=health, reasons=(*failing, *degraded))


def judge(
    found: SyncStatus,
    now: datetime,
    *,
    scheduled_since: str | None,
    unmappable_example: str | None,
    worked: bool = True,
) -> tuple[list[str], list[str]]:
    """The verdict table (SPEC §8) applied to the figures: the reasons to call the
    integration failing, and those to call it degraded, each saying what to do. Pure.

    ``scheduled_since``: with an enabled reconcile schedule, when the last run that worked
    started (or the schedule was set, when none did); None without one. ``worked``: whether
    any run worked.
    """
    name = found.integration
    failing: list[str] = []
    degraded: list[str] = []
    if found.paused == sync_state.AUTH_FAILING:
        credential = config.SECRETS[found.type][0].option
        failing.append(
            f"sending is paused since {found.paused_at}: {found.type} refused the credentials "
            f"({_short(found.last_outbound_error)}); fix them with `im integration configure "
            f"{name} {credential}-file PATH` or, once fixed there, `im integration test {name}`"
        )
    if not found.daemon_running:
        failing.append(
            "no daemon is running, so nothing is sent or applied: start one with `im daemon`"
        )
    # a disabled integration keeps its changes on purpose: that is its own reason below
    waited = (found.backlog_oldest_seconds or 0) if found.enabled else 0
    oldest = timedelta(seconds=waited)
    if oldest > BACKLOG_FAILING:
        failing.append(
            f"the oldest of {found.backlog} waiting change(s) has waited {_age(oldest)} "
            f"(over 30m): see the last error below and check the connection with "
            f"`im integration test {name}`"
        )
    elif oldest > BACKLOG_DEGRADED:
        degraded.append(
            f"the oldest of {found.backlog} waiting change(s) has waited {_age(oldest)} "
            "(over 5m): see the last error below; the daemon keeps retrying"
        )
    # A disabled integration is a choice, not a breakage, so it is not failing; but nothing
    # flows while it is off, which someone watching must notice: degraded, saying so.
    if not found.enabled:
        degraded.append(
            "the integration is disabled: nothing is sent or applied; enable it with "
            f"`im integration configure {name} --enable`"
        )
    if found.dlq_size:
        degraded.append(
            f"{found.dlq_size} change(s) in the dead letter queue: see "
            f"`im integration dlq {name}`, then `im integration dlq-retry {name} ENTRY` "
            "or `dlq-discard`"
        )
    if found.pending_conflicts:
        degraded.append(
            f"{found.pending_conflicts} conflict(s) await review: see "
            f"`im conflict list --integration {name}`, then `im conflict resolve ID`"
        )
    if found.last_reconcile_state == "failed":
        degraded.append(
            f"the last reconcile ({found.last_reconcile_run_id}, "
            f"{found.last_reconcile_started_at}) failed: {_short(found.last_reconcile_error)}; "
            f"see `im integration reconcile history {name}`"
        )
    elif found.last_reconcile_unresolved:
        degraded.append(
            f"the last reconcile ({found.last_reconcile_run_id}, "
            f"{found.last_reconcile_started_at}) left {found.last_reconcile_unresolved} "
            f"discrepancies to act on: see `im integration reconcile {name} --dry-run`, and "
            f"heal with `--auto-heal`"
        )
    if scheduled_since is not None and now - parse_time(scheduled_since) > RECONCILE_STALE:
        ran = (
            f"last worked at {scheduled_since}"
            if worked
            else "has not worked since it was set"
            if found.last_reconcile_run_id
            else "never ran"
        )
        degraded.append(
            f"the scheduled reconcile {ran} (over 2h ago): check that the daemon runs and "
            f"`im integration reconcile history {name}`"
        )
    if found.unmappable_events_last_hour:
        degraded.append(
            f"{found.unmappable_events_last_hour} inbound event(s) in the last hour had values "
            f"with no mapping (e.g. {unmappable_example}): map them with "
            f"`im integration field-mapping set {name} FIELD EXTERNAL_FIELD --value P=E`"
        )
    if found.paused == sync_state.RATE_LIMITED:
        degraded.append(
            f"rate-limited by {found.type} until {found.paused_until}: sending resumes by "
            f"itself; pace it with `im integration configure {name} --rate-limit N/s`"
        )
    return failing, degraded


def _scalar(db: Database, sql: str, integration_id: int) -> Any:
    return db.execute(sql, [integration_id]).fetchone()[0]


def _age(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _short(error: str | None) -> str:
    return (error or "401/403").replace("\n", " ")[:200]
