"""Time, injected: code asks a ``Clock`` for now, so tests can freeze or step it.

Times are stored and shown in UTC as ISO-8601 with milliseconds and ``Z``; such strings sort
in time order, which the store relies on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to (tests, the deterministic simulation)."""

    def __init__(self, start: datetime) -> None:
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


def format_time(moment: datetime) -> str:
    """``2026-11-27T06:19:18.123Z``."""
    utc = moment.astimezone(UTC)
    # not strftime: it writes a year before 1000 short ("999-01-01"), which neither parses
    # back nor sorts with the others (a vendor's odd event time then broke conflict checks)
    return utc.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_time(text: str) -> datetime:
    """Parse a stored time (or any ISO-8601 time with an offset) into an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
