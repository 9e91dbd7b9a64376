"""Webhook secret rotation (SPEC §9): a new secret signs from now on while the one it replaced
stays valid until a grace period ends, so the external system can be switched over without
refusing a single delivery.

The current secret is the integration's ``webhook_secret``; the one it replaced is kept as
``webhook_secret_previous``, sealed like any other secret, with ``expires_at``. Only two are
ever valid at once. An expired previous secret is ignored, and removed at the next rotation
or ``finish``. Nothing here returns or reports a secret value.
"""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time
from im.config.connection import secret
from im.config.integrations import (
    PREVIOUS_WEBHOOK_SECRET,
    WEBHOOK_SECRET,
    check_secret,
    find,
    in_grace,
    master_key,
    parse_duration,
    previous_webhook_secret_until,
    put_secret,
)
from im.errors import StateError, UsageError, ValidationError
from im.store import integrations as rows
from im.store.db import write

DEFAULT_GRACE = timedelta(hours=24)
# long enough for a change window over a weekend; a secret replaced because it leaked should
# not stay valid for weeks
MAX_GRACE = timedelta(days=7)
# PagerDuty never takes a secret of ours; where it shows the one it made (vendor README §3.1)
PAGERDUTY_SECRET_HINT = (
    "PagerDuty generates webhook secrets itself and shows one only when a v3 webhook "
    "subscription is created or its secret regenerated: webhook_subscription."
    "delivery_method.secret in the answer, see `im integration webhook-setup {name}`; "
    "pass it with --new-secret -"
)


def new_secret(kind: str) -> str:
    """A fresh random webhook secret in the format the integration type's scheme expects.
    Writes nothing."""
    if kind == "servicenow":  # Standard Webhooks secrets are whsec_<base64 of 24+ bytes>
        return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    return secrets.token_urlsafe(24)


def parse_grace(text: str) -> timedelta:
    """``24h``, ``90m``, ``0`` -> a timedelta (``rotate`` checks the range). Raises
    ValidationError for what is not a duration."""
    return timedelta(seconds=parse_duration(text, "--grace", 0, math.inf))


class Accepted:
    """The opened webhook secrets a delivery may be signed with: the current one, and the
    previous one while its grace lasts (checked at each delivery's ``now``).

    Each opened value is kept with the sealed value it came from: opening them for every
    delivery (reading the key, two unseals) was the larger part of receiving one. A changed
    sealed value (configure, rotate-secret, a master key rotation) is opened again."""

    def __init__(self) -> None:
        self._opened: dict[tuple[int, str], tuple[bytes, str | None]] = {}

    def __call__(self, db: Database, integration: Mapping[str, Any], now: datetime) -> list[str]:
        """Raises SecretError when the master key does not open them."""
        names = (WEBHOOK_SECRET.name, PREVIOUS_WEBHOOK_SECRET)
        stored = rows.sealed_with_expiry(db, integration["id"], names)
        found = []
        for name in names:
            if name not in stored:
                continue
            sealed, until = stored[name]
            if name == PREVIOUS_WEBHOOK_SECRET and not in_grace(until, now):
                continue
            kept = self._opened.get((integration["id"], name))
            if kept is None or kept[0] != sealed:
                kept = (sealed, secret(db, integration, name))
                self._opened[(integration["id"], name)] = kept
            if kept[1]:
                found.append(kept[1])
        return found


@dataclass(frozen=True)
class Rotation:
    integration: str
    previous_until: str | None  # when the replaced secret stops being accepted, if kept
    changes: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


def rotate(
    db: Database,
    clock: Clock,
    name_or_id: str,
    *,
    grace: timedelta = DEFAULT_GRACE,
    value: str | None = None,
) -> Rotation:
    """Make ``value`` (or, except for PagerDuty, a new generated secret) the integration's
    webhook secret, keeping the current one valid for ``grace``. A previous secret still in
    its grace is dropped: only two are valid at once. Writes one transaction.

    Raises UsageError for PagerDuty without ``value``, ValidationError for a grace out of
    range, an unusable value or the current one; NotFoundError, SecretError.
    """
    if not timedelta(0) <= grace <= MAX_GRACE:
        raise ValidationError(
            f"--grace must be between 0 and {MAX_GRACE.days}d",
            "finish the switch within a week; rotate again if it takes longer",
        )
    now = clock.now()
    stamp = format_time(now)
    with write(db):
        integration = find(db, name_or_id)
        name, kind, integration_id = integration["name"], integration["type"], integration["id"]
        if value is None and kind == "pagerduty":
            raise UsageError(
                f"{name} is a PagerDuty integration: --new-secret is required",
                PAGERDUTY_SECRET_HINT.format(name=name),
            )
        generated = value is None
        fresh = new_secret(kind) if value is None else value
        check_secret("new secret", fresh)
        current = secret(db, integration, WEBHOOK_SECRET.name)
        if current == fresh:
            raise ValidationError(
                "the new secret is the one in use",
                "give the secret the external system generated, or leave --new-secret out",
            )
        # an expired previous secret goes silently: it stopped counting when its grace ended
        dropped_until = previous_webhook_secret_until(db, integration_id, now)
        rows.delete_secret(db, integration_id, PREVIOUS_WEBHOOK_SECRET)
        key = master_key(db)
        previous_until = None
        if current and grace:
            previous_until = format_time(now + grace)
            put_secret(
                db, key, integration_id, PREVIOUS_WEBHOOK_SECRET, current, stamp, previous_until
            )
        put_secret(db, key, integration_id, WEBHOOK_SECRET.name, fresh, stamp)
        rows.update(db, integration_id, {"updated_at": stamp})
    made = "generated" if generated else "stored"
    changes = [f"{name}: new webhook secret {made}; deliveries signed with it are accepted"]
    if previous_until:
        changes.append(f"deliveries signed with the old secret are accepted until {previous_until}")
    elif current:
        changes.append("deliveries signed with the old secret are refused from now on (no grace)")
    else:
        changes.append(f"{name} had no webhook secret before")
    if dropped_until:
        changes.append(
            f"the secret before it (accepted until {dropped_until}) is no longer accepted: "
            "only two are valid at once"
        )
    return Rotation(name, previous_until, changes, _next_steps(name, kind, previous_until))


def _next_steps(name: str, kind: str, previous_until: str | None) -> list[str]:
    steps = []
    if kind == "pagerduty":
        # PagerDuty made this secret and signs with it already; what is left is to stop it
        # signing with the old one (e.g. delete the old subscription)
        steps.append("make sure PagerDuty no longer signs deliveries with the old secret")
    else:
        steps.append(
            f"configure the new secret in {kind}: `im integration webhook-setup {name} "
            "--show-secret` prints it with where it goes"
        )
    if previous_until:
        steps.append(
            f"then stop accepting the old one: `im integration rotate-secret {name} --finish` "
            f"(it stops by itself at {previous_until})"
        )
    return steps


def finish(db: Database, clock: Clock, name_or_id: str) -> Rotation:
    """End a rotation's grace now: the previous webhook secret is no longer accepted.
    Writes one transaction.

    Raises StateError when no previous secret is kept, NotFoundError.
    """
    now = clock.now()
    with write(db):
        integration = find(db, name_or_id)
        name = integration["name"]
        until = previous_webhook_secret_until(db, integration["id"], now)
        if not rows.delete_secret(db, integration["id"], PREVIOUS_WEBHOOK_SECRET):
            raise StateError(
                f"{name} has no rotation of its webhook secret in progress",
                f"start one with `im integration rotate-secret {name}`",
            )
        rows.update(db, integration["id"], {"updated_at": format_time(now)})
    if until is None:  # it had expired already: removing it changes nothing in effect
        change = f"{name}: the old webhook secret had already stopped being accepted; removed"
    else:
        change = f"{name}: the old webhook secret is no longer accepted (it was until {until})"
    return Rotation(name, None, [change, "only the current webhook secret is accepted"])
