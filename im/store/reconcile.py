"""Reconcile runs (history) and schedules (SPEC §7). Writers must be inside store.write()."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.store.db import insert_row


def start(db: Database, values: dict[str, Any]) -> int:
    return insert_row(db, "reconcile_runs", {**values, "state": "running"})


def finish(db: Database, run_id: int, values: dict[str, Any]) -> None:
    columns = ", ".join(f"{name} = ?" for name in values)
    db.execute(f"UPDATE reconcile_runs SET {columns} WHERE id = ?", [*values.values(), run_id])


def interrupted(db: Database, integration_id: int, at: str) -> int:
    """Close runs of the integration left ``running`` by a process that died (the caller
    holds the integration's reconcile lock, so none is really running)."""
    cursor = db.execute(
        "UPDATE reconcile_runs SET state = 'failed', finished_at = ?, "
        "error = 'interrupted: the process running it stopped' "
        "WHERE integration_id = ? AND state = 'running'",
        [at, integration_id],
    )
    return cursor.rowcount


def running(db: Database, integration_id: int) -> dict[str, Any] | None:
    rows = list(
        db.query(
            "SELECT * FROM reconcile_runs WHERE integration_id = ? AND state = 'running' "
            "ORDER BY id DESC LIMIT 1",
            [integration_id],
        )
    )
    return rows[0] if rows else None


def history(db: Database, integration_id: int, limit: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT * FROM reconcile_runs WHERE integration_id = ? ORDER BY id DESC LIMIT ?",
            [integration_id, limit],
        )
    )


def last(
    db: Database, integration_id: int, states: tuple[str, ...] = ("running", "done", "failed")
) -> dict[str, Any] | None:
    """The newest run in one of ``states``."""
    marks = ", ".join("?" for _ in states)
    rows = list(
        db.query(
            f"SELECT * FROM reconcile_runs WHERE integration_id = ? AND state IN ({marks}) "
            "ORDER BY id DESC LIMIT 1",
            [integration_id, *states],
        )
    )
    return rows[0] if rows else None


def schedule(db: Database, integration_id: int) -> dict[str, Any] | None:
    rows = list(
        db.query("SELECT * FROM reconcile_schedules WHERE integration_id = ?", [integration_id])
    )
    return rows[0] if rows else None


def put_schedule(db: Database, values: dict[str, Any]) -> None:
    db.table("reconcile_schedules").upsert(values, pk="integration_id")


def due_schedules(db: Database, now: str) -> list[dict[str, Any]]:
    """Enabled schedules of enabled integrations whose time has come (a disabled integration
    keeps its schedule and runs again once enabled)."""
    return list(
        db.query(
            "SELECT s.*, i.name AS integration FROM reconcile_schedules s "
            "JOIN integrations i ON i.id = s.integration_id "
            "WHERE s.enabled = 1 AND i.enabled = 1 AND s.next_run_at <= ? ORDER BY s.next_run_at",
            [now],
        )
    )


def move_schedule(db: Database, integration_id: int, next_run_at: str) -> None:
    db.execute(
        "UPDATE reconcile_schedules SET next_run_at = ? WHERE integration_id = ?",
        [next_run_at, integration_id],
    )
