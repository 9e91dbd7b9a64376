"""Every error the product knows about, and the exit code each one ends a command with.

The front ends (CLI, daemon, TUI) turn an ``ImError`` into one line for a person; nothing
below them prints. Messages never contain secret values.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    IN_PROGRESS = 3
    INTERRUPTED = 130


class ImError(Exception):
    """A failure a user can act on: ``message`` names the problem, ``hint`` the fix."""

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(ImError):
    """The command was called with a bad value or a missing option."""

    exit_code = ExitCode.USAGE


class ValidationError(UsageError):
    """A field value is not acceptable."""


class NotFoundError(ImError):
    """An id or name that does not exist."""


class StateError(ImError):
    """The request is valid but the current state does not allow it."""


class DatabaseError(ImError):
    """The database is missing, unreadable or not ours."""


class DatabaseBusyError(DatabaseError):
    """Another process held the write lock for longer than the busy timeout."""


class SecretError(ImError):
    """The master key is missing or does not open the stored secrets."""


class InProgressError(ImError):
    """Another run of the same thing is in progress."""

    exit_code = ExitCode.IN_PROGRESS


class SignatureError(ImError):
    """A webhook delivery failed verification. The message never quotes a secret."""
