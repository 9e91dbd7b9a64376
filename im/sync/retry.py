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
from im.store import dead_letters, inbound, incidents, outbox
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


def _log(text: str) -> tuple[Attempt, ...]:
    return tuple(
        Attempt(a["at"], a["error"], bool(a.get("charged", True))) for a in json.loads(text)
    )


def _entry(db: Database, letter: dict[str, Any]) -> DeadEntry:
    if letter["outbox_id"] is not None:
        row = outbox.get(db, letter["outbox_id"])
        assert row is not None
        return DeadEntry(
            id=entry_id(letter["id"]),
            incident=incident_display_id(row["incident_id"]),
            direction="outbound",
            operation=row["operation"],
            fields=tuple(sorted(row["fields"])),
            journal=len(row["journal"]),
            attempts=_log(row["attempt_log"]),
            error=row["last_error"] or "",
            queued_at=row["created_at"],
            dead_at=letter["created_at"],
        )
    event = inbound.get(db, letter["event_id"])
    assert event is not None
    return DeadEntry(
        id=entry_id(letter["id"]),
        incident=incident_display_id(event["incident_id"]) if event["incident_id"] else "",
        direction="inbound",
        operation=event["event_type"] or "webhook",
        fields=(),
        journal=0,
        attempts=_log(event["attempt_log"]),
        error=event["outcome"] or "",
        queued_at=event["received_at"],
        dead_at=letter["created_at"],
    )


def dead_entries(db: Database, integration: Mapping[str, Any]) -> list[DeadEntry]:
    """The integration's DLQ, oldest first, each with every attempt's time and error."""
    return [_entry(db, letter) for letter in dead_letters.open_entries(db, integration["id"])]


def _targets(
    db: Database, integration: Mapping[str, Any], entry: str | None
) -> list[dict[str, Any]]:
    """One entry (``entry``) or, with None, every open entry of the integration."""
    letters = dead_letters.open_entries(db, integration["id"])
    if entry is None:
        return letters
    wanted = parse_entry_id(entry)
    found = [letter for letter in letters if letter["id"] == wanted]
    if not found:
        raise NotFoundError(
            f"{integration['name']} has no DLQ entry {entry_id(wanted)}",
            f"see `im integration dlq {integration['name']}`",
        )
    return found


def retry_dead(
    db: Database, clock: Clock, integration: Mapping[str, Any], entry: str | None
) -> list[str]:
    """Queue DLQ entries again: an outbound one as a fresh row that sends the incident's
    *current* values of its fields (never the stale ones), an inbound one to be applied again.
    Returns the entry ids retried."""
    now = format_time(clock.now())
    retried = []
    with write(db):
        for letter in _targets(db, integration, entry):
            dead_letters.close(db, letter["id"], "retried", now)
            retried.append(entry_id(letter["id"]))
            if letter["event_id"] is not None:
                inbound.settle(
                    db,
                    letter["event_id"],
                    {"state": "received", "attempts": 0, "next_attempt_at": now},
                )
                continue
            row = outbox.get(db, letter["outbox_id"])
            assert row is not None
            outbox.close_dead(db, row["id"], "retried", now)
            incident = incidents.get(db, row["incident_id"])
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
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
            )
    return retried


def discard_dead(
    db: Database, clock: Clock, integration: Mapping[str, Any], entry: str | None
) -> list[str]:
    """Take DLQ entries off the list without sending or applying them (they stay in the
    database as discarded). Returns the entry ids."""
    now = format_time(clock.now())
    with write(db):
        letters = _targets(db, integration, entry)
        for letter in letters:
            dead_letters.close(db, letter["id"], "discarded", now)
            if letter["outbox_id"] is not None:
                outbox.close_dead(db, letter["outbox_id"], "discarded", now)
            else:
                inbound.settle(db, letter["event_id"], {"state": "discarded"})
    return [entry_id(letter["id"]) for letter in letters]
