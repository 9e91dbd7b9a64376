"""The SQLite store: one database file holds all state. Plain functions, one module per table
family; every write happens inside ``write(db)``."""

from __future__ import annotations

import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from im.clock import Clock, format_time
from im.errors import DatabaseError
from im.model import Role
from im.security.secrets import MasterKey, new_database_key
from im.store import audit, locks, meta, principals, schema
from im.store.db import busy_timeout, connect, create_file, database_path, enable_wal, write

__all__ = ["InitResult", "database_path", "initialise", "open_database", "write"]


def open_database(path: Path) -> Database:
    """Open an initialised database, bringing its schema up to date. Raises DatabaseError."""
    db = connect(path)
    if not db["_sqlite_migrations"].exists():
        tables = db.table_names()
        raise DatabaseError(
            f"{path} is not an im database" if tables else f"{path} was never initialised",
            "run `im init` for a new database, or pass the right --db PATH",
        )
    if schema.pending(db):
        with write(db):
            if schema.pending(db):  # another process may have migrated while we waited
                schema.apply(db)
    meta.require(db, "install_id")
    return db


@dataclass(frozen=True)
class InitResult:
    db: Database
    path: Path
    created: bool
    install_id: str
    key_source: str
    key_id: str
    granted_to: str | None


def initialise(path: Path, clock: Clock, principal: str) -> InitResult:
    """Create and initialise the database at ``path``, or open it when it exists already.

    Only a new database makes ``principal`` an administrator. Nothing is left behind when
    creation fails. Raises DatabaseError, SecretError.
    """
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise DatabaseError(f"{path} is not a regular file", "pass --db with a file path")
    if path.exists() and _has_tables(path):
        db = open_database(path)
        return InitResult(
            db,
            path,
            False,
            meta.require(db, "install_id"),
            meta.require(db, "key_source"),
            meta.require(db, "key_id"),
            None,
        )
    with locks.key_store(wait=busy_timeout()):
        key = new_database_key()  # before the file exists: a key error leaves nothing behind
    made = False
    try:
        create_file(path)
        made = True
    except FileExistsError:
        pass  # empty (e.g. from mktemp), or another `im init` is filling it: see _populate
    except OSError as exc:
        raise DatabaseError(f"cannot create the database {path}: {exc.strerror}") from None
    try:
        if not made:
            os.chmod(path, 0o600)  # ours to fill, privately
        db = connect(path)
        enable_wal(db)
        if not _populate(db, key, clock, principal):
            return initialise(path, clock, principal)  # another `im init` got there first
    except BaseException:
        if made:
            _remove(path)
        raise
    install_id = meta.require(db, "install_id")
    return InitResult(db, path, True, install_id, recorded_source(key), key.key_id, principal)


def _populate(db: Database, key: MasterKey, clock: Clock, principal: str) -> bool:
    """Fill a new database. False when another process initialised it while we waited."""
    now = format_time(clock.now())
    with write(db):
        if db["meta"].exists() and meta.get(db, "install_id") is not None:
            return False
        schema.apply(db)
        meta.put(db, "install_id", uuid.uuid4().hex[:12])
        meta.put(db, "created_at", now)
        meta.put(db, "key_source", recorded_source(key))
        meta.put(db, "key_id", key.key_id)
        principals.grant(db, principal, Role.ADMINISTRATOR, "", "im init", now)
        audit.insert(
            db,
            {
                "at": now,
                "principal": principal,
                "via": "cli",
                "action": "access.grant",
                "target": f"for {principal}",
                "decision": "allow",
                "reason": "im init makes the creator of a new database its administrator",
                "outcome": "ok",
            },
        )
    return True


def recorded_source(key: MasterKey) -> str:
    """What the database records about where its key lives: env, keyring, or the file path."""
    return key.location if key.source == "file" else key.source


def _has_tables(path: Path) -> bool:
    """Whether the file holds a database already. A file with none is ours to fill: empty,
    or made by another `im init` that has not committed yet (it waits in _populate)."""
    db = connect(path)
    try:
        return bool(db.table_names())
    finally:
        db.close()


def _remove(path: Path) -> None:
    """Undo a failed init of a file we created. A file that was there before is left as it
    was found, side files too: another `im init` may be filling it."""
    for suffix in ("-wal", "-shm", "-journal", ""):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
