"""Scheduled reconciliation (SPEC §7): one schedule per integration, kept in the database, so
the CLI, the API and the daemon share it and a change needs no restart. The daemon ticks
``ScheduleRunner`` every second: a due schedule is moved to its next time in the same
transaction that claims it, then run on a worker thread with its own database connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time, parse_time
from im.config.connection import TransportFor
from im.config.integrations import parse_duration
from im.errors import ImError, InProgressError, NotFoundError, UsageError, ValidationError
from im.store import integrations as integration_rows
from im.store import open_database
from im.store import reconcile as rows
from im.store.db import write
from im.sync import reconcile

MIN_INTERVAL = 30.0
MAX_INTERVAL = 30 * 86400.0
_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_interval(text: str) -> int:
    """``30s``, ``15m``, ``1h``, ``1d`` -> whole seconds (at least 30)."""
    try:
        seconds = parse_duration(text, "interval", MIN_INTERVAL, MAX_INTERVAL)
    except ValidationError:
        raise ValidationError(
            f"interval {text[:40]!r} is not valid",
            "give 30s, 15m, 1h or 1d: at least 30s, at most 30d",
        ) from None
    return round(seconds)


def format_interval(seconds: int) -> str:
    for unit, size in _UNITS:
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def view(row: Mapping[str, Any], integration: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "integration": integration["name"],
        "interval": format_interval(row["interval_seconds"]),
        "interval_seconds": row["interval_seconds"],
        "auto_heal": bool(row["auto_heal"]),
        "enabled": bool(row["enabled"]),
        "next_run_at": row["next_run_at"] if row["enabled"] else None,
        "updated_at": row["updated_at"],
        "updated_by": row["updated_by"],
    }


def get(db: Database, integration: Mapping[str, Any]) -> dict[str, Any]:
    row = rows.schedule(db, integration["id"])
    if row is None:
        raise NotFoundError(
            f"{integration['name']} has no reconcile schedule",
            f"create one with `im integration reconcile schedule {integration['name']} "
            "--interval 1h`",
        )
    return view(row, integration)


def put(
    db: Database,
    clock: Clock,
    actor: str,
    integration: Mapping[str, Any],
    interval: str | None = None,
    auto_heal: bool | None = None,
    enabled: bool | None = None,
) -> dict[str, Any]:
    """Create or change the integration's schedule; only what is given changes. A new,
    re-enabled or re-timed schedule is due at once (the daemon starts it within seconds),
    then every interval."""
    seconds = parse_interval(interval) if interval is not None else None
    now = clock.now()
    with write(db):
        current = rows.schedule(db, integration["id"])
        fresh = current is None
        if current is None:
            if seconds is None:
                raise UsageError(
                    f"{integration['name']} has no reconcile schedule yet: give its interval",
                    "e.g. --interval 1h (30s, 15m, 1h, 1d; at least 30s)",
                )
            current = {"interval_seconds": seconds, "auto_heal": 0, "enabled": 1}
        every = seconds if seconds is not None else int(current["interval_seconds"])
        on = bool(current["enabled"]) if enabled is None else enabled
        heal = bool(current["auto_heal"]) if auto_heal is None else auto_heal
        restart = fresh or seconds is not None or (on and not current["enabled"])
        rows.put_schedule(
            db,
            {
                "integration_id": integration["id"],
                "interval_seconds": every,
                "auto_heal": int(heal),
                "enabled": int(on),
                # a new, re-enabled or changed schedule runs at once, then every interval:
                # its first run shows it works
                "next_run_at": format_time(now) if restart else current["next_run_at"],
                "updated_at": format_time(now),
                "updated_by": actor,
            },
        )
        return get(db, integration)


Log = Callable[[str, dict[str, Any]], None]


class ScheduleRunner:
    """Runs due schedules on worker threads; a schedule whose run is still going (here or
    from cron) is skipped and tried at its next time."""

    def __init__(
        self,
        db_path: Path,
        clock: Clock,
        *,
        log: Log | None = None,
        transport_for: TransportFor | None = None,
        workers: int = 2,
    ) -> None:
        self.db_path = db_path
        self.clock = clock
        self._log = log or (lambda event, values: None)
        self._transport_for = transport_for
        self._db = open_database(db_path)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="im-reconcile")
        self._running: dict[int, Future[None]] = {}
        self._stopping = threading.Event()

    def tick(self) -> list[Future[None]]:
        """Start the runs that are due now. Returns their futures (tests wait on them)."""
        if self._stopping.is_set():
            return []
        now = self.clock.now()
        started: list[Future[None]] = []
        if not rows.due_schedules(self._db, format_time(now)):
            return started  # read first: an idle tick takes no write lock
        with write(self._db):
            due = rows.due_schedules(self._db, format_time(now))
            for schedule in due:
                every = timedelta(seconds=schedule["interval_seconds"])
                # the next time is counted from now: a daemon that was down runs once, not
                # once per missed interval
                later = max(parse_time(schedule["next_run_at"]) + every, now + every)
                rows.move_schedule(self._db, schedule["integration_id"], format_time(later))
        for schedule in due:
            integration_id = schedule["integration_id"]
            busy = self._running.get(integration_id)
            if busy is not None and not busy.done():
                self._log("reconcile.skipped", {"integration": schedule["integration"]})
                continue
            future = self._pool.submit(self._run, integration_id, bool(schedule["auto_heal"]))
            self._running[integration_id] = future
            started.append(future)
        return started

    def _run(self, integration_id: int, auto_heal: bool) -> None:
        db = open_database(self.db_path)
        try:
            integration = integration_rows.find(db, str(integration_id))
            if integration is None:
                return
            options = reconcile.Options(auto_heal=auto_heal, trigger="schedule")
            report = reconcile.run(
                db,
                self.clock,
                integration,
                options,
                transport_for=self._transport_for,
                stop=self._stopping.is_set,
            )
            self._log(
                "reconcile.finished",
                {
                    "integration": integration["name"],
                    "run": report.run_id,
                    "mode": report.mode,
                    "checked": report.checked,
                    "discrepancies": len(report.discrepancies),
                    "healed": report.healed,
                    "errors": report.error_count,
                    "failed": report.failed or "",
                },
            )
        except InProgressError as exc:
            self._log("reconcile.skipped", {"integration_id": integration_id, "why": exc.message})
        except ImError as exc:
            self._log("reconcile.error", {"integration_id": integration_id, "error": str(exc)})
        except Exception as exc:  # the scheduler thread must survive, and say what happened
            self._log(
                "reconcile.error",
                {"integration_id": integration_id, "error": type(exc).__name__},
            )
        finally:
            db.close()

    def stop(self) -> None:
        """Ask running reconciles to stop at their next page, and wait for them."""
        self._stopping.set()
        self._pool.shutdown(wait=True)
        self._db.close()
