"""``GET /metrics``: the sync metrics of SPEC §8 in Prometheus text format.

Counters and gauges live in the database, written by every process (daemon, CLI, cron), so
they are read at scrape time on a connection of the scrape's own rather than kept in this
process. Propagation times are observed from the rows that finished since the last scrape
(the dispatcher and the applier stay unaware of metrics), into histograms that are cumulative
for the daemon's life. The first scrape after a (re)start observes nothing: it sets the
watermark at the newest row and tracks only the rows still open then, whose completion later
scrapes observe. What finished before it was observed by the previous daemon (Prometheus
sees the reset histogram start again), so taking it again would count it twice.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlite_utils import Database
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from im.api.errors import database_error, error_response, known_error
from im.clock import Clock, parse_time
from im.errors import ImError
from im.security import tokens
from im.store import integrations as integration_rows
from im.store import open_database, sync_state
from im.store.outbox import LIVE_STATES

COUNTERS = sync_state.GUIDE_METRICS + sync_state.OTHER_COUNTERS
# from a frozen clock's 0 to a retried send: 10 ms to 30 s, the rest in +Inf
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LABELS = ["integration", "type"]


@dataclass
class Finishing:
    """How one table's rows finish, and which of them a scrape has yet to see finish."""

    direction: str
    table: str
    start: str  # column: when the change began
    end: str  # column: when it was acknowledged / applied
    done: str  # the state that counts
    # states from which a row may still reach ``done``: an inbound event in the DLQ goes back
    # to 'received' when retried (an outbound one is retried as a new row)
    open: tuple[str, ...]
    after: int | None = None  # every row above this id is new; None before the first scrape
    waiting: set[int] = field(default_factory=set)  # older rows that were open when last seen

    def read(self, db: Database) -> tuple[list[float], int, set[int]]:
        """The durations of rows finished since the last scrape, and the next watermark and
        waiting set (kept only once the whole scrape succeeded). A bare id watermark would
        miss a row that finishes after a newer one, hence the rows still open below it. The
        first scrape (no watermark yet) only notes the rows still open: no backfill, since
        what finished before it was already observed by the daemon that ran then."""
        top = db.execute(f"SELECT coalesce(max(id), 0) FROM {self.table}").fetchone()[0]
        columns = f"id, state, {self.start}, {self.end} FROM {self.table}"
        if self.after is None:
            open_marks = ", ".join("?" for _ in self.open)
            rows = db.execute(
                f"SELECT {columns} WHERE id <= ? AND state IN ({open_marks})",
                [top, *self.open],
            ).fetchall()
        else:
            rows = db.execute(
                f"SELECT {columns} WHERE id <= ? AND (id > ? "
                "OR id IN (SELECT value FROM json_each(?)))",
                [top, self.after, f"[{','.join(map(str, self.waiting))}]"],
            ).fetchall()
        seconds, waiting = [], set()
        for row_id, state, start, end in rows:
            if state == self.done and start and end:
                seconds.append(max((parse_time(end) - parse_time(start)).total_seconds(), 0.0))
            elif state in self.open:
                waiting.add(row_id)
        return seconds, max(top, self.after or 0), waiting


class SyncCollector:
    """A prometheus_client collector over the database at ``db_path``."""

    def __init__(self, db_path: Path, clock: Clock) -> None:
        self._db_path = db_path
        self._clock = clock
        self._lock = threading.Lock()  # scrapes run on a thread pool; the watermarks are shared
        self._propagation = Histogram(
            "im_sync_propagation_seconds",
            "Commit to external acknowledgement (outbound); webhook received to applied (inbound)",
            ["direction"],
            registry=None,
            buckets=BUCKETS,
        )
        self._finishing = (
            Finishing("outbound", "outbox", "created_at", "done_at", "done", LIVE_STATES),
            Finishing(
                "inbound",
                "inbound_events",
                "received_at",
                "applied_at",
                "applied",
                ("received", "dead"),
            ),
        )
        for kind in self._finishing:
            self._propagation.labels(kind.direction)  # exported (as 0) before any traffic

    def collect(self) -> list[Metric]:
        """Read everything, then observe: a scrape that fails (busy, broken database) leaves
        the histograms and watermarks as they were. Raises ImError, sqlite3.Error."""
        with self._lock:
            now = self._clock.now()
            db = open_database(self._db_path)
            try:
                db.execute("BEGIN")  # one snapshot: counters, gauges and rows agree
                families = _families(db, now)
                finished = [kind.read(db) for kind in self._finishing]
            finally:
                db.close()
            for kind, (seconds, after, waiting) in zip(self._finishing, finished, strict=True):
                for value in seconds:
                    self._propagation.labels(kind.direction).observe(value)
                kind.after, kind.waiting = after, waiting
            return [*families, *self._propagation.collect()]


def _families(db: Database, now: datetime) -> list[Metric]:
    integrations = integration_rows.all_rows(db)
    counters = {
        name: CounterMetricFamily(
            f"im_sync_{name}_total",
            f"{name.replace('_', ' ')}, cumulative since the integration was created",
            labels=LABELS,
        )
        for name in COUNTERS
    }
    backlog = GaugeMetricFamily(
        "im_sync_backlog", "Outbox rows waiting or being sent", labels=LABELS
    )
    oldest = GaugeMetricFamily(
        "im_sync_backlog_oldest_seconds", "Age of the oldest waiting outbox row", labels=LABELS
    )
    dlq = GaugeMetricFamily("im_sync_dlq_size", "Open dead letter queue entries", labels=LABELS)
    marks = ", ".join("?" for _ in LIVE_STATES)
    waiting = _by_integration(
        db,
        f"SELECT integration_id, count(*), min(created_at) FROM outbox "
        f"WHERE state IN ({marks}) GROUP BY integration_id",
        LIVE_STATES,
    )
    dead = _by_integration(
        db,
        "SELECT integration_id, count(*) FROM dead_letters WHERE state = 'dead' "
        "GROUP BY integration_id",
    )
    for integration in integrations:
        labels = [integration["name"], integration["type"]]
        values = sync_state.counters(db, integration["id"])
        for name, family in counters.items():
            family.add_metric(labels, values.get(name, 0))
        count, first = waiting.get(integration["id"], (0, None))
        backlog.add_metric(labels, count)
        age = (now - parse_time(first)).total_seconds() if first else 0.0
        oldest.add_metric(labels, max(age, 0.0))
        dlq.add_metric(labels, dead.get(integration["id"], (0,))[0])
    return [*counters.values(), backlog, oldest, dlq]


def _by_integration(
    db: Database, sql: str, params: Iterable[Any] = ()
) -> dict[int, tuple[Any, ...]]:
    return {row[0]: tuple(row[1:]) for row in db.execute(sql, list(params)).fetchall()}


class MetricsEndpoint:
    """``GET /metrics``. Open on loopback (SPEC §11); elsewhere it needs an API token."""

    def __init__(self, db_path: Path, clock: Clock, loopback: bool) -> None:
        self._db_path = db_path
        self._clock = clock
        self._loopback = loopback
        self.collector = SyncCollector(db_path, clock)

    async def handle(self, request: Request) -> Response:
        try:
            if not self._loopback:
                await run_in_threadpool(self._authenticate, request.headers.get("authorization"))
            # SQLite blocks: keep it off the event loop that also receives webhooks
            body = await run_in_threadpool(generate_latest, self.collector)
        except ImError as exc:  # the API's answers: 401 for a token, 503 for the database
            return await known_error(request, exc)
        except sqlite3.Error as exc:
            return await database_error(request, exc)
        except Exception as exc:  # never a 500: say what kind of fault, nothing more
            return _internal(exc)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def _authenticate(self, authorization: str | None) -> None:
        """Raises AuthenticationError without a valid bearer token."""
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise tokens.AuthenticationError(
                "/metrics needs a bearer token when the daemon listens beyond loopback",
                tokens.HOW_TO_GET_ONE,
            )
        db = open_database(self._db_path)
        try:
            tokens.authenticate(db, self._clock, presented.strip())
        finally:
            db.close()


def _internal(exc: Exception) -> JSONResponse:
    return error_response(503, "internal", f"internal error ({type(exc).__name__})")
