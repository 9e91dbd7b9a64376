"""Structured log lines (logfmt): ``time=… level=info event=outbound.sent integration=…``.

Values come from the sync engine's events, which never carry secrets; anything with a space
or a quote is quoted so each line stays one parseable record.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from im.clock import SystemClock, format_time

LOGGER = "im.daemon"


def _value(value: Any) -> str:
    text = " ".join(str(value).split())
    if not text or any(c in text for c in ' ="'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": format_time(SystemClock().now()),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            fields[key] = getattr(value, "value", value)  # enums by their value
        return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


def setup(level: str, log_file: Path | None) -> logging.Logger:
    """The daemon's logger: stderr, and ``log_file`` too when given (appended, 0600)."""
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    logger.setLevel(level.upper())
    logger.propagate = False
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.touch(mode=0o600, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(LogfmtFormatter())
        logger.addHandler(handler)
    # APScheduler reports every tick skipped while a step runs long: expected, not news
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    return logger


def event(
    logger: logging.Logger, name: str, fields: dict[str, Any], level: int = logging.INFO
) -> None:
    logger.log(level, name, extra={"fields": fields})
