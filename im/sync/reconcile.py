"""Drift reconciliation (SPEC §7): every linked incident compared with its external record,
field by field, as a three-way diff against the synced snapshot, and, with auto-heal, made to
agree as ownership, direction and the conflict rules say.

The external side is streamed: the integration's scope is listed page by page (creation
order, from the integration's creation or ``--backfill``), each page is matched with its
links and journals and then dropped, and the links the listing did not show (records moved
out of scope, or gone) are fetched one by one afterwards. Which links were seen is kept in a
temporary table, so memory does not grow with the number of incidents.

Healing is compare-and-set: each incident is healed in one write transaction that reads the
platform's values and snapshots again and decides again; a value that changed since the diff
is decided on its new value, and a snapshot newer than the record read means a newer change
arrived during the run (left to it). Pushes go through the outbox; pulls are platform changes
that then flow to the other integrations.

One run per integration at a time, across processes: a lock file beside the database.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from im import incidents, telemetry
from im.clock import Clock, format_time, parse_time
from im.config import mapping, ownership
from im.config.connection import ConnectorCache, TransportFor
from im.config.integrations import parse_duration
from im.connectors.base import Connector, ExternalRecord, JournalEntry
from im.connectors.http import (
    AuthError,
    ConnectorError,
    RateLimitedError,
    RecordNotFoundError,
    RetryableError,
)
from im.errors import ImError, InProgressError, StateError, ValidationError
from im.model import (
    JOURNAL_FIELDS,
    Direction,
    Incident,
    Owner,
    check_transition,
    incident_display_id,
    validate_field,
)
from im.store import conflicts as conflict_rows
from im.store import incidents as incident_rows
from im.store import integrations as integration_rows
from im.store import links, locks, meta, snapshots, sync_state
from im.store import outbox as outbox_rows
from im.store import reconcile as runs
from im.store.db import database_file, write
from im.sync import conflicts, drift, external, outbound

DRY_RUN = "dry-run"
AUTO_HEAL = "auto-heal"
TRIGGERS = ("manual", "schedule", "cron")
BATCH = 100
RETRY_WAITS = (1.0, 2.0, 4.0)  # a read that fails retryably is tried again, then counted
MAX_WAIT = 60.0
MAX_ERROR_LINES = 20
HEALS = frozenset({drift.PUSH, drift.PULL, drift.CONFLICT})

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    auto_heal: bool = False
    recreate_missing: bool = False
    backfill_since: datetime | None = None
    trigger: str = "manual"

    @property
    def mode(self) -> str:
        return AUTO_HEAL if self.auto_heal else DRY_RUN


@dataclass(frozen=True)
class Discrepancy:
    incident_id: int | None
    external_id: str
    external_key: str
    field: str  # a platform field, a journal, or "" for the record itself
    platform_value: str
    external_value: str
    snapshot_value: str | None
    action: str
    reason: str

    def view(self) -> dict[str, Any]:
        return {
            "incident_id": incident_display_id(self.incident_id) if self.incident_id else "",
            "external_id": self.external_id,
            "external_key": self.external_key,
            "field": self.field,
            "platform_value": self.platform_value,
            "external_value": self.external_value,
            "snapshot_value": self.snapshot_value,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass
class Report:
    integration: str
    run_id: str
    mode: str
    checked: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    healed: int = 0
    queued: int = 0  # pushes waiting in the outbox for the daemon
    errors: list[str] = field(default_factory=list)  # the first few, one line each
    error_count: int = 0
    failed: str | None = None  # why the run stopped early

    @property
    def unresolved(self) -> int:
        """What is still left for a person or a healing run after this one."""
        needed = sum(1 for d in self.discrepancies if d.action in drift.NEEDS_ACTION)
        return max(0, needed - self.healed)

    def as_json(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "run_id": self.run_id,
            "mode": self.mode,
            "checked": self.checked,
            "discrepancies": [d.view() for d in self.discrepancies],
            "healed": self.healed,
            "queued": self.queued,
            "errors": self.errors,
            "failed": self.failed,
        }


Progress = Callable[[int], None]


@dataclass(frozen=True)
class Concurrent:
    """A concurrent change found by reconciliation, as the conflict rules judged it."""

    verdict: conflicts.Verdict
    platform: conflicts.Edit
    external: conflicts.Edit


@dataclass(frozen=True)
class Found:
    field: str
    decision: drift.Decision
    snapshot: str | None
    concurrent: Concurrent | None = None


def lock_path(db: Database, integration_id: int) -> Path | None:
    path = database_file(db)
    return path.with_name(f"{path.name}.reconcile-{integration_id}.lock") if path else None


def run(
    db: Database,
    clock: Clock,
    integration: Mapping[str, Any],
    options: Options,
    *,
    transport_for: TransportFor | None = None,
    sleep: Callable[[float], None] | None = None,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    concurrency: int | None = None,
) -> Report:
    """One reconcile run of ``integration``, recorded in its history. Raises
    InProgressError when another run of it holds the lock; a run that fails after starting
    is recorded and returned with ``failed`` set. ``concurrency``: how many reads the
    connector makes at once (1 in the deterministic simulation; None: its default)."""
    if options.auto_heal and not integration["enabled"]:
        raise StateError(
            f"{integration['name']} is disabled: it sends and applies nothing",
            "enable it first (`im integration configure NAME --enable`), or use --dry-run",
        )
    path = lock_path(db, integration["id"])
    if path is None:  # an in-memory database: no other process can share it
        return _locked_run(
            db, clock, integration, options, transport_for, sleep, progress, stop, concurrency
        )

    def refusal() -> InProgressError:
        other = runs.running(db, integration["id"])
        what = (
            f" (run-{other['id']}, {other['trigger']}, started {other['started_at']}, "
            f"pid {other['pid']})"
            if other
            else ""
        )
        return InProgressError(
            f"another reconcile of {integration['name']} is in progress{what}",
            "wait for it to finish; `im integration reconcile history NAME` shows it",
        )

    with locks.exclusive(path, refusal):
        return _locked_run(
            db, clock, integration, options, transport_for, sleep, progress, stop, concurrency
        )


def _locked_run(
    db: Database,
    clock: Clock,
    integration: Mapping[str, Any],
    options: Options,
    transport_for: TransportFor | None,
    sleep: Callable[[float], None] | None,
    progress: Progress | None,
    stop: Callable[[], bool] | None,
    concurrency: int | None = None,
) -> Report:
    stamp = format_time(clock.now())
    with write(db):
        runs.interrupted(db, integration["id"], stamp)
        run_id = runs.start(
            db,
            {
                "integration_id": integration["id"],
                "trigger": options.trigger,
                "mode": options.mode,
                "pid": os.getpid(),
                "started_at": stamp,
            },
        )
    report = Report(integration["name"], f"run-{run_id}", options.mode)
    cache = ConnectorCache(db, transport_for=transport_for, sleep=sleep, concurrency=concurrency)
    # a run reads the external system against the platform: inbound (each item's span has
    # the direction of its own action)
    with telemetry.span(
        "sync.reconcile",
        integration,
        Direction.INBOUND,
        "reconcile",
        run_id=report.run_id,
        mode=options.mode,
        trigger=options.trigger,
    ) as span:
        try:
            connector = cache.get(integration)
            reconciler = Reconciler(db, clock, integration, connector, options, report)
            reconciler.run(sleep=sleep, progress=progress, stop=stop)
        except ImError as exc:
            report.failed = str(exc)
        except Exception as exc:  # recorded, never lost: the message could carry anything
            report.failed = f"internal error ({type(exc).__name__})"
            raise
        except BaseException:  # Ctrl-C, or the process told to stop
            report.failed = "interrupted"
            raise
        finally:
            cache.close()
            span.set(
                checked=report.checked,
                discrepancies=len(report.discrepancies),
                healed=report.healed,
            )
            if report.failed:
                span.fail(report.failed)
            with write(db):
                runs.finish(
                    db,
                    run_id,
                    {
                        "state": "failed" if report.failed else "done",
                        "finished_at": format_time(clock.now()),
                        "checked": report.checked,
                        "discrepancies": len(report.discrepancies),
                        "healed": report.healed,
                        "unresolved": report.unresolved,
                        "errors": report.error_count + (1 if report.failed else 0),
                        "error": report.failed,
                    },
                )
                if report.discrepancies:
                    sync_state.count(
                        db, integration["id"], "drift_discrepancies", len(report.discrepancies)
                    )
    return report


def parse_since(text: str, now: datetime, option: str = "--backfill") -> datetime:
    """``--backfill`` (or ``option``): a date (``2026-11-01``, UTC midnight), an ISO time,
    or an age (``30d``, ``12h``) counted back from now."""
    value = text.strip()
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*[smhd]", value.lower()):
            return now - timedelta(seconds=parse_duration(value, option, 0, 10 * 365 * 86400))
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise ValidationError(
            f"{option} {text[:40]!r} is not a date, time or age",
            "give 2026-11-01, 2026-11-01T09:00:00Z or 30d",
        ) from None


def _refusal(incident: Incident, name: str, value: str) -> str | None:
    """Why the platform cannot take an external value (its status machine, its rules for
    the field), or None."""
    try:
        validate_field(name, value)
        if name == "status":
            check_transition(incident.status, value)
    except ImError as exc:
        return exc.message
    return None


_ISO = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z")


def _older(version: str, than: str) -> bool:
    """Whether a record's version is older than a synced one. A time with whole seconds
    compares to the second (PagerDuty's records have whole seconds, its webhooks
    milliseconds: the same change must not look newer than itself)."""
    whole = version.endswith(".000Z") or than.endswith(".000Z")
    if whole and _ISO.fullmatch(version) and _ISO.fullmatch(than):
        return version[:19] < than[:19]
    return version < than


def _item_direction(discrepancy: Discrepancy, integration: Direction) -> Direction:
    """The way a reconcile item's action moves a change: outbound for a push, a re-created
    record and a platform journal entry missing there; inbound for the rest (a pull, a new
    platform incident, an external entry missing here, a link, a conflict, a record only
    reported). A blocked item is the way the integration does not sync."""
    action = discrepancy.action
    if action == drift.BLOCKED:
        return Direction.INBOUND if integration is Direction.OUTBOUND else Direction.OUTBOUND
    if action == drift.APPEND_JOURNAL:
        ours = bool(discrepancy.platform_value) and not discrepancy.external_value
        return Direction.OUTBOUND if ours else Direction.INBOUND
    return Direction.OUTBOUND if action in (drift.PUSH, drift.MISSING) else Direction.INBOUND


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class Reconciler:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        integration: Mapping[str, Any],
        connector: Connector,
        options: Options,
        report: Report,
    ) -> None:
        self.db = db
        self.clock = clock
        self.integration = integration
        self.connector = connector
        self.options = options
        self.report = report
        self._sleep: Callable[[float], None] = time.sleep
        self._progress: Progress = lambda advance: None
        self._stop: Callable[[], bool] = lambda: False
        self.direction = Direction(integration["direction"])
        table = mapping.mappings(
            integration["type"],
            integration["settings"],
            integration_rows.overrides(db, integration["id"]),
        )
        # description is create-only on PagerDuty: drift ignores what cannot be updated
        self.fields = [
            name
            for name, fm in table.items()
            if fm.synced and name not in JOURNAL_FIELDS and not fm.create_only
        ]
        self.journals = [
            name for name, fm in table.items() if fm.synced and name in connector.journals
        ]
        self.rules = integration_rows.rules(db, integration["id"])
        self.install_id = meta.get(db, "install_id")
        cutoff = options.backfill_since or parse_time(integration["created_at"])
        self.cutoff = cutoff
        self.source = external.source(integration)

    # -- the walk ---------------------------------------------------------------------------

    def run(
        self,
        *,
        sleep: Callable[[float], None] | None = None,
        progress: Progress | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Walk everything; ``stop`` is asked between pages (a daemon shutting down)."""
        if sleep is not None:
            self._sleep = sleep
        if progress is not None:
            self._progress = progress
        db = self.db
        db.execute("CREATE TEMP TABLE IF NOT EXISTS reconcile_seen (link_id INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM temp.reconcile_seen")
        self._stop = stop or (lambda: False)
        try:
            for page in _chunks(self._listing(), BATCH):
                self._page(page)
                self._check_stop()
            self._unseen()
        finally:
            db.execute("DELETE FROM temp.reconcile_seen")

    def _check_stop(self) -> None:
        if self._stop():
            raise ImError("stopped before the end: the daemon is shutting down")

    def _listing(self) -> Iterator[ExternalRecord]:
        """The scope in creation order. A page that fails retryably (a 429, a 5xx) is asked
        for again, from the last creation time seen, skipping what was already seen."""
        since = self.cutoff
        last, at_last = "", set[str]()
        for wait in (*RETRY_WAITS, None):
            try:
                for record in self.connector.list_in_scope(created_since=since):
                    if (
                        last
                        and record.created_at
                        and (
                            record.created_at < last
                            or (record.created_at == last and record.id in at_last)
                        )
                    ):
                        continue  # seen before the failure (or earlier than asked for)
                    if record.created_at != last:
                        last, at_last = record.created_at, set()
                    at_last.add(record.id)
                    yield record
                return
            except (RateLimitedError, RetryableError) as exc:
                if wait is None:
                    raise
                told = exc.retry_after if isinstance(exc, RateLimitedError) else wait
                self._sleep(min(max(told, wait), MAX_WAIT))
                if last:
                    since = max(since, parse_time(last))

    def _page(self, records: list[ExternalRecord]) -> None:
        known = links.by_externals(self.db, self.integration["id"], [r.id for r in records])
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO temp.reconcile_seen (link_id) VALUES (?)",
            [(link["id"],) for link in known.values()],
        )
        linked: list[tuple[ExternalRecord, dict[str, Any]]] = []
        for listed in records:
            if listed.id in known:
                record = self._fresh(listed, known[listed.id])
                if record is not None:
                    linked.append((record, known[listed.id]))
        entries = self._journals([r for r, _ in linked])
        for record, link in linked:
            self._linked(link, record, entries.get(record.id))
        for record in records:
            if record.id not in known:
                self._unlinked(record)
        self._progress(len(linked))  # the bar counts links

    def _fresh(self, record: ExternalRecord, link: Mapping[str, Any]) -> ExternalRecord | None:
        """The listed record, or the record read again when the listing is older than what
        was synced (Jira's search index lags its writes): judging a stale copy would undo a
        change. None when it cannot be read (counted as an error) or is gone."""
        synced = snapshots.newest_version(self.db, self.integration["id"], link["incident_id"])
        if synced is None or not record.version or not _older(record.version, synced):
            return record
        try:
            return self._read(self.connector.get, record.id)
        except RecordNotFoundError:
            self._missing(link)
        except AuthError:
            raise
        except ConnectorError as exc:
            self._error(f"{record.key}: {exc}")
        return None

    def _unseen(self) -> None:
        """Links the listing did not show: created before the cut-off (still reconciled), out
        of scope now (reported, never touched: SPEC 3), or gone."""
        after = 0
        while True:
            batch = list(
                self.db.query(
                    "SELECT * FROM links WHERE integration_id = ? AND id > ? AND id NOT IN "
                    "(SELECT link_id FROM temp.reconcile_seen) ORDER BY id LIMIT ?",
                    [self.integration["id"], after, BATCH],
                )
            )
            if not batch:
                return
            self._check_stop()
            after = batch[-1]["id"]
            found: list[tuple[ExternalRecord, dict[str, Any]]] = []
            for link in batch:
                try:
                    found.append((self._read(self.connector.get, link["external_id"]), link))
                except RecordNotFoundError:
                    self._missing(link)
                except AuthError:
                    raise  # every other read would fail the same way
                except ConnectorError as exc:
                    self._error(f"{link['external_key'] or link['external_id']}: {exc}")
            try:
                scoped = self._read(self.connector.in_scope, [r.id for r, _ in found])
            except AuthError:
                raise
            except ConnectorError as exc:
                for record, _ in found:
                    self._error(f"{record.key}: cannot tell whether it is in scope: {exc}")
                found, scoped = [], set()
            for record, link in found:
                if record.id not in scoped:
                    self._out_of_scope(link, record)
            found = [(record, link) for record, link in found if record.id in scoped]
            entries = self._journals([r for r, _ in found])
            for record, link in found:
                self._linked(link, record, entries.get(record.id))
            self._progress(len(batch))  # missing ones included

    def _read(self, call: Callable[..., T], *args: Any) -> T:
        """A read, tried again after a retryable failure or a rate limit (waiting as told)."""
        for wait in (*RETRY_WAITS, None):
            try:
                return call(*args)
            except RateLimitedError as exc:
                if wait is None:
                    raise
                self._sleep(min(max(exc.retry_after, wait), MAX_WAIT))
            except RetryableError:
                if wait is None:
                    raise
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _journals(self, records: list[ExternalRecord]) -> dict[str, list[JournalEntry]]:
        """The journal of each record: what its read brought along, else one batch read."""
        if not self.journals or not records:
            return {}
        known = {r.id: list(r.journal) for r in records if r.journal is not None}
        missing = [r.id for r in records if r.journal is None]
        if not missing:
            return known
        try:
            return {**known, **self._read(self.connector.list_journals, missing)}
        except AuthError:
            raise
        except ConnectorError as exc:
            self._error(f"journals of {len(missing)} records: {exc}")
            return known

    def _error(self, line: str) -> None:
        self.report.error_count += 1
        if len(self.report.errors) < MAX_ERROR_LINES:
            self.report.errors.append(" ".join(line.split())[:300])

    def _found(self, discrepancy: Discrepancy) -> None:
        self.report.discrepancies.append(discrepancy)
        with telemetry.span(
            "sync.reconcile.item",
            self.integration,
            _item_direction(discrepancy, self.direction),
            discrepancy.action,
            incident_id=discrepancy.view()["incident_id"],
            external_id=discrepancy.external_id,
            field=discrepancy.field,
        ):
            pass  # a record of what was found; the heal is the run's (and the outbox's) work

    # -- one linked record --------------------------------------------------------------------

    def _linked(
        self,
        link: Mapping[str, Any],
        record: ExternalRecord,
        entries: list[JournalEntry] | None,
    ) -> None:
        incident = incident_rows.get(self.db, link["incident_id"])
        if incident is None:
            return
        self.report.checked += 1
        for found in self._decisions(incident, record):
            self._found(
                Discrepancy(
                    incident.id, record.id, record.key, found.field,
                    incident.value(found.field), record.fields.get(found.field, ""),
                    found.snapshot, found.decision.action, found.decision.reason,
                )
            )  # fmt: skip
        journal = self._journal_diff(incident.id, link, entries) if entries is not None else None
        if journal is not None:
            for entry in journal.external_only:
                decision = self._journal_in(entry.field)
                if decision is not None:
                    self._found(
                        Discrepancy(
                            incident.id, record.id, record.key, entry.field, "", entry.body,
                            None, decision.action, decision.reason,
                        )
                    )  # fmt: skip
            for mine in journal.platform_only:
                decision = self._journal_out(mine.kind)
                if decision is not None:
                    self._found(
                        Discrepancy(
                            incident.id, record.id, record.key, mine.kind, mine.body, "",
                            None, decision.action, decision.reason,
                        )
                    )  # fmt: skip
        if self.options.auto_heal:
            self._heal(incident.id, link, record, entries)

    def _decisions(self, incident: Incident, record: ExternalRecord) -> list[Found]:
        """Each field that differs, with what to do and its snapshot value."""
        known = snapshots.for_pair(self.db, self.integration["id"], incident.id)
        held = {
            name: conflict_rows.pending_for(self.db, incident.id, self.integration["id"], name)
            for name in conflict_rows.held_fields(self.db, incident.id, self.integration["id"])
        }
        in_flight = self._in_flight(incident.id)
        found: list[Found] = []
        for name in self.fields:
            if name not in record.fields:
                continue  # not readable there
            snapshot = known.get(name)
            platform = self.connector.normalise(name, incident.value(name))
            theirs = record.fields[name]
            if name in in_flight and (snapshot is None or theirs == snapshot.value):
                continue  # already on its way, and nothing changed there to meet it
            # In flight, but changed there too: the send will leave that value in place for
            # its event (SPEC §4), which may never come (lost, or a change the vendor sends
            # no event for): decided here, or nothing ever decides it.
            if platform == theirs:
                continue
            pending = held.get(name)
            state = drift.FieldState(
                field=name,
                platform=platform,
                external=theirs,
                snapshot=snapshot.value if snapshot else None,
                direction=self.direction,
                owner=self.rules[name].owner if name in self.rules else None,
                shadowed_by=self._authoritative(name),
                held_by=pending["id"] if pending else None,
                accepted=self._accepted(incident.id, name, platform, theirs),
            )
            decision = drift.decide_field(state)
            if decision is None:
                continue
            concurrent = None
            if decision.action == drift.CONCURRENT:
                decision, concurrent = self._concurrent(incident, record, name)
            if decision.action == drift.PULL:
                problem = _refusal(incident, name, theirs)
                if problem:  # reported every run until a person settles it; not an error
                    decision = drift.Decision(drift.REFUSED, f"cannot be applied: {problem}")
                    concurrent = None
            found.append(Found(name, decision, state.snapshot, concurrent))
        return found

    def _in_flight(self, incident_id: int) -> set[str]:
        """Fields waiting in (or being sent from) the outbox to this integration."""
        return {
            name
            for row in outbox_rows.for_incident(self.db, incident_id)
            if row["integration_id"] == self.integration["id"]
            for name in row["fields"]
        }

    def _authoritative(self, name: str) -> str | None:
        """Among the integrations that own the field as external, the highest priority one
        (ties: the oldest) decides in reconciliation. None when it is this integration (or
        nobody else claims the field), else the name of the one that decides."""
        owners: list[tuple[conflicts.Claim, str]] = []
        for claim in conflicts.claims(self.db, name):
            if claim.owner is not Owner.EXTERNAL:
                continue
            row = integration_rows.find(self.db, str(claim.integration_id))
            # only an owner that can pull decides: a disabled or outbound-only one cannot
            if row is not None and row["enabled"] and Direction(row["direction"]).receives:
                owners.append((claim, row["name"]))
        if not owners:
            return None
        top, top_name = max(owners, key=lambda o: (o[0].priority, -o[0].integration_id))
        return None if top.integration_id == self.integration["id"] else top_name

    def _accepted(self, incident_id: int, name: str, platform: str, theirs: str) -> bool:
        """An ignored conflict accepted this divergence; either side changing the field
        again ends it."""
        latest = conflict_rows.latest_for(self.db, incident_id, self.integration["id"], name)
        if latest is None or latest["status"] != "ignored":
            return False
        normalise = self.connector.normalise
        return (
            normalise(name, latest["platform_value"]) == platform
            and latest["external_value"] == theirs
        )

    def _concurrent(
        self, incident: Incident, record: ExternalRecord, name: str
    ) -> tuple[drift.Decision, Concurrent]:
        """Both sides changed the field and the event never came: the conflict rules decide
        with the platform change's time and the record's update time."""
        platform = conflicts.platform_edit(self.db, incident, name, self.source)
        # The record's update time is only the latest the edit can have been made: any
        # later edit of another field moves it. The dispatcher, when it left this value in
        # place, saw an earlier one.
        seen = snapshots.sighting(self.db, self.integration["id"], incident.id, name)
        at = seen.version if seen is not None and seen.value == record.fields[name] else None
        at = at or record.updated_at
        theirs = conflicts.Edit(
            record.fields[name],
            parse_time(at) if at else self.clock.now(),
            record.updated_by,
        )
        verdict = conflicts.judge(self.db, self.integration, name, platform, theirs)
        if verdict.winner is None:
            decision = drift.Decision(drift.CONFLICT, f"both sides changed it: {verdict.reason}")
        elif verdict.winner == conflicts.PLATFORM:
            decision = drift.Decision(drift.PUSH, f"both sides changed it: {verdict.reason}")
        else:
            decision = drift.Decision(drift.PULL, f"both sides changed it: {verdict.reason}")
        return decision, Concurrent(verdict, platform, theirs)

    # -- journals ---------------------------------------------------------------------------

    def _journal_diff(
        self, incident_id: int, link: Mapping[str, Any], entries: list[JournalEntry]
    ) -> drift.JournalDiff:
        integration_id = self.integration["id"]
        linked_vendor = snapshots.vendor_ids(self.db, integration_id, incident_id)
        # everything of the incident's journal since it was first meant for the integration
        since = self.db.execute(
            "SELECT min(created_at) FROM outbox WHERE incident_id = ? AND integration_id = ?",
            [incident_id, integration_id],
        ).fetchone()[0]
        since = min(since or link["created_at"], link["created_at"])
        in_flight = {
            entry
            for row in outbox_rows.for_incident(self.db, incident_id)
            if row["integration_id"] == integration_id
            for entry in row["journal"]
        }
        unlinked = [
            drift.PlatformEntry(row[0], row[1], row[2])
            for row in self.db.execute(
                "SELECT j.id, j.kind, j.body FROM journal_entries j WHERE j.incident_id = ? "
                "AND j.source != ? AND NOT EXISTS (SELECT 1 FROM journal_links l "
                "WHERE l.journal_entry_id = j.id AND l.integration_id = ?) "
                "AND (j.created_at >= ? OR j.id IN (SELECT value FROM json_each(?))) "
                "ORDER BY j.id",
                [incident_id, self.source, integration_id, since, json.dumps(sorted(in_flight))],
            )
            if row[1] in self.journals
        ]
        theirs = [e for e in entries if e.vendor_id not in linked_vendor]
        return drift.diff_journal(
            [e for e in unlinked if e.id not in in_flight],
            theirs,
            self.connector.normalise,
            sending=[e for e in unlinked if e.id in in_flight],
        )

    def _journal_in(self, kind: str) -> drift.Decision | None:
        """An external entry the platform does not have."""
        if not self.direction.receives:
            return drift.Decision(
                drift.BLOCKED, "missing on the platform, but the integration is outbound only"
            )
        if external.accepts_journal(self.db, self.integration, kind):
            return drift.Decision(drift.APPEND_JOURNAL, "missing on the platform")
        return None  # the platform owns that journal: its entries are not taken

    def _journal_out(self, kind: str) -> drift.Decision | None:
        """A platform entry the external record does not have."""
        if not self.direction.sends:
            return drift.Decision(
                drift.BLOCKED, "missing in the external record, but the integration is inbound only"
            )
        if ownership.pushes(self.direction, self.rules.get(kind)):
            return drift.Decision(drift.APPEND_JOURNAL, "missing in the external record")
        return None

    # -- healing ----------------------------------------------------------------------------

    def _heal(
        self,
        incident_id: int,
        link: Mapping[str, Any],
        record: ExternalRecord,
        entries: list[JournalEntry] | None,
    ) -> None:
        """Make one incident agree, deciding again on what the database holds now."""
        integration_id = self.integration["id"]
        now = format_time(self.clock.now())
        with write(self.db):
            incident = incident_rows.get(self.db, incident_id)
            current = links.find(self.db, incident_id, integration_id)
            if incident is None or current is None or current["external_id"] != record.id:
                return
            if current["state"] != "linked":
                links.restore(self.db, current["id"])  # it answered: it is not gone
            known = snapshots.for_pair(self.db, integration_id, incident_id)
            stale = {
                name
                for name, snap in known.items()
                if snap.version and record.version and _older(record.version, snap.version)
            }
            for found in self._decisions(incident, record):
                if found.field in stale or found.decision.action not in HEALS:
                    continue  # a newer change arrived during the run: it is handled
                self._apply(incident, record, found)
            self._agreed(incident_id, record, known, stale)
            if entries is not None:
                journal = self._journal_diff(incident_id, current, entries)
                self._heal_journal(incident_id, journal, now)

    def _apply(self, incident: Incident, record: ExternalRecord, found: Found) -> None:
        integration = self.integration
        now = format_time(self.clock.now())
        name = found.field
        theirs = record.fields[name]
        action = found.decision.action
        concurrent = found.concurrent
        if concurrent is not None and concurrent.verdict.detected:
            conflicts.record(
                self.db, incident.id, integration, name, concurrent.platform,
                concurrent.external, record.version, concurrent.verdict, now,
            )  # fmt: skip
        if action == drift.CONFLICT:
            return  # held for a person: nothing is healed yet
        if action == drift.PUSH:
            conflicts.push_platform_value(
                self.db, incident.id, integration, name, theirs, record.version, now
            )
            self.report.queued += 1
        elif action == drift.PULL:
            try:
                incidents.update(
                    self.db, self.clock, record.updated_by or self.source, str(incident.id),
                    {name: theirs}, self.source, integration["id"],
                )  # fmt: skip
            except ImError as exc:
                self._error(f"{incident.display_id} {name}: {exc}")
                return
            snapshots.put(
                self.db, integration["id"], incident.id, {name: theirs}, record.version, now
            )
        self.report.healed += 1

    def _agreed(
        self,
        incident_id: int,
        record: ExternalRecord,
        known: Mapping[str, snapshots.Snapshot],
        stale: set[str],
    ) -> None:
        """Fields that agree become the snapshot (a lost acknowledgement, or both sides made
        the same change), so the next change of either side is judged against it."""
        incident = incident_rows.get(self.db, incident_id)
        assert incident is not None
        agreed = {
            name: record.fields[name]
            for name in self.fields
            if name in record.fields
            and name not in stale
            and self.connector.normalise(name, incident.value(name)) == record.fields[name]
            and (name not in known or known[name].value != record.fields[name])
        }
        if agreed:
            snapshots.put(
                self.db, self.integration["id"], incident_id, agreed, record.version,
                format_time(self.clock.now()),
            )  # fmt: skip

    def _heal_journal(self, incident_id: int, journal: drift.JournalDiff, now: str) -> None:
        integration_id = self.integration["id"]
        for entry_id, vendor_id in journal.matched:
            snapshots.link_entry(self.db, integration_id, entry_id, vendor_id, now)
        for entry in journal.external_only:
            decision = self._journal_in(entry.field)
            if decision is None or decision.action != drift.APPEND_JOURNAL:
                continue
            if snapshots.vendor_linked(self.db, integration_id, entry.vendor_id):
                continue  # its webhook appended it during the run
            if external.append_entry(self.db, self.clock, self.integration, incident_id, entry):
                self.report.healed += 1
        outgoing = [
            mine.id
            for mine in journal.platform_only
            if self.direction.sends and ownership.pushes(self.direction, self.rules.get(mine.kind))
        ]
        still = [
            entry_id
            for entry_id in outgoing
            if not snapshots.linked_entries(self.db, integration_id, [entry_id])
        ]
        if still:
            incident = incident_rows.get(self.db, incident_id)
            assert incident is not None
            outbound.queue_fields(self.db, incident, integration_id, {}, now, journal=still)
            self.report.healed += len(still)
            self.report.queued += len(still)

    # -- records without a counterpart -------------------------------------------------------

    def _missing(self, link: Mapping[str, Any]) -> None:
        """The linked record is gone (404)."""
        # One 404 is not proof (Jira also answers 404 for an issue the account may no
        # longer see): a record is re-created only once an earlier run or send found it gone
        # and marked the link broken.
        confirmed = link["state"] == "broken"
        recreate = self.options.recreate_missing and self.direction.sends and confirmed
        if not self.direction.sends and self.options.recreate_missing:
            reason = "gone; cannot be re-created: the integration is inbound only"
        elif recreate:
            reason = "gone; re-created" if self.options.auto_heal else "gone; would be re-created"
        elif self.options.recreate_missing:
            reason = (
                "gone (first seen now: marked broken; a later run with --recreate-missing "
                "re-creates it if it is still gone)"
            )
        else:
            reason = "gone; re-create it with --recreate-missing"
        self.report.checked += 1
        self._found(
            Discrepancy(
                link["incident_id"], link["external_id"], link["external_key"] or "", "",
                "", "", None, drift.MISSING, reason,
            )
        )  # fmt: skip
        if not self.options.auto_heal:
            return
        now = format_time(self.clock.now())
        with write(self.db):
            current = links.find(self.db, link["incident_id"], self.integration["id"])
            if current is None or current["external_id"] != link["external_id"]:
                return
            if not recreate:
                links.mark_broken(self.db, link["incident_id"], self.integration["id"])
                return
            links.forget(self.db, link["incident_id"], self.integration["id"])
            incident = incident_rows.get(self.db, link["incident_id"])
            if incident is None:
                return
            entries = [(e["id"], e["kind"]) for e in incident_rows.journal(self.db, incident.id)]
            changed = [name for name in self.fields if incident.value(name)]
            outbound.enqueue(
                self.db, incident, changed, entries, now, only_integration=self.integration["id"]
            )
            self.report.healed += 1
            self.report.queued += 1

    def _out_of_scope(self, link: Mapping[str, Any], record: ExternalRecord) -> None:
        """A linked record that left the integration's scope: reported, never touched."""
        self.report.checked += 1
        self._found(
            Discrepancy(
                link["incident_id"], record.id, record.key, "", "", "", None,
                drift.OUT_OF_SCOPE,
                "no longer in the integration's scope (another group, project or service): "
                "left alone",
            )
        )  # fmt: skip

    def _unlinked(self, record: ExternalRecord) -> None:
        """An in-scope record with no link: ours whose link was lost, a second record of
        ours, or a record people made there."""
        ours = outbound.keyed_incident(record.correlation_key, self.install_id)
        if ours is not None:
            self._ours_unlinked(ours, record)
            return
        if not record.created_at or parse_time(record.created_at) < self.cutoff:
            return  # older than the integration (or --backfill): not ours to take
        self.report.checked += 1
        if self.direction.receives:
            decision = drift.Decision(drift.CREATE_PLATFORM, "an in-scope record with no incident")
        else:
            decision = drift.Decision(
                drift.BLOCKED,
                "an in-scope record with no incident; the integration is outbound only",
            )
        self._found(
            Discrepancy(
                None, record.id, record.key, "", "", record.fields.get("title", ""), None,
                decision.action, decision.reason,
            )
        )  # fmt: skip
        if not self.options.auto_heal or decision.action != drift.CREATE_PLATFORM:
            return
        entries: list[JournalEntry] = []
        if self.journals:
            try:
                entries = self._read(self.connector.list_journal, record.id)
            except ConnectorError as exc:
                self._error(f"{record.key}: {exc}")
                return
        with write(self.db):
            if links.by_external(self.db, self.integration["id"], record.id) is not None:
                return  # its webhook made the incident meanwhile
            made = external.adopt(
                self.db, self.clock, self.integration, record.id, record.key, record.fields,
                record.version, record.updated_by, entries,
            )  # fmt: skip
            if made is not None:
                self.report.healed += 1

    def _ours_unlinked(self, incident_id: int, record: ExternalRecord) -> None:
        integration_id = self.integration["id"]
        if incident_rows.get(self.db, incident_id) is None:
            return  # the incident was deleted here
        link = links.find(self.db, incident_id, integration_id)
        if link is None and outbox_rows.live_create_exists(self.db, incident_id, integration_id):
            return  # its create is being sent: the dispatcher links it
        if link is not None and link["external_id"] == record.id:
            return  # linked by the dispatcher since the page was read: the next run checks it
        self.report.checked += 1
        if link is not None:
            self._found(
                Discrepancy(
                    incident_id, record.id, record.key, "", "", "", None, drift.DUPLICATE,
                    f"a second record for the incident, which is linked to "
                    f"{link['external_key'] or link['external_id']}; resolve one by hand",
                )
            )  # fmt: skip
            return
        self._found(
            Discrepancy(
                incident_id, record.id, record.key, "", "", "", None, drift.LINK,
                "our record, whose link was lost",
            )
        )  # fmt: skip
        if not self.options.auto_heal:
            return
        with write(self.db):
            if links.find(self.db, incident_id, integration_id) is None:
                links.create(
                    self.db, incident_id, integration_id, record.id, record.key,
                    format_time(self.clock.now()),
                )  # fmt: skip
                self.report.healed += 1


def history(db: Database, integration: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """Runs, newest first, as `reconcile history` shows them."""
    views = []
    for row in runs.history(db, integration["id"], limit):
        duration = None
        if row["finished_at"]:
            seconds = (
                parse_time(row["finished_at"]) - parse_time(row["started_at"])
            ).total_seconds()
            duration = round(seconds, 3)
        views.append(
            {
                "run_id": f"run-{row['id']}",
                "started_at": row["started_at"],
                "duration_seconds": duration,
                "trigger": row["trigger"],
                "mode": row["mode"],
                "state": row["state"],
                "checked": row["checked"],
                "discrepancies": row["discrepancies"],
                "healed": row["healed"],
                "unresolved": row["unresolved"],
                "errors": row["errors"],
                "error": row["error"] or "",
            }
        )
    return views
