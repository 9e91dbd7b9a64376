"""Rows of the audit log: every mutation (and how it ended) and every denial (SPEC §9).
Writers must be inside store.write()."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.store.db import insert_row

_COLUMNS = "id, at, principal, via, action, target, decision, reason, outcome, error"


def insert(db: Database, values: dict[str, Any]) -> int:
    return insert_row(db, "audit_log", values)


def finish(db: Database, entry_id: int, outcome: str, error: str | None) -> None:
    """Record how an allowed action ended: ``ok`` or ``failed`` with its error."""
    db.execute(
        "UPDATE audit_log SET outcome = ?, error = ? WHERE id = ? AND outcome IS NULL",
        [outcome, error, entry_id],
    )


def entries(
    db: Database,
    *,
    principal: str | None = None,
    action: str | None = None,
    denied_only: bool = False,
    since: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The newest ``limit`` entries matching the filters, oldest first."""
    where, params = [], []
    if principal is not None:
        where.append("principal = ?")
        params.append(principal)
    if action is not None:
        where.append("(action = ? OR action LIKE ?)")
        params += [action, f"{action}.%"]
    if denied_only:
        where.append("decision = 'deny'")
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = list(
        db.query(
            f"SELECT {_COLUMNS} FROM audit_log {clause} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
    )
    return rows[::-1]
