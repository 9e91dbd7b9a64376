"""Integration Configuration: connection settings and credentials of each external system
(SPEC §3). Secrets are sealed before they touch the database and are never returned."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlite_utils import Database

from im.clock import Clock, format_time
from im.config import ownership
from im.connectors import TYPES, jira, pagerduty, servicenow
from im.errors import NotFoundError, UsageError, ValidationError
from im.model import ConflictStrategy, Direction, check_text
from im.security.secrets import MasterKey, find_key, seal
from im.store import integrations as rows
from im.store import meta
from im.store import outbox as outbox_rows
from im.store.db import write

# subcommand names of `im integration reconcile`, which also takes NAME directly
RESERVED_NAMES = frozenset({"history", "schedule", "run"})
_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True)
class SecretSpec:
    name: str  # key in the store, and the option name with _ -> -
    env_var: str
    required: bool

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


WEBHOOK_SECRET = SecretSpec("webhook_secret", "IM_WEBHOOK_SECRET", False)
# the webhook secret a rotation replaced, accepted until its expires_at (SPEC §9); never an
# option of its own: only `im integration rotate-secret` writes it
PREVIOUS_WEBHOOK_SECRET = "webhook_secret_previous"
SECRETS: dict[str, tuple[SecretSpec, ...]] = {
    "servicenow": (SecretSpec("password", "IM_PASSWORD", True), WEBHOOK_SECRET),
    "jira": (SecretSpec("api_token", "IM_API_TOKEN", True), WEBHOOK_SECRET),
    "pagerduty": (SecretSpec("api_token", "IM_API_TOKEN", True), WEBHOOK_SECRET),
}


def _text(value: str) -> str:
    check_text("the value", value)
    if not value.strip() or len(value) > 1000:
        raise ValidationError("must be 1-1000 characters")
    return value.strip()


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value.strip()):
        raise ValidationError("must be an email address")
    return value.strip().lower()


def _pattern(regex: str, description: str) -> Callable[[str], str]:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value.strip()):
            raise ValidationError(f"must be {description}")
        return value.strip()

    return check


@dataclass(frozen=True)
class Setting:
    check: Callable[[str], str]
    default: str | None = None
    required: bool = False
    scope: bool = False  # part of what the integration owns in the external system


SETTINGS: dict[str, dict[str, Setting]] = {
    "servicenow": {
        "username": Setting(_text, required=True),
        "assignment_group": Setting(_text, scope=True),
        "scope_query": Setting(_text, scope=True),
        "correlation_field": Setting(
            _pattern(r"^[a-z_][a-z0-9_]{0,79}$", "a ServiceNow column name"),
            servicenow.DEFAULT_CORRELATION_FIELD,
        ),
        "close_code": Setting(_text, servicenow.DEFAULT_CLOSE_CODE),
        "close_notes": Setting(_text, servicenow.DEFAULT_CLOSE_NOTES),
    },
    "jira": {
        "email": Setting(_email, required=True),
        "project": Setting(
            _pattern(r"^[A-Z][A-Z0-9_]{1,9}$", "a project key such as OPS"),
            required=True,
            scope=True,
        ),
        "jql": Setting(_text, scope=True),
        "issue_type": Setting(_text, jira.DEFAULT_ISSUE_TYPE),
        "severity_field": Setting(_pattern(r"^customfield_[0-9]+$", "customfield_<number>")),
        "client_key": Setting(_text),
    },
    "pagerduty": {
        "from_email": Setting(_email, required=True),
        "service": Setting(
            _pattern(r"^[A-Z0-9]{2,32}$", "a PagerDuty id such as PSVC001"),
            required=True,
            scope=True,
        ),
        "escalation_policy": Setting(_pattern(r"^[A-Z0-9]{2,32}$", "a PagerDuty id")),
    },
}
DEFAULT_URLS: dict[str, str] = {"pagerduty": pagerduty.DEFAULT_URL}


@dataclass
class IntegrationInput:
    """What a user asked for; None means "not given". Secrets are plain values here and
    sealed before they are stored."""

    url: str | None = None
    settings: dict[str, str | None] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    direction: str | None = None
    conflict_strategy: str | None = None
    conflict_window: str | None = None
    rate_limit: str | None = None
    rate_limit_backoff: bool | None = None
    enabled: bool | None = None
    ca_bundle: str | None = None
    allow_insecure_http: bool | None = None


@dataclass
class Outcome:
    integration: dict[str, Any]
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_name(name: str) -> str:
    if name in RESERVED_NAMES:
        raise ValidationError(f"{name!r} is reserved (it is a subcommand name)")
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f"integration name {name[:70]!r} is not valid",
            "use lowercase letters, digits and hyphens, starting with a letter (e.g. prod-snow)",
        )
    return name


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure: bool) -> tuple[str, list[str]]:
    """A base URL: https, or plain http on loopback (or with allow_insecure, warned).

    Errors never quote the URL: a mistyped one may carry a password or token.
    """
    check_text("the URL", url)
    try:
        parts = urlsplit(url.strip())
        hostname = parts.hostname
    except ValueError:
        raise ValidationError("--url is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not hostname:
        raise ValidationError("--url must be an http(s) URL", "e.g. https://acme.service-now.com")
    # a "/" in a password ends the netloc early, leaving "…@host" in the path
    if "@" in parts.netloc or "@" in parts.path:
        raise ValidationError(
            "the URL must not carry credentials", "pass them with their own options instead"
        )
    if parts.query or parts.fragment:
        raise ValidationError("--url must not have a query or fragment")
    site = f"{parts.scheme}://{parts.netloc}"
    warnings: list[str] = []
    if parts.scheme == "http" and not _is_loopback(hostname):
        if not allow_insecure:
            raise ValidationError(
                f"{site} uses plain http to a host that is not loopback",
                "use https://, or pass --allow-insecure-http if you really mean it",
            )
        warnings.append(
            f"{site} is plain http: credentials and incidents cross the network unencrypted"
        )
    return url.strip().rstrip("/"), warnings


def parse_rate_limit(text: str) -> float | None:
    """``10/s``, ``600/m``, ``off`` -> requests per second, or None for no pacing."""
    value = text.strip().lower()
    if value in ("off", "none", "0"):
        return None
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|sec|m|min|h)", value)
    if not match or not 0 < float(match.group(1)) <= 1_000_000:
        raise ValidationError(f"--rate-limit takes N/s, N/m or N/h (or off), not {text!r}")
    per = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) / per


def format_rate_limit(per_second: float | None) -> str:
    if per_second is None:
        return "off"
    return f"{per_second:g}/s" if per_second >= 1 else f"{per_second * 60:g}/m"


def parse_duration(text: str, option: str, minimum: float, maximum: float) -> float:
    """``5``, ``5s``, ``500ms``, ``2m``, ``1h``, ``1d`` -> seconds."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*", text.lower())
    if not match:
        raise ValidationError(f"{option} takes a duration such as 5s, 500ms or 1m, not {text!r}")
    unit = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    seconds = float(match.group(1)) * unit
    if not minimum <= seconds <= maximum:
        raise ValidationError(f"{option} must be between {minimum:g}s and {maximum:g}s")
    return seconds


def format_duration(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def _choice(value: str, enum: type[Direction] | type[ConflictStrategy], option: str) -> str:
    allowed = [m.value for m in enum]
    if value not in allowed:
        raise ValidationError(f"{option} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _ca_bundle(path: str) -> str:
    try:
        resolved = Path(path).expanduser().resolve()
        exists = resolved.is_file()
    except (OSError, ValueError):
        exists = False
    if not exists:
        raise ValidationError(f"--ca-bundle {path[:200]}: no such file")
    return str(resolved)


def find(db: Database, name_or_id: str, visible: Collection[str] | None = None) -> dict[str, Any]:
    """The integration named (or numbered) so. Raises NotFoundError listing what exists, or
    only what is ``visible`` to the caller."""
    row = rows.find(db, name_or_id)
    if row is not None:
        return row
    existing = [n for n in rows.names(db) if visible is None or n in visible]
    close = difflib.get_close_matches(name_or_id, existing, n=3)
    if close:
        hint = f"did you mean {', '.join(close)}?"
    elif existing:
        hint = f"integrations: {', '.join(existing)}"
    else:
        hint = "none exist yet: create one with `im integration create`"
    raise NotFoundError(f"no integration {name_or_id!r}", hint)


def master_key(db: Database) -> MasterKey:
    return find_key(meta.require(db, "key_source"), meta.require(db, "key_id"))


def _settings(
    kind: str, given: Mapping[str, str | None], current: Mapping[str, str]
) -> dict[str, str]:
    allowed = SETTINGS[kind]
    result = dict(current)
    for key, value in given.items():
        if value is None:
            continue
        if key not in allowed:
            raise UsageError(f"--{key.replace('_', '-')} does not apply to {kind} integrations")
        if value == "":
            if allowed[key].required:
                raise ValidationError(f"--{key.replace('_', '-')} is required for {kind}")
            result.pop(key, None)
            continue
        try:
            result[key] = allowed[key].check(value)
        except ValidationError as exc:
            raise ValidationError(f"--{key.replace('_', '-')} {exc.message}") from None
    return result


def _common(inp: IntegrationInput) -> dict[str, Any]:
    """The type-independent columns the input changes."""
    columns: dict[str, Any] = {}
    if inp.direction is not None:
        columns["direction"] = _choice(inp.direction, Direction, "--direction")
    if inp.conflict_strategy is not None:
        columns["conflict_strategy"] = _choice(
            inp.conflict_strategy, ConflictStrategy, "--conflict-strategy"
        )
    if inp.conflict_window is not None:
        columns["conflict_window"] = parse_duration(
            inp.conflict_window, "--conflict-window", 0.1, 3600
        )
    if inp.rate_limit is not None:
        columns["rate_limit"] = parse_rate_limit(inp.rate_limit)
    if inp.rate_limit_backoff is not None:
        columns["rate_limit_backoff"] = inp.rate_limit_backoff
    if inp.enabled is not None:
        columns["enabled"] = inp.enabled
    if inp.ca_bundle is not None:
        columns["ca_bundle"] = _ca_bundle(inp.ca_bundle) if inp.ca_bundle else None
    if inp.allow_insecure_http is not None:
        columns["allow_insecure_http"] = inp.allow_insecure_http
    return columns


def _store_secrets(
    db: Database, integration_id: int, secrets: Mapping[str, str], kind: str, now: str
) -> None:
    specs = {s.name: s for s in SECRETS[kind]}
    if not secrets:
        return
    key = master_key(db)
    for name, value in secrets.items():
        if name not in specs:
            raise UsageError(f"--{name.replace('_', '-')} does not apply to {kind} integrations")
        check_secret(specs[name].label, value)
        put_secret(db, key, integration_id, name, value, now)


def check_secret(label: str, value: str) -> None:
    """Raises ValidationError for a secret value that cannot be used."""
    if not value:
        raise ValidationError(f"the {label} must not be empty")
    if not value.isascii() or not value.isprintable():
        # it travels in HTTP headers, which carry neither control characters nor non-ASCII
        raise ValidationError(
            f"the {label} must be printable ASCII characters "
            "(no control characters, no line breaks)"
        )


def put_secret(
    db: Database,
    key: MasterKey,
    integration_id: int,
    name: str,
    value: str,
    now: str,
    expires_at: str | None = None,
) -> None:
    """Seal one secret to its own row and store it. Call inside store.write()."""
    sealed = seal(key, value, secret_owner(integration_id, name))
    rows.put_secret(db, integration_id, name, sealed, key.key_id, now, expires_at)


def secret_owner(integration_id: int, name: str) -> str:
    """The associated data a secret is sealed with: it only opens on its own row."""
    return f"integration:{integration_id}:{name}"


def create(
    db: Database, clock: Clock, actor: str, name: str, kind: str, inp: IntegrationInput
) -> Outcome:
    """Create an integration with the type's default ownership rules. Writes one transaction.

    Raises ValidationError / UsageError on bad input, StateError when the name is taken.
    """
    check_name(name)
    if kind not in TYPES:
        raise ValidationError(f"--type must be one of {', '.join(TYPES)}, not {kind!r}")
    url = inp.url or DEFAULT_URLS.get(kind)
    if not url:
        raise UsageError(f"--url is required for {kind} integrations")
    clean_url, warnings = check_url(url, bool(inp.allow_insecure_http))
    defaults = {k: s.default for k, s in SETTINGS[kind].items() if s.default is not None}
    settings = _settings(kind, inp.settings, defaults)
    missing = [k for k, s in SETTINGS[kind].items() if s.required and k not in settings]
    if missing:
        raise UsageError(
            f"{', '.join('--' + m.replace('_', '-') for m in missing)} required for {kind}"
        )
    absent = [s for s in SECRETS[kind] if s.required and s.name not in inp.secrets]
    if absent:
        raise UsageError(f"{absent[0].option} is required for {kind} integrations")
    now = format_time(clock.now())
    row: dict[str, Any] = {
        "name": name,
        "type": kind,
        "url": clean_url,
        "settings": settings,
        "created_at": now,
        "updated_at": now,
        "created_by": actor,
        **_common(inp),
    }
    with write(db):
        if rows.find(db, name) is not None:
            raise ValidationError(
                f"an integration named {name!r} exists already",
                f"change it with `im integration configure {name}`",
            )
        integration_id = rows.insert(db, row)
        _store_secrets(db, integration_id, inp.secrets, kind, now)
        for rule in ownership.default_rules(kind):
            rows.put_rule(db, integration_id, rule)
    created = find(db, str(integration_id))
    return Outcome(created, [f"created {kind} integration {name}"], warnings)


def configure(
    db: Database, clock: Clock, actor: str, name_or_id: str, inp: IntegrationInput
) -> Outcome:
    """Change an integration's settings; a secret changes only when one is given.

    Switching to ``inbound`` cancels its waiting outbox rows. Writes one transaction.
    """
    warnings: list[str] = []
    now = format_time(clock.now())
    with write(db):
        current = find(db, name_or_id)
        kind = current["type"]
        columns = _common(inp)
        insecure = columns.get("allow_insecure_http", current["allow_insecure_http"])
        if inp.url is not None or "allow_insecure_http" in columns:
            columns["url"], url_warnings = check_url(inp.url or current["url"], insecure)
            warnings += url_warnings
        settings = _settings(kind, inp.settings, current["settings"])
        if settings != current["settings"]:
            columns["settings"] = settings
        changes = [
            f"{column} {_show(current.get(column), column)} -> {_show(value, column)}"
            for column, value in columns.items()
            if column != "settings" and value != current.get(column)
        ]
        changes += [
            f"{key} {_show(current['settings'].get(key))} -> {_show(settings.get(key))}"
            for key in sorted(set(settings) | set(current["settings"]))
            if settings.get(key) != current["settings"].get(key)
        ]
        _store_secrets(db, current["id"], inp.secrets, kind, now)
        changes += [f"{name.replace('_', ' ')} replaced" for name in inp.secrets]
        if not changes:
            return Outcome(current, [], warnings)
        rows.update(db, current["id"], {**columns, "updated_at": now})
        direction = columns.get("direction")
        if direction == Direction.INBOUND and current["direction"] != Direction.INBOUND:
            cancelled = outbox_rows.cancel_waiting(
                db, current["id"], f"cancelled: direction set to inbound by {actor}", now
            )
            if cancelled:
                changes.append(f"{cancelled} waiting outbound change(s) cancelled")
        if direction == Direction.BIDIRECTIONAL and ownership.all_defaults(
            rows.rules(db, current["id"]).values(), kind
        ):
            warnings.append(
                "field ownership is still the defaults: review it with "
                f"`im integration field-ownership list {current['name']}` (best practice 2)"
            )
    return Outcome(find(db, str(current["id"])), changes, warnings)


def _show(value: Any, column: str = "") -> str:
    if column == "rate_limit":
        return format_rate_limit(value)
    if column == "conflict_window":
        return format_duration(value)
    if value is None or value == "":
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def delete(db: Database, name_or_id: str) -> Outcome:
    """Delete an integration with its secrets, rules, links and queued changes."""
    with write(db):
        current = find(db, name_or_id)
        waiting, _ = outbox_rows.backlog(db, current["id"])
        rows.delete(db, current["id"])
    summary = f"deleted integration {current['name']}"
    if waiting:
        summary += f" ({waiting} unsent change(s) dropped)"
    return Outcome(current, [summary])


def previous_webhook_secret_until(db: Database, integration_id: int, now: datetime) -> str | None:
    """Until when the webhook secret a rotation replaced is still accepted; None when no
    rotation is in progress at ``now`` (none was kept, or its grace has ended)."""
    until = rows.secret_expires_at(db, integration_id, PREVIOUS_WEBHOOK_SECRET)
    return until if in_grace(until, now) else None


def in_grace(until: str | None, now: datetime) -> bool:
    """Whether a replaced webhook secret that is accepted until ``until`` still is at
    ``now`` (stored times sort in time order: it counts while now < expires_at)."""
    return until is not None and format_time(now) < until


def view(db: Database, integration: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """What `get` and `list` show: every setting, for secrets only whether each is set, and
    until when a rotated-out webhook secret is still accepted (null: no rotation at ``now``)."""
    kind = integration["type"]
    settings = integration["settings"]
    stored = rows.secret_status(db, integration["id"])
    scope = {k: settings[k] for k, s in SETTINGS[kind].items() if s.scope and k in settings}
    return {
        "id": integration["id"],
        "name": integration["name"],
        "type": kind,
        "url": integration["url"],
        "enabled": integration["enabled"],
        "direction": integration["direction"],
        "conflict_strategy": integration["conflict_strategy"],
        "conflict_window": format_duration(integration["conflict_window"]),
        "rate_limit": format_rate_limit(integration["rate_limit"]),
        "rate_limit_backoff": integration["rate_limit_backoff"],
        "scope": scope,
        "settings": {k: v for k, v in settings.items() if k not in scope},
        "secrets": {s.name: "set" if s.name in stored else "not set" for s in SECRETS[kind]},
        "webhook_secret_previous_until": previous_webhook_secret_until(db, integration["id"], now),
        "ca_bundle": integration["ca_bundle"],
        "allow_insecure_http": integration["allow_insecure_http"],
        "created_at": integration["created_at"],
        "updated_at": integration["updated_at"],
        "created_by": integration["created_by"],
    }
