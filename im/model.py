"""The platform incident: its fields, their allowed values and the status machine (SPEC §2)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from im.errors import NotFoundError, StateError, ValidationError


class Severity(StrEnum):
    SEV1 = "sev1"
    SEV2 = "sev2"
    SEV3 = "sev3"
    SEV4 = "sev4"
    SEV5 = "sev5"


class Priority(StrEnum):
    P1 = "p1"
    P2 = "p2"
    P3 = "p3"
    P4 = "p4"
    P5 = "p5"


class Status(StrEnum):
    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"
    BIDIRECTIONAL = "bidirectional"

    @property
    def sends(self) -> bool:
        return self is not Direction.INBOUND

    @property
    def receives(self) -> bool:
        return self is not Direction.OUTBOUND


class ConflictStrategy(StrEnum):
    LAST_WRITE_WINS = "last-write-wins"
    OWNERSHIP_PRIORITY = "ownership-priority"
    MANUAL_REVIEW = "manual-review"


class Owner(StrEnum):
    PLATFORM = "platform"
    EXTERNAL = "external"


# Scalar fields a person edits, in the order they are shown.
SCALAR_FIELDS: tuple[str, ...] = (
    "title",
    "description",
    "severity",
    "priority",
    "status",
    "assigned_to",
    "escalation_policy",
    "commander",
)
# Append-only journals: entries are added, never overwritten.
JOURNAL_FIELDS: tuple[str, ...] = ("work_notes", "comments")
# Every field that can be synced with an external system (``commander`` is platform-only RBAC data).
SYNC_FIELDS: tuple[str, ...] = tuple(f for f in SCALAR_FIELDS if f != "commander") + JOURNAL_FIELDS

DEFAULT_LIST_LIMIT = 50  # `im incident list` shows the newest 50 unless told otherwise
DEFAULT_SEVERITY = Severity.SEV3
DEFAULT_PRIORITY = Priority.P3

# Forward moves may skip steps (an incident can be resolved without being acknowledged);
# the only way back is a reopen from resolved; closed is final.
_STATUS_ORDER = list(Status)
_REOPEN = (Status.RESOLVED, Status.TRIGGERED)

TITLE_MAX = 255
TEXT_MAX = 65_536
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_INCIDENT_ID = re.compile(r"(?:INC-)?([1-9][0-9]{0,17})", re.IGNORECASE)
# Control characters would move a terminal's cursor or colour its output; only text fields
# that are multi-line by nature keep newlines and tabs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_EXCEPT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# tabs too: they shift columns
_CONTROL_EXCEPT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Incident:
    id: int
    title: str
    description: str
    severity: str
    priority: str
    status: str
    assigned_to: str
    escalation_policy: str
    commander: str
    created_at: str
    updated_at: str
    created_by: str

    @property
    def display_id(self) -> str:
        return incident_display_id(self.id)

    def value(self, field: str) -> str:
        return str(getattr(self, field))


def incident_display_id(number: int) -> str:
    return f"INC-{number}"


def parse_incident_id(text: str) -> int:
    """``INC-12`` (any case) or ``12`` -> 12. Raises NotFoundError for anything else."""
    match = _INCIDENT_ID.fullmatch(text.strip())
    if match:
        return int(match.group(1))
    raise NotFoundError(f"no incident {text[:40]!r}", "incident ids look like INC-12")


def _choice(field: str, value: str, enum: type[StrEnum]) -> str:
    normalised = value.strip().lower()
    allowed = [member.value for member in enum]
    if normalised not in allowed:
        raise ValidationError(f"{field} must be one of {', '.join(allowed)}, not {value!r}")
    return normalised


def validate_field(field: str, value: str) -> str:
    """Return the canonical form of ``value`` for ``field``, or raise ValidationError."""
    check_text(field, value, multiline=field in ("description", *JOURNAL_FIELDS))
    if field == "title":
        title = value.strip()
        if not title:
            raise ValidationError("title must not be empty")
        if len(title) > TITLE_MAX:
            raise ValidationError(f"title is {len(title)} characters; the limit is {TITLE_MAX}")
        return title
    if field in ("description", *JOURNAL_FIELDS):
        if len(value) > TEXT_MAX:
            raise ValidationError(f"{field} is {len(value)} characters; the limit is {TEXT_MAX}")
        if field in JOURNAL_FIELDS and not value.strip():
            raise ValidationError("a comment must not be empty")
        return value
    if field == "severity":
        return _choice(field, value, Severity)
    if field == "priority":
        return _choice(field, value, Priority)
    if field == "status":
        return _choice(field, value, Status)
    if field == "assigned_to":
        email = value.strip().lower()
        if email and not _EMAIL.fullmatch(email):
            raise ValidationError(
                f"assigned_to must be a user's email address, not {value!r}",
                'pass "" to unassign',
            )
        return email
    if field in ("escalation_policy", "commander"):
        ident = value.strip()
        if ident and not _IDENTIFIER.fullmatch(ident):
            raise ValidationError(
                f"{field} must be an identifier (letters, digits, _ . : @ -), not {value!r}"
            )
        return ident
    raise ValidationError(f"unknown field {field!r}; fields are {', '.join(SYNC_FIELDS)}")


def check_text(what: str, value: str, multiline: bool = False) -> None:
    """Refuse text that is not valid Unicode or holds control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid UTF-8 text") from None
    pattern = _CONTROL_EXCEPT_LINES if multiline else _CONTROL
    if pattern.search(value):
        raise ValidationError(f"{what} must not contain control characters")


def printable(text: str, lines: bool = False) -> str:
    """``text`` safe to put on a terminal: control characters (escape sequences among them)
    written out as ``\\x1b``-style escapes, so a value that came from an external system can
    neither move the cursor nor retitle the window; line breaks kept only when ``lines``."""
    pattern = _CONTROL_EXCEPT_NEWLINE if lines else _CONTROL
    return pattern.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


def check_transition(current: str, new: str) -> None:
    """Raise StateError unless the status machine allows ``current`` -> ``new``."""
    if current == new:
        return
    old, target = Status(current), Status(new)
    if old is Status.CLOSED:
        raise StateError("the incident is closed; closed is final", "create a new incident")
    if (old, target) == _REOPEN:
        return
    if _STATUS_ORDER.index(target) < _STATUS_ORDER.index(old):
        raise StateError(
            f"status cannot go back from {old} to {target}",
            "only a resolved incident can go back, to triggered",
        )


class Role(StrEnum):
    ADMINISTRATOR = "platform.administrator"
    INTEGRATION_MANAGER = "integration.manager"
    INCIDENT_COMMANDER = "incident_commander"
    VIEWER = "viewer"


@dataclass(frozen=True)
class Rule:
    """A field ownership rule of one integration: a larger priority wins."""

    field: str
    owner: Owner
    priority: int = 0
    is_default: bool = False


@dataclass(frozen=True)
class Override:
    """A user's change to an integration's field mapping."""

    external_field: str
    values: Mapping[str, str] = field(default_factory=dict)
