"""API tokens (SPEC §9): the bearer tokens the REST API authenticates with.

A token is ``imt_`` and 43 random URL-safe characters (256 bits). It is shown once, when it is
created; the database keeps only its SHA-256 (a fast hash is enough for a random 256-bit
secret: there is nothing to guess) and its first 8 characters, so a person can tell tokens
apart. The API acts as the token's principal.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time, parse_time
from im.errors import ImError, NotFoundError, StateError, ValidationError
from im.security.principals import check_principal
from im.store import tokens as rows
from im.store.db import write

PREFIX = "imt_"
SHOWN_CHARACTERS = 8
# Recording every use would make every API read a write; once a minute is enough to tell
# a token in use from a forgotten one.
TOUCH_INTERVAL = timedelta(minutes=1)
HOW_TO_GET_ONE = (
    'create one with `im token create NAME` and send it as "Authorization: Bearer <token>"'
)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_MAX_PRESENTED = 200  # ours are 47 characters; anything much longer is not worth hashing


class AuthenticationError(ImError):
    """A request without a valid token. The message never quotes what was presented."""


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    principal: str
    prefix: str
    created_at: str
    created_by: str
    last_used_at: str | None
    revoked_at: str | None


@dataclass(frozen=True)
class Issued:
    token: Token
    secret: str  # the token itself: show it once, never store it


def generate() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """The SHA-256 (hex) the database keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def matches(token: str, stored_digest: str) -> bool:
    """Whether ``token`` is the one ``stored_digest`` was made from, in constant time."""
    return hmac.compare_digest(digest(token), stored_digest)


def _token(row: dict[str, Any]) -> Token:
    return Token(**{k: v for k, v in row.items() if k != "token_hash"})


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValidationError(
            f"token name {name[:70]!r} is not valid",
            "use letters, digits, _ . and -, starting with a letter (e.g. ci-deploy)",
        )
    return name


def issue(db: Database, clock: Clock, actor: str, name: str, principal: str) -> Issued:
    """Create a token NAME that acts as ``principal``. Writes one transaction.

    Raises ValidationError for a bad name or principal, StateError when a live token has the
    name already.
    """
    check_name(name)
    owner = check_principal(principal)
    secret = generate()
    now = format_time(clock.now())
    with write(db):
        named = rows.by_name(db, name)
        if named and named[0]["revoked_at"] is None:
            raise StateError(
                f"a token named {name!r} exists already",
                f"pick another name, or revoke it first with `im token revoke {name}`",
            )
        token_id = rows.insert(
            db,
            {
                "name": name,
                "principal": owner,
                "token_hash": digest(secret),
                "prefix": secret[:SHOWN_CHARACTERS],
                "created_at": now,
                "created_by": actor,
            },
        )
        row = rows.get(db, token_id)
    assert row is not None
    return Issued(_token(row), secret)


def listing(db: Database) -> list[Token]:
    """Every token, revoked ones included, oldest first. Never the tokens themselves."""
    return [_token(r) for r in rows.all_rows(db)]


def _find(db: Database, ref: str) -> dict[str, Any]:
    key = ref.strip()
    if key.isdigit():
        row = rows.get(db, int(key))
        if row is not None:
            return row
    else:
        named = rows.by_name(db, key)
        if named:
            return named[0]
    live = rows.live_names(db)
    hint = f"tokens: {', '.join(live)}" if live else "there are no live tokens"
    raise NotFoundError(f"no token {ref[:70]!r}", f"{hint}; see `im token list`")


def find(db: Database, ref: str) -> Token:
    """The token with id or name ``ref``. Raises NotFoundError."""
    return _token(_find(db, ref))


def revoke(db: Database, clock: Clock, ref: str) -> Token:
    """Revoke the token with id or name ``ref``: the API refuses it from now on. Writes.

    Raises NotFoundError when no token matches, StateError when it was revoked already.
    """
    now = format_time(clock.now())
    with write(db):
        row = _find(db, ref)
        if not rows.revoke(db, row["id"], now):
            raise StateError(f"token {row['name']} (id {row['id']}) was revoked already")
        revoked = rows.get(db, row["id"])
    assert revoked is not None
    return _token(revoked)


def authenticate(db: Database, clock: Clock, presented: str) -> Token:
    """The live token ``presented`` is, its use recorded (at most once a minute, so a read
    rarely writes).

    Raises AuthenticationError for an unknown or revoked token.
    """
    row = None
    if presented.startswith(PREFIX) and len(presented) <= _MAX_PRESENTED:
        row = rows.by_hash(db, digest(presented))
    if row is None or not matches(presented, row["token_hash"]):
        raise AuthenticationError("the bearer token is not valid", HOW_TO_GET_ONE)
    if row["revoked_at"] is not None:
        raise AuthenticationError(
            f"the token {row['name']} was revoked at {row['revoked_at']}", HOW_TO_GET_ONE
        )
    now = clock.now()
    last = row["last_used_at"]
    if last is None or parse_time(last) <= now - TOUCH_INTERVAL:
        at = format_time(now)
        with write(db):
            rows.touch(db, row["id"], at, format_time(now - TOUCH_INTERVAL))
        row["last_used_at"] = at
    return _token(row)
