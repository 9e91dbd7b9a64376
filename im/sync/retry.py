"""The retry schedule, the classification of failures (SPEC §4) and the Dead Letter Queue.

**Reading:** the guide says "after 5 retries" and lists five attempts; the list wins. Attempt
1 at once, then 30 s, 2 min, 8 min and 30 min after each failure; when attempt 5 fails the row
moves to the DLQ. No jitter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time
from im.connectors.http import (
    AuthError,
    ConnectorError,
    PermanentError,
    RateLimitedError,
    RecordNotFoundError,
)
from im.errors import NotFoundError
from im.model import incident_display_id
from im.store import incidents, outbox
from im.store.db import write

# seconds to wait after attempt N failed, before attempt N + 1
SCHEDULE: tuple[float, ...] = (30.0, 120.0, 480.0, 1800.0)
MAX_ATTEMPTS = len(SCHEDULE) + 1
MAX_PAUSES = 10  # rate-limit pauses a row may take before they start costing attempts


class Treatment(Enum):
    RETRY = "retry"  # consumes an attempt
    RATE_LIMITED = "rate-limited"  # the integration pauses; no attempt charged
    AUTH = "auth"  # the integration pauses until its credentials change
    DEAD = "dead"  # to the DLQ at once
    GONE = "gone"  # the external record is gone: link broken, to the DLQ


@dataclass(frozen=True)
class Decision:
    treatment: Treatment
    wait: float = 0.0  # seconds until the row may be tried again
    message: str = ""


def delay_after(attempts: int) -> float | None:
    """Seconds before the next attempt once ``attempts`` attempts have failed; None when the
    row has used all five and goes to the DLQ."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return SCHEDULE[attempts - 1]


def classify(
    error: ConnectorError, operation: str, attempts: int, pauses: int, backoff: bool
) -> Decision:
    """What to do with a row whose send failed with ``error`` after ``attempts`` charged
    attempts (not counting this one) and ``pauses`` rate-limit pauses.

    ``backoff`` is the integration's --rate-limit-backoff: off, a 429 is an ordinary failed
    attempt.
    """
    message = str(error)
    if isinstance(error, RateLimitedError) and backoff and pauses < MAX_PAUSES:
        return Decision(Treatment.RATE_LIMITED, error.retry_after, message)
    if isinstance(error, AuthError):
        return Decision(Treatment.AUTH, 0.0, message)
    if isinstance(error, RecordNotFoundError) and operation == "update":
        return Decision(Treatment.GONE, 0.0, message)
    if isinstance(error, PermanentError | RecordNotFoundError):
        return Decision(Treatment.DEAD, 0.0, message)
    wait = delay_after(attempts + 1)
    if wait is None:
        return Decision(Treatment.DEAD, 0.0, message)
    return Decision(Treatment.RETRY, wait, message)


_ENTRY = re.compile(r"(?:entry-)?([0-9]{1,18})", re.IGNORECASE)


def parse_entry_id(text: str) -> int:
    """``entry-12`` (or ``12``) -> 12. Raises NotFoundError for anything else."""
    match = _ENTRY.fullmatch(text.strip())
    if not match:
        raise NotFoundError(f"{text[:60]!r} is not a DLQ entry id", "entries look like entry-12")
    return int(match.group(1))


def entry_id(row_id: int) -> str:
    return f"entry-{row_id}"


# -- the Dead Letter Queue ------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    at: str
    error: str
    charged: bool


@dataclass(frozen=True)
class DeadEntry:
    id: str
    incident: str
    direction: str
    operation: str
    fields: tuple[str, ...]
    journal: int
    attempts: tuple[Attempt, ...]
    error: str
    queued_at: str
    dead_at: str


def _entry(row: dict[str, Any]) -> DeadEntry:
    log = [Attempt(a["at"], a["error"], bool(a.get("charged", True))) for a in row["attempt_log"]]
    return DeadEntry(
        id=entry_id(row["id"]),
        incident=incident_display_id(row["incident_id"]),
        direction=row["direction"],
        operation=row["operation"],
        fields=tuple(sorted(row["fields"])),
        journal=len(row["journal"]),
        attempts=tuple(log),
        error=row["last_error"] or "",
        queued_at=row["created_at"],
        dead_at=row["updated_at"],
    )


def dead_entries(db: Database, integration: Mapping[str, Any]) -> list[DeadEntry]:
    """The integration's DLQ, oldest first, each with every attempt's time and error."""
    result = []
    for row in outbox.dead(db, integration["id"]):
        row["attempt_log"] = json.loads(row["attempt_log"])
        result.append(_entry(row))
    return result


def _targets(db: Database, integration: Mapping[str, Any], entry: str | None) -> list[int]:
    """Row ids of one entry (``entry``) or, with None, of every entry of the integration."""
    dead = [row["id"] for row in outbox.dead(db, integration["id"])]
    if entry is None:
        return dead
    row_id = parse_entry_id(entry)
    if row_id not in dead:
        raise NotFoundError(
            f"{integration['name']} has no DLQ entry {entry_id(row_id)}",
            f"see `im integration dlq {integration['name']}`",
        )
    return [row_id]


def retry_dead(
    db: Database, clock: Clock, integration: Mapping[str, Any], entry: str | None
) -> list[str]:
    """Queue DLQ entries again as fresh rows that send the incident's *current* values of
    their fields (never the stale ones). Returns the entry ids retried."""
    now = format_time(clock.now())
    retried = []
    with write(db):
        for row_id in _targets(db, integration, entry):
            row = outbox.get(db, row_id)
            assert row is not None
            incident = incidents.get(db, row["incident_id"])
            outbox.close_dead(db, row_id, "retried", now)
            retried.append(entry_id(row_id))
            if incident is None:
                continue
            outbox.insert(
                db,
                {
                    "incident_id": row["incident_id"],
                    "integration_id": row["integration_id"],
                    "operation": row["operation"],
                    "fields": {f: incident.value(f) for f in row["fields"]},
                    "journal": row["journal"],
                    "correlation_key": row["correlation_key"],
                    "direction": row["direction"],
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
            )
    return retried


def discard_dead(
    db: Database, clock: Clock, integration: Mapping[str, Any], entry: str | None
) -> list[str]:
    """Take DLQ entries off the list without sending them. Returns the entry ids."""
    now = format_time(clock.now())
    with write(db):
        targets = _targets(db, integration, entry)
        for row_id in targets:
            outbox.close_dead(db, row_id, "discarded", now)
    return [entry_id(r) for r in targets]
