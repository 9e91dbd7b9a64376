"""Rows of API tokens: only each token's SHA-256 and its first characters are stored, never
the token itself (SPEC §9). Writers must be inside store.write()."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.store.db import insert_row

_COLUMNS = "id, name, principal, prefix, created_at, created_by, last_used_at, revoked_at"


def insert(db: Database, values: dict[str, Any]) -> int:
    return insert_row(db, "api_tokens", values)


def by_hash(db: Database, token_hash: str) -> dict[str, Any] | None:
    """The token row whose hash is ``token_hash`` (hash included, for the constant-time
    comparison), or None."""
    rows = list(
        db.query(
            f"SELECT {_COLUMNS}, token_hash FROM api_tokens WHERE token_hash = ?", [token_hash]
        )
    )
    return rows[0] if rows else None


def get(db: Database, token_id: int) -> dict[str, Any] | None:
    rows = list(db.query(f"SELECT {_COLUMNS} FROM api_tokens WHERE id = ?", [token_id]))
    return rows[0] if rows else None


def by_name(db: Database, name: str) -> list[dict[str, Any]]:
    """Every token named ``name``, the live one (at most one) first, then the newest."""
    return list(
        db.query(
            f"SELECT {_COLUMNS} FROM api_tokens WHERE name = ? "
            "ORDER BY revoked_at IS NOT NULL, id DESC",
            [name],
        )
    )


def all_rows(db: Database) -> list[dict[str, Any]]:
    return list(db.query(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY id"))


def live_names(db: Database) -> list[str]:
    return [
        r["name"]
        for r in db.query("SELECT name FROM api_tokens WHERE revoked_at IS NULL ORDER BY name")
    ]


def revoke(db: Database, token_id: int, at: str) -> bool:
    """Mark the token revoked. False when it was revoked already."""
    cursor = db.execute(
        "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [at, token_id]
    )
    return cursor.rowcount == 1


def touch(db: Database, token_id: int, at: str, unless_after: str) -> None:
    """Record a use at ``at`` unless one was recorded after ``unless_after`` already."""
    db.execute(
        "UPDATE api_tokens SET last_used_at = ? "
        "WHERE id = ? AND (last_used_at IS NULL OR last_used_at <= ?)",
        [at, token_id, unless_after],
    )
