"""Rows of integrations and what hangs off them: sealed secrets, ownership rules, mapping
overrides. Functions that write must be called inside store.write()."""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from im.model import Override, Owner, Rule
from im.store.db import insert_row, update_row

COLUMNS = (
    "id, name, type, url, enabled, direction, conflict_strategy, conflict_window, rate_limit, "
    "rate_limit_backoff, ca_bundle, allow_insecure_http, settings, created_at, updated_at, "
    "created_by"
)

# The secrets the integration signs in with outbound; webhook secrets only check what comes
# in, so rotating one does not mean refused credentials were replaced.
CREDENTIAL_SECRETS = "name NOT LIKE 'webhook_secret%'"


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row["settings"] = json.loads(row["settings"])
    row["enabled"] = bool(row["enabled"])
    row["rate_limit_backoff"] = bool(row["rate_limit_backoff"])
    row["allow_insecure_http"] = bool(row["allow_insecure_http"])
    return row


def find(db: Database, name_or_id: str) -> dict[str, Any] | None:
    """An integration by name, or by id when ``name_or_id`` is all digits."""
    key = name_or_id.strip()
    column = "id" if key.isdigit() else "name"
    rows = list(db.query(f"SELECT {COLUMNS} FROM integrations WHERE {column} = ?", [key]))
    return _decode(rows[0]) if rows else None


def all_rows(db: Database) -> list[dict[str, Any]]:
    return [_decode(r) for r in db.query(f"SELECT {COLUMNS} FROM integrations ORDER BY id")]


def names(db: Database) -> list[str]:
    return [r["name"] for r in db.query("SELECT name FROM integrations ORDER BY name")]


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    if "settings" not in values:
        return values
    return dict(values, settings=json.dumps(values["settings"], sort_keys=True))


def insert(db: Database, row: dict[str, Any]) -> int:
    return insert_row(db, "integrations", _encode(row))


def update(db: Database, integration_id: int, changes: dict[str, Any]) -> None:
    if changes:
        update_row(db, "integrations", integration_id, _encode(changes))


def delete(db: Database, integration_id: int) -> None:
    db.execute("DELETE FROM integrations WHERE id = ?", [integration_id])


# Secrets: sealed blobs only; opening them is security.secrets' business.


def put_secret(
    db: Database,
    integration_id: int,
    name: str,
    sealed: bytes,
    key: str,
    at: str,
    expires_at: str | None = None,
) -> None:
    """Insert or replace one sealed secret; ``expires_at``: when it stops being accepted
    (a rotated-out webhook secret), None for no end."""
    db.execute(
        "INSERT INTO integration_secrets (integration_id, name, sealed, key_id, updated_at, "
        "expires_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(integration_id, name) DO UPDATE SET "
        "sealed = excluded.sealed, key_id = excluded.key_id, updated_at = excluded.updated_at, "
        "expires_at = excluded.expires_at",
        [integration_id, name, sealed, key, at, expires_at],
    )


def secret_expires_at(db: Database, integration_id: int, name: str) -> str | None:
    """When a secret stops being accepted; None when it has no end or does not exist."""
    row = db.execute(
        "SELECT expires_at FROM integration_secrets WHERE integration_id = ? AND name = ?",
        [integration_id, name],
    ).fetchone()
    return None if row is None else row[0]


def delete_secret(db: Database, integration_id: int, name: str) -> bool:
    cursor = db.execute(
        "DELETE FROM integration_secrets WHERE integration_id = ? AND name = ?",
        [integration_id, name],
    )
    return cursor.rowcount == 1


def secret_status(db: Database, integration_id: int) -> dict[str, str]:
    """Secret name -> when it was last set. Never the value."""
    return {
        r["name"]: r["updated_at"]
        for r in db.query(
            "SELECT name, updated_at FROM integration_secrets WHERE integration_id = ?",
            [integration_id],
        )
    }


def sealed_secret(db: Database, integration_id: int, name: str) -> bytes | None:
    row = db.execute(
        "SELECT sealed FROM integration_secrets WHERE integration_id = ? AND name = ?",
        [integration_id, name],
    ).fetchone()
    return None if row is None else bytes(row[0])


def sealed_with_expiry(
    db: Database, integration_id: int, names: tuple[str, ...]
) -> dict[str, tuple[bytes, str | None]]:
    """Name -> (sealed value, expires_at) of those of the integration's secrets it has."""
    marks = ", ".join("?" for _ in names)
    return {
        str(r[0]): (bytes(r[1]), r[2])
        for r in db.execute(
            "SELECT name, sealed, expires_at FROM integration_secrets "
            f"WHERE integration_id = ? AND name IN ({marks})",
            [integration_id, *names],
        ).fetchall()
    }


def sealed_secrets(db: Database) -> list[tuple[int, str, bytes]]:
    """(integration id, name, sealed value) of every stored secret, whatever its name."""
    return [
        (int(r[0]), str(r[1]), bytes(r[2]))
        for r in db.execute(
            "SELECT integration_id, name, sealed FROM integration_secrets "
            "ORDER BY integration_id, name"
        ).fetchall()
    ]


def reseal_secret(db: Database, integration_id: int, name: str, sealed: bytes, key: str) -> None:
    """Replace a secret's sealed value and key id only. ``updated_at`` says when the
    credential itself last changed (a pause for refused credentials waits for that), and
    the other columns (``expires_at``) belong to the secret, not to its encryption."""
    db.execute(
        "UPDATE integration_secrets SET sealed = ?, key_id = ? "
        "WHERE integration_id = ? AND name = ?",
        [sealed, key, integration_id, name],
    )


# Field ownership rules.


def rules(db: Database, integration_id: int) -> dict[str, Rule]:
    return {
        r["field"]: Rule(r["field"], Owner(r["owner"]), r["priority"], bool(r["is_default"]))
        for r in db.query(
            "SELECT field, owner, priority, is_default FROM field_ownership "
            "WHERE integration_id = ?",
            [integration_id],
        )
    }


def put_rule(db: Database, integration_id: int, rule: Rule) -> None:
    db.execute(
        "INSERT INTO field_ownership (integration_id, field, owner, priority, is_default) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(integration_id, field) DO UPDATE SET "
        "owner = excluded.owner, priority = excluded.priority, is_default = excluded.is_default",
        [integration_id, rule.field, rule.owner.value, rule.priority, int(rule.is_default)],
    )


def delete_rule(db: Database, integration_id: int, field: str) -> bool:
    cursor = db.execute(
        "DELETE FROM field_ownership WHERE integration_id = ? AND field = ?",
        [integration_id, field],
    )
    return cursor.rowcount == 1


# Field mapping overrides.


def overrides(db: Database, integration_id: int) -> dict[str, Override]:
    return {
        r["field"]: Override(r["external_field"], json.loads(r["value_map"]))
        for r in db.query(
            "SELECT field, external_field, value_map FROM field_mappings WHERE integration_id = ?",
            [integration_id],
        )
    }


def put_override(db: Database, integration_id: int, field: str, override: Override) -> None:
    db.execute(
        "INSERT INTO field_mappings (integration_id, field, external_field, value_map) "
        "VALUES (?, ?, ?, ?) ON CONFLICT(integration_id, field) DO UPDATE SET "
        "external_field = excluded.external_field, value_map = excluded.value_map",
        [integration_id, field, override.external_field, json.dumps(dict(override.values))],
    )


def delete_override(db: Database, integration_id: int, field: str) -> bool:
    cursor = db.execute(
        "DELETE FROM field_mappings WHERE integration_id = ? AND field = ?",
        [integration_id, field],
    )
    return cursor.rowcount == 1
