"""The Outbound Sync Service, sending side (SPEC §4): claims due outbox rows, sends them
through the connectors, and records what happened.

A plain object: a test steps it with an injected clock and injected transports, the daemon
ticks it from APScheduler. One step:

1. in one write transaction: take back expired leases, lease the due rows (the oldest live
   row of each (incident, integration) pair, for enabled integrations that are not paused and
   not ahead of their ``--rate-limit`` pace), and read everything a send needs;
2. without holding the database: send, in claim order. In the daemon (``parallel``) the step
   hands its rows to sender threads and returns: up to SENDERS rows of one integration (each
   a different incident) are in flight at once, and the next tick claims more as they finish,
   so one slow round trip holds back neither the other integrations nor the next rows;
3. in one write transaction per row: link, snapshots, journal links, counters, and the row's
   new state (done, retried later, paused, or in the DLQ).

A create whose outcome is unknown (timeout, crash) is ``in_doubt``: before it is sent again the
connector looks its correlation key up, so a vendor never gets a second record.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from im import telemetry
from im.clock import Clock, format_time
from im.config import mapping
from im.config.connection import ConnectorCache, TransportFor
from im.connectors.base import Connector, ExternalRecord, JournalEntry
from im.connectors.http import AuthError, ConnectorError, RateLimitedError, RetryableError
from im.errors import ImError
from im.model import JOURNAL_FIELDS, Direction, Incident
from im.store import conflicts as conflict_rows
from im.store import inbound as inbound_rows
from im.store import incidents as incident_rows
from im.store import integrations as integration_rows
from im.store import links, snapshots, sync_state
from im.store import outbox as rows
from im.store.db import write
from im.sync import retry
from im.sync.retry import Treatment

if TYPE_CHECKING:
    pass

LEASE_SECONDS = 60.0
BATCH = 50
# rows of one integration in flight at once when ``parallel``: each is a different incident
# (a claim takes one row per pair), so their order does not matter; sent one after another,
# a vendor's round trips, not our work, set the pace. Never more are claimed, so a leased row
# waits for a sender no longer than one send.
SENDERS = 8
# how far ahead --rate-limit lets a step claim: N/s allows N rows per second, in bursts
PACE_WINDOW = 1.0

Log = Callable[[str, dict[str, Any]], None]


@dataclass
class Job:
    """One leased row and everything its send needs, read inside the claim transaction."""

    row: dict[str, Any]
    integration: dict[str, Any]
    incident: Incident
    external_id: str | None  # None: the send creates the external record
    broken: bool  # the record is gone (a 404 on an earlier update)
    fields: dict[str, str]  # platform field -> platform value to send
    journal: list[tuple[int, str, str]]  # (entry id, kind, body) not yet linked
    snapshots: dict[str, snapshots.Snapshot]
    known_vendor_ids: set[str]

    @property
    def creating(self) -> bool:
        return self.external_id is None

    @property
    def operation(self) -> str:
        return "create" if self.creating else "update"

    # an earlier create of the pair failed or was in doubt: it may exist already
    earlier_create: bool = False
    # values this row's earlier attempts wrote or may have written, per field (pushes are
    # recorded before the send: a daemon killed mid-send never learnt the outcome)
    ours: dict[str, set[str]] = field(default_factory=dict)
    # an earlier attempt was cut short by a dead dispatcher: the record may also show a state
    # on the way to one of those values (a path of Jira transitions), which is ours too
    cut_short: bool = False

    @property
    def retrying(self) -> bool:
        """Sent before (or possibly sent): the correlation key and journal entries are
        looked up before creating or appending."""
        return bool(
            self.row["state"] == "in_doubt"
            or self.row["attempt_log"] != "[]"
            or self.earlier_create
        )


@dataclass
class Result:
    job: Job
    record: ExternalRecord | None = None
    sent: dict[str, str] = field(default_factory=dict)  # field -> normalised value sent
    kept_external: dict[str, str] = field(default_factory=dict)  # newer external edits kept
    kept_seen_at: str = ""  # the record's update time when those were read
    journal: dict[int, str] = field(default_factory=dict)  # entry id -> vendor id
    error: ConnectorError | None = None
    released: bool = False  # not sent at all (shutdown)


@dataclass(frozen=True)
class StepReport:
    sent: int = 0
    failed: int = 0
    reaped: int = 0


class Dispatcher:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        owner: str | None = None,
        transport_for: TransportFor | None = None,
        sleep: Callable[[float], None] | None = None,
        lease_seconds: float = LEASE_SECONDS,
        batch: int = BATCH,
        parallel: bool = False,
        log: Log | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}"
        self._lease = timedelta(seconds=lease_seconds)
        self._batch = batch
        self._log = log or (lambda event, values: None)
        self._cache = ConnectorCache(db, transport_for=transport_for, sleep=sleep)
        self._lock = threading.Lock()
        self._record_lock = threading.Lock()
        self._block_reasons: dict[int, str] = {}
        self._stopping = threading.Event()
        # threads are made as needed: SENDERS for each integration that is busy at once
        self._senders = (
            ThreadPoolExecutor(SENDERS * 8, thread_name_prefix="im-send") if parallel else None
        )
        self._in_flight: dict[int, int] = {}  # integration id -> rows claimed, not recorded

    # -- the step ---------------------------------------------------------------------------

    def step(self) -> StepReport:
        """Send what is due now. Returns how many rows were delivered and how many failed."""
        reaped, jobs = self._claim()
        if not jobs:
            return StepReport(reaped=reaped)
        groups: dict[int, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.integration["id"], []).append(job)
        if self._senders is not None:  # the daemon: sent and recorded on sender threads
            for group in groups.values():
                self._submit(group)
            return StepReport(reaped=reaped)
        results = [r for group in groups.values() for r in self._send_group(group)]
        sent = sum(1 for r in results if not r.released and r.error is None)
        failed = sum(1 for r in results if not r.released and r.error is not None)
        return StepReport(sent, failed, reaped)

    def stop(self) -> None:
        """Finish the row being sent and give the others back (graceful shutdown)."""
        self._stopping.set()

    def close(self) -> None:
        """Wait for the rows being sent (those not begun are given back after ``stop``)."""
        if self._senders is not None:
            self._senders.shutdown(wait=True)
        self._cache.close()

    # -- 1. claim ----------------------------------------------------------------------------

    def _claim(self) -> tuple[int, list[Job]]:
        now = self.clock.now()
        stamp = format_time(now)
        jobs: list[Job] = []
        with self._record_lock:
            if not rows.may_have_work(self.db, stamp):
                return 0, jobs
        # the senders record on the same connection: one transaction at a time
        with self._record_lock, write(self.db):
            reaped = rows.reap(self.db, stamp)
            budget: dict[int, int] = {}
            found: dict[int, dict[str, Any] | None] = {}  # integrations, read once per claim
            for row in rows.due(self.db, stamp, self._batch):
                if row["integration_id"] not in found:
                    found[row["integration_id"]] = integration_rows.find(
                        self.db, str(row["integration_id"])
                    )
                integration = found[row["integration_id"]]
                if integration is None:
                    continue
                if not self._has_sender(integration["id"]) or not self._within_pace(
                    integration, budget
                ):
                    continue
                try:
                    # built here, on this thread: senders must not touch the shared connection
                    self._connector(integration)
                except ImError as exc:  # e.g. the master key is missing: nothing can be sent
                    self._blocked(integration, exc)
                    continue
                rows.lease(self.db, row["id"], self.owner, format_time(now + self._lease), stamp)
                job = self._job(row, integration)
                if job is None:
                    continue
                jobs.append(job)
                if self._senders is not None:
                    with self._lock:
                        taken = self._in_flight.get(job.integration["id"], 0)
                        self._in_flight[job.integration["id"]] = taken + 1
            for integration_id, used in budget.items():
                # only integrations found, with a --rate-limit, use any budget (_within_pace)
                paced_one = found[integration_id]
                assert paced_one is not None
                rate = float(paced_one["rate_limit"])
                if rate:
                    sync_state.pace(
                        self.db, integration_id, format_time(now + timedelta(seconds=used / rate))
                    )
        return reaped, jobs

    def _has_sender(self, integration_id: int) -> bool:
        """Whether the daemon can take one more of the integration's rows now."""
        if self._senders is None:
            return True
        with self._lock:
            return self._in_flight.get(integration_id, 0) < SENDERS

    def _blocked(self, integration: Mapping[str, Any], error: ImError) -> None:
        """Say once (not every tick) why an integration's changes cannot be sent."""
        message = str(error)
        if self._block_reasons.get(integration["id"]) != message:
            self._block_reasons[integration["id"]] = message
            self._log("outbound.blocked", {"integration": integration["name"], "error": message})

    def _within_pace(self, integration: Mapping[str, Any], budget: dict[int, int]) -> bool:
        """--rate-limit N/s: at most N rows per second, claimed up to a second ahead."""
        rate = integration["rate_limit"]
        if not rate:
            return True
        allowed = max(1, math.floor(float(rate) * PACE_WINDOW))
        used = budget.get(integration["id"], 0)
        if used >= allowed:
            return False
        budget[integration["id"]] = used + 1
        return True

    def _job(self, row: dict[str, Any], integration: dict[str, Any]) -> Job | None:
        incident = incident_rows.get(self.db, row["incident_id"])
        if incident is None:  # deleted since: nothing to send
            rows.finish(self.db, row["id"], format_time(self.clock.now()))
            return None
        link = links.find(self.db, row["incident_id"], integration["id"])
        # the incident's current values: a row never sends a value the platform has since
        # replaced (an inbound change, a conflict's winner, a newer edit)
        fields = {name: incident.value(name) for name in row["fields"]}
        if link is None and row["operation"] == "update":
            # its create was given up (DLQ) or never made: this row creates the record
            table = mapping.mappings(
                integration["type"],
                integration["settings"],
                integration_rows.overrides(self.db, integration["id"]),
            )
            fields = {
                name: incident.value(name)
                for name, fm in table.items()
                if fm.synced and name not in JOURNAL_FIELDS and incident.value(name)
            }
        # a field in manual review is held back from this integration until it is resolved
        held = conflict_rows.held_fields(self.db, incident.id, integration["id"])
        fields = {name: value for name, value in fields.items() if name not in held}
        entry_ids = list(row["journal"])
        linked = snapshots.linked_entries(self.db, integration["id"], entry_ids)
        bodies = {e["id"]: e for e in incident_rows.journal(self.db, incident.id)}
        journal = [
            (entry_id, bodies[entry_id]["kind"], bodies[entry_id]["body"])
            for entry_id in entry_ids
            if entry_id in bodies and entry_id not in linked
        ]
        return Job(
            row=row,
            integration=integration,
            incident=incident,
            external_id=link["external_id"] if link else None,
            broken=link is not None and link["state"] != "linked",
            fields=fields,
            journal=journal,
            snapshots=snapshots.for_pair(self.db, integration["id"], incident.id),
            known_vendor_ids=(
                snapshots.vendor_ids(self.db, integration["id"], incident.id) if journal else set()
            ),
            earlier_create=link is None and rows.had_create(self.db, row),
            ours=(
                inbound_rows.pushed_since(
                    self.db, integration["id"], incident.id, row["created_at"]
                )
                if row["attempt_log"] != "[]"
                else {}
            ),
            cut_short=rows.STOPPED_WHILE_SENDING in row["attempt_log"],
        )

    # -- 2. send -----------------------------------------------------------------------------

    def _send_group(self, jobs: list[Job]) -> list[Result]:
        """Send one integration's rows in order, recording each as soon as it is done (so a
        crash loses at most the row being sent)."""
        paused = threading.Event()
        return [self._send_one(job, paused) for job in jobs]

    def _submit(self, jobs: list[Job]) -> None:
        """The daemon: hand one integration's rows to the sender threads, in claim order."""
        assert self._senders is not None
        paused = threading.Event()

        def one(job: Job) -> None:
            try:
                self._send_one(job, paused)
            except Exception as exc:  # e.g. the database stayed busy: the lease runs out and
                # the row is claimed again; say so, as the step's own failures are said
                self._log(
                    "dispatch.failed",
                    {"integration": job.integration["name"], "error": type(exc).__name__,
                     "detail": str(exc)[:200]},
                )  # fmt: skip
            finally:
                with self._lock:
                    self._in_flight[job.integration["id"]] -= 1

        for job in jobs:
            self._senders.submit(one, job)

    def _send_one(self, job: Job, paused: threading.Event) -> Result:
        """Send and record one row. Once its integration pauses (429, 401: ``paused``) or
        the dispatcher is stopping, a row not yet begun is given back instead."""
        if self._stopping.is_set() or paused.is_set():
            result = Result(job, released=True)
        else:
            with self._record_lock, write(self.db):
                rows.sending(self.db, job.row["id"], format_time(self.clock.now()))
                self._write_ahead(job)
            result = self._send(job)
        with self._record_lock:  # one transaction at a time on the shared connection
            self._record(result)
        if isinstance(result.error, RateLimitedError | AuthError):
            paused.set()
        return result

    def _write_ahead(self, job: Job) -> None:
        """Crash safety: record the values this send may write as our pushes before the
        request leaves, in the transaction that marks the send begun. A daemon killed after
        the vendor applied the write but before ``_record`` leaves them behind, so the write's
        echo is still known as ours (never applied as someone's change over a newer platform
        value), and the row's next attempt does not take it for a concurrent edit (Job.ours).
        ``_record`` withdraws the ones the send kept back."""
        connector = self._cached_connector(job.integration)
        stamp = format_time(self.clock.now())
        for name, value in job.fields.items():
            normalised = connector.normalise(name, value)
            inbound_rows.push(
                self.db, job.integration["id"], job.incident.id, name, normalised, stamp
            )

    def _connector(self, integration: Mapping[str, Any]) -> Connector:
        """Reads the database: call it from the claiming thread only."""
        with self._lock:
            return self._cache.get(integration)

    def _cached_connector(self, integration: Mapping[str, Any]) -> Connector:
        with self._lock:
            return self._cache.built(integration)

    def _send(self, job: Job) -> Result:
        result = Result(job)
        with telemetry.span(
            "sync.outbound",
            job.integration,
            Direction.OUTBOUND,
            job.operation,
            incident_id=job.incident.display_id,
            external_id=job.external_id,
            attempt=job.row["attempts"] + 1,
        ) as span:
            try:
                if job.broken:
                    raise _gone(job)
                connector = self._cached_connector(job.integration)
                external_id = self._send_fields(connector, job, result)
                self._send_journal(connector, job, result, external_id)
            except ConnectorError as exc:
                result.error = exc
            except Exception as exc:  # an answer we could not read: an attempt, not a stuck row
                result.error = RetryableError(
                    f"unexpected {type(exc).__name__} while sending: {str(exc)[:200]}"
                )
            span.set(external_id=result.record.id if result.record else None)
            if result.error is not None:
                span.fail(result.error.message)
        return result

    def _send_fields(self, connector: Connector, job: Job, result: Result) -> str:
        if job.creating or job.row["operation"] == "create":
            key = job.row["correlation_key"]
            if job.external_id is not None:
                # our create, linked meanwhile (its own webhook or a reconcile found the
                # record before this retry did): finished like a found one, never judged
                # against snapshots the create never made (found by tests/test_simulation.py)
                record = self._complete(connector, job, result, connector.get(job.external_id))
            elif job.retrying and (found := connector.find_by_correlation(key)) is not None:
                record = self._complete(connector, job, result, found)
            else:
                record = connector.create(job.fields, key)
            result.record = record
            result.sent = {
                f: connector.normalise(f, v)
                for f, v in job.fields.items()
                if f not in result.kept_external
            }
            return record.id
        external_id = job.external_id
        assert external_id is not None
        if not job.fields:
            return external_id
        # Conditional update: a field changed there since our last sync is a concurrent edit.
        # On a bidirectional integration it is not overwritten blindly: the field waits for
        # that edit's event, which the conflict rules decide (SPEC §6). Elsewhere the
        # platform is the authority and the write goes ahead.
        bidirectional = job.integration["direction"] == Direction.BIDIRECTIONAL
        current = connector.get(external_id)
        changes: dict[str, str] = {}
        for name, value in job.fields.items():
            ours = connector.normalise(name, value)
            theirs = current.fields.get(name)
            snapshot = job.snapshots.get(name)
            # never synced: agreed on empty (the record was made without it), so a person's
            # value there is an edit, not something to overwrite blindly
            agreed = snapshot.value if snapshot is not None else ""
            concurrent = (
                theirs is not None
                and theirs != agreed
                and theirs != ours
                # our own earlier write (cut short by a crash: maybe a state on its way
                # there) is not someone's edit: this attempt finishes it. Only a status is
                # written through states on the way (Jira's transitions); any other field
                # holds our value or its old one, so another value there is a person's
                # (found by tests/test_simulation.py)
                and not (
                    name in job.ours
                    and ((job.cut_short and name == "status") or theirs in job.ours[name])
                )
            )
            if concurrent and bidirectional:
                result.kept_external[name] = theirs or ""
                result.kept_seen_at = current.updated_at
                continue
            if theirs == ours:  # already so: nothing to write, still acknowledged
                result.sent[name] = ours
                continue
            changes[name] = value
        result.record = current
        if changes:
            result.record = connector.update(external_id, changes)
            result.sent.update({f: connector.normalise(f, v) for f, v in changes.items()})
        return external_id

    def _complete(
        self, connector: Connector, job: Job, result: Result, record: ExternalRecord
    ) -> ExternalRecord:
        """Finish our own record that an earlier attempt created (found by its key, or
        linked meanwhile). That attempt may have died before finishing (Jira's assignee and
        transitions, PagerDuty's status follow the POST), or sent values the platform has
        changed since. What the record lacks is sent now, or nothing else would send it
        (found by benchmarks/crash_soak.py): it is our new record, with no snapshot to tell
        a person's edit from a step that never happened.

        A field the POST itself wrote cannot be a step left undone, though: unless it holds
        a value of ours (an earlier attempt's), a person changed it since (found by
        tests/test_simulation.py), a concurrent edit like any other, left in place for its
        event or reconciliation to decide (SPEC §4, §6)."""
        missing = {}
        for name, value in job.fields.items():
            theirs = record.fields.get(name)
            if theirs is None or theirs == connector.normalise(name, value):
                continue
            if name == "description" and not connector.updates_description:
                continue
            if name not in connector.create_steps and theirs not in job.ours.get(name, ()):
                result.kept_external[name] = theirs
                result.kept_seen_at = record.updated_at
                continue
            missing[name] = value
        return connector.update(record.id, missing) if missing else record

    def _send_journal(
        self, connector: Connector, job: Job, result: Result, external_id: str
    ) -> None:
        if not job.journal:
            return
        existing: list[JournalEntry] = []
        if job.retrying:  # a crash may have come between appending and recording the id
            existing = connector.list_journal(external_id)
        taken = set(job.known_vendor_ids)
        for entry_id, kind, body in job.journal:
            match = next(
                (
                    e
                    for e in existing
                    if e.field == kind
                    and e.vendor_id not in taken
                    and connector.normalise(kind, e.body) == connector.normalise(kind, body)
                ),
                None,
            )
            entry = match or connector.add_journal(external_id, kind, body)
            taken.add(entry.vendor_id)
            result.journal[entry_id] = entry.vendor_id

    # -- 3. record ---------------------------------------------------------------------------

    def _record(self, result: Result) -> None:
        job, row = result.job, result.job.row
        integration_id = job.integration["id"]
        now = self.clock.now()
        stamp = format_time(now)
        with write(self.db):
            if result.released:
                rows.release(self.db, row["id"], row["state"], stamp)
                return
            if result.record is not None and job.creating:
                links.create(
                    self.db,
                    job.incident.id,
                    integration_id,
                    result.record.id,
                    result.record.key,
                    stamp,
                )
            # the pushes were recorded before the send (_write_ahead): take back those that
            # were not written: fields the send kept back and, when the vendor refused the
            # write (an answer, not a timeout or a lost connection), fields it did not send
            unwritten = set(result.kept_external)
            error = result.error
            if error is not None and not (
                error.retryable and not isinstance(error, RateLimitedError)
            ):
                unwritten |= set(job.fields) - set(result.sent)
            for name in sorted(unwritten):
                value = self._cached_connector(job.integration).normalise(name, job.fields[name])
                inbound_rows.withdraw(self.db, integration_id, job.incident.id, name, value)
            if result.record is not None:
                # Only what the read-back shows as sent becomes the snapshot, at that version:
                # a person's edit that landed between our write and the read keeps the old
                # snapshot, so its own event is not taken for stale.
                confirmed = {
                    name: value
                    for name, value in result.sent.items()
                    if result.record.fields.get(name, value) == value
                }
                snapshots.put(
                    self.db,
                    integration_id,
                    job.incident.id,
                    confirmed,
                    result.record.version,
                    stamp,
                )
            for entry_id, vendor_id in result.journal.items():
                snapshots.link_entry(self.db, integration_id, entry_id, vendor_id, stamp)
            for name, value in result.kept_external.items():
                if result.kept_seen_at:
                    snapshots.sighted(
                        self.db, integration_id, job.incident.id, name, value, result.kept_seen_at
                    )
            if result.error is None:
                rows.finish(self.db, row["id"], stamp)
                sync_state.count(self.db, integration_id, "outbound_success")
                sync_state.succeeded(self.db, integration_id, stamp)
                self._log("outbound.sent", self._context(result))
                return
            self._failed(result, stamp)

    def _failed(self, result: Result, stamp: str) -> None:
        job, row = result.job, result.job.row
        error = result.error
        assert error is not None
        integration_id = job.integration["id"]
        now = self.clock.now()
        sync_state.count(self.db, integration_id, "outbound_failed")
        sync_state.failed(self.db, integration_id, stamp, error.message)
        # What is done stays done: a record that now exists is linked above, and the row keeps
        # only what is left to send.
        changes: dict[str, Any] = {}
        if job.creating and result.record is not None:
            changes = {"operation": "update", "fields": {}}
        if result.journal:
            changes["journal"] = [e for e in row["journal"] if e not in result.journal]
        operation = "create" if job.creating and result.record is None else "update"
        decision = retry.classify(
            error,
            operation,
            row["attempts"],
            row["pauses"],
            bool(job.integration["rate_limit_backoff"]),
        )
        context = {**self._context(result), "error": error.message, "action": decision.treatment}
        # a create that may have reached the vendor is looked up before it is sent again
        maybe_sent = (
            operation == "create" and error.retryable and not isinstance(error, RateLimitedError)
        )
        state = "in_doubt" if maybe_sent or row["state"] == "in_doubt" else "pending"
        if operation == "update":
            state = "pending"
        treatment = decision.treatment
        next_at, charged = stamp, True
        if treatment is Treatment.RATE_LIMITED:
            next_at, charged = format_time(now + timedelta(seconds=decision.wait)), False
            sync_state.pause(
                self.db, integration_id, sync_state.RATE_LIMITED, stamp, next_at, error.message
            )
        elif treatment is Treatment.AUTH:
            charged = False
            sync_state.pause(
                self.db, integration_id, sync_state.AUTH_FAILING, stamp, None, error.message
            )
        elif treatment is Treatment.RETRY:
            next_at = format_time(now + timedelta(seconds=decision.wait))
        else:  # the DLQ
            state = "dead"
            if treatment is Treatment.GONE:
                links.mark_broken(self.db, job.incident.id, integration_id)
        rows.reschedule(
            self.db,
            row["id"],
            state=state,
            next_attempt_at=next_at,
            now=stamp,
            error=error.message,
            charged=charged,
            paused=treatment is Treatment.RATE_LIMITED,
            changes=changes,
        )
        self._log("outbound.failed", context)

    def _context(self, result: Result) -> dict[str, Any]:
        job = result.job
        return {
            "integration": job.integration["name"],
            "incident": job.incident.display_id,
            "operation": job.operation,
            "external": result.record.key if result.record else job.external_id or "",
            "attempt": job.row["attempts"] + 1,
            "fields": ",".join(sorted(result.sent)),
            "journal": len(result.journal),
        }


def _gone(job: Job) -> ConnectorError:
    from im.connectors.http import RecordNotFoundError

    return RecordNotFoundError(
        f"the external record {job.external_id} is gone (the link is broken)",
        "run `im integration reconcile NAME` to recreate or unlink it",
        status=404,
    )
