"""Per-integration sync state: pauses (rate limit, failing credentials), client-side pacing,
the last outcome of each kind, and the cumulative counters of SPEC §8. Writers must be inside
store.write()."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.store.integrations import CREDENTIAL_SECRETS

RATE_LIMITED = "rate-limited"
AUTH_FAILING = "auth-failing"

# SPEC §8's counters: the guide's seven metrics by exactly the guide's names, then the others
GUIDE_METRICS = (
    "outbound_success",
    "outbound_failed",
    "inbound_success",
    "inbound_failed",
    "conflicts_detected",
    "conflicts_resolved",
    "drift_discrepancies",
)
OTHER_COUNTERS = (
    "inbound_ignored",
    "inbound_echo",
    "inbound_duplicate",
    "conflicts_manually_resolved",
)


def get(db: Database, integration_id: int) -> dict[str, Any]:
    rows = list(
        db.query("SELECT * FROM integration_state WHERE integration_id = ?", [integration_id])
    )
    return rows[0] if rows else {"integration_id": integration_id}


def _put(db: Database, integration_id: int, values: dict[str, Any]) -> None:
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    updates = ", ".join(f"{c} = excluded.{c}" for c in values)
    db.execute(
        f"INSERT INTO integration_state (integration_id, {columns}) VALUES (?, {marks}) "
        f"ON CONFLICT (integration_id) DO UPDATE SET {updates}",
        [integration_id, *values.values()],
    )


def pause(
    db: Database, integration_id: int, reason: str, at: str, until: str | None, error: str
) -> None:
    """Stop sending for the integration: until a time (rate limit) or, with ``until`` None,
    until its credentials change or a test passes (auth)."""
    _put(
        db,
        integration_id,
        {
            "pause_reason": reason,
            "paused_at": at,
            "paused_until": until,
            "last_failure_at": at,
            "last_error": error,
        },
    )


def resume(db: Database, integration_id: int) -> bool:
    """Lift a pause. Returns whether there was one."""
    cursor = db.execute(
        "UPDATE integration_state SET pause_reason = NULL, paused_at = NULL, "
        "paused_until = NULL WHERE integration_id = ? AND pause_reason IS NOT NULL",
        [integration_id],
    )
    return cursor.rowcount > 0


def pace(db: Database, integration_id: int, next_send_at: str) -> None:
    _put(db, integration_id, {"next_send_at": next_send_at})


def succeeded(db: Database, integration_id: int, at: str) -> None:
    _put(db, integration_id, {"last_success_at": at})


def failed(db: Database, integration_id: int, at: str, error: str) -> None:
    _put(db, integration_id, {"last_failure_at": at, "last_error": error})


def count(db: Database, integration_id: int, name: str, by: int = 1) -> None:
    """Add to a counter, in the caller's transaction."""
    db.execute(
        "INSERT INTO counters (integration_id, name, value) VALUES (?, ?, ?) "
        "ON CONFLICT (integration_id, name) DO UPDATE SET value = value + excluded.value",
        [integration_id, name, by],
    )


def counters(db: Database, integration_id: int) -> dict[str, int]:
    return {
        row["name"]: row["value"]
        for row in db.query(
            "SELECT name, value FROM counters WHERE integration_id = ?", [integration_id]
        )
    }


def credentials_changed_at(db: Database, integration_id: int) -> str:
    """When the integration's credentials last changed ("" when it has none)."""
    row = db.execute(
        "SELECT max(updated_at) FROM integration_secrets "
        f"WHERE integration_id = ? AND {CREDENTIAL_SECRETS}",
        [integration_id],
    ).fetchone()
    return str(row[0]) if row and row[0] else ""


def pause_in_force(db: Database, integration_id: int, now: str) -> dict[str, Any] | None:
    """The integration's state while a pause holds, as the dispatcher judges it (outbox.due):
    a rate limit until its time; refused credentials until new ones are set after the pause
    began (or `im integration test` passes and lifts it). None when sending may go on."""
    state = get(db, integration_id)
    reason = state.get("pause_reason")
    if reason == RATE_LIMITED:
        return state if (state.get("paused_until") or "") > now else None
    if reason == AUTH_FAILING:
        paused_at = state.get("paused_at") or ""
        return state if credentials_changed_at(db, integration_id) <= paused_at else None
    return None


def rejected(db: Database, integration_id: int, at: str, reason: str) -> None:
    """A delivery refused at the door (not authentic, malformed): it leaves no event row."""
    _put(db, integration_id, {"last_rejected_at": at, "last_rejection": reason})
