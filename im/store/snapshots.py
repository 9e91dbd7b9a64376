"""What each integration last acknowledged: per (integration, incident, field) the value sent
and the vendor's version of the record (the synced snapshot, SPEC §4), and which vendor entry
each platform journal entry became. Writers must be inside store.write()."""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database


@dataclass(frozen=True)
class Snapshot:
    value: str
    version: str | None


def for_pair(db: Database, integration_id: int, incident_id: int) -> dict[str, Snapshot]:
    return {
        row["field"]: Snapshot(row["value"], row["version"])
        for row in db.query(
            "SELECT field, value, version FROM sync_snapshots "
            "WHERE integration_id = ? AND incident_id = ?",
            [integration_id, incident_id],
        )
    }


def put(
    db: Database,
    integration_id: int,
    incident_id: int,
    values: dict[str, str],
    version: str | None,
    at: str,
) -> None:
    for field, value in values.items():
        db.execute(
            "INSERT INTO sync_snapshots (integration_id, incident_id, field, value, version, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (integration_id, incident_id, field) DO UPDATE SET "
            "value = excluded.value, version = excluded.version, updated_at = excluded.updated_at",
            [integration_id, incident_id, field, value, version, at],
        )


def linked_entries(db: Database, integration_id: int, entry_ids: list[int]) -> dict[int, str]:
    """Platform journal entry id -> the vendor's entry id, for those already linked."""
    if not entry_ids:
        return {}
    marks = ", ".join("?" for _ in entry_ids)
    return {
        row["journal_entry_id"]: row["vendor_id"]
        for row in db.query(
            f"SELECT journal_entry_id, vendor_id FROM journal_links "
            f"WHERE integration_id = ? AND journal_entry_id IN ({marks})",
            [integration_id, *entry_ids],
        )
    }


def vendor_ids(db: Database, integration_id: int, incident_id: int) -> set[str]:
    """The vendor ids of the incident's entries linked with the integration."""
    return {
        row["vendor_id"]
        for row in db.query(
            "SELECT l.vendor_id FROM journal_links l JOIN journal_entries j "
            "ON j.id = l.journal_entry_id WHERE l.integration_id = ? AND j.incident_id = ?",
            [integration_id, incident_id],
        )
    }


def link_entry(db: Database, integration_id: int, entry_id: int, vendor_id: str, at: str) -> None:
    db.execute(
        "INSERT OR IGNORE INTO journal_links (journal_entry_id, integration_id, vendor_id, "
        "linked_at) VALUES (?, ?, ?, ?)",
        [entry_id, integration_id, vendor_id, at],
    )


def vendor_linked(db: Database, integration_id: int, vendor_id: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM journal_links WHERE integration_id = ? AND vendor_id = ?",
        [integration_id, vendor_id],
    ).fetchone()
    return row is not None


def newest_version(db: Database, integration_id: int, incident_id: int) -> str | None:
    """The newest vendor version synced for the pair (versions compare as text)."""
    row = db.execute(
        "SELECT max(version) FROM sync_snapshots WHERE integration_id = ? AND incident_id = ?",
        [integration_id, incident_id],
    ).fetchone()
    return str(row[0]) if row and row[0] is not None else None


def sighted(
    db: Database, integration_id: int, incident_id: int, field: str, value: str, at: str
) -> None:
    """The dispatcher left an external value in place (a concurrent edit): remember the
    earliest read that showed it, and the record's update time then."""
    db.execute(
        "INSERT INTO external_sightings (integration_id, incident_id, field, value, seen_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (integration_id, incident_id, field) DO UPDATE SET "
        "value = excluded.value, seen_at = excluded.seen_at WHERE value != excluded.value",
        [integration_id, incident_id, field, value, at],
    )


def sighting(db: Database, integration_id: int, incident_id: int, field: str) -> Snapshot | None:
    """The value last left in place and the latest time it can have been made, or None."""
    row = db.execute(
        "SELECT value, seen_at FROM external_sightings WHERE integration_id = ? "
        "AND incident_id = ? AND field = ?",
        [integration_id, incident_id, field],
    ).fetchone()
    return Snapshot(row[0], row[1]) if row else None
