"""Opening the one SQLite database: location, file modes, PRAGMAs, write transactions.

Every write runs in ``write(db)``, which starts with ``BEGIN IMMEDIATE``: with several
processes (CLI, daemon, cron) writing, a deferred ``BEGIN`` that later upgrades to a write
lock fails with "database is locked" instead of waiting (NOTES.md). A writer waits up to the
busy timeout (5 s by default, ``$IM_BUSY_TIMEOUT`` seconds) and only then fails, naming the
processes that have the database open.

Writers of one process (the daemon's receiver, dispatcher, applier, API, heartbeat) also
queue on a lock per database file before ``BEGIN IMMEDIATE``: SQLite's busy handler sleeps
up to 100 ms between tries, which under load made a handoff between two of our own threads
cost more than the transaction; the lock hands over at once.
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
from sqlite_utils import Database

from im.errors import DatabaseBusyError, DatabaseError

DEFAULT_BUSY_TIMEOUT = 5.0


class FairLock:
    """A reentrant lock handed to the threads that ask for it in the order they asked.
    ``threading.RLock`` lets the thread that releases it take it straight back: the
    applier, writing event after event, then kept the webhook receiver's writer waiting for
    its whole batch. Each waiter parks on a gate of its own, and a release opens exactly
    the next one (waking every waiter on each release cost more than the transactions)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiting: collections.deque[tuple[int, threading.Lock]] = collections.deque()

    def acquire(self, timeout: float) -> bool:
        me = threading.get_ident()
        with self._guard:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._waiting:
                self._owner, self._depth = me, 1
                return True
            gate = threading.Lock()
            gate.acquire()
            entry = (me, gate)
            self._waiting.append(entry)
        if gate.acquire(timeout=timeout):
            return True  # handed over: release made us the owner
        with self._guard:
            if self._owner == me:  # handed over just as the wait ran out
                return True
            self._waiting.remove(entry)
            return False

    def release(self) -> None:
        with self._guard:
            self._depth -= 1
            if self._depth:
                return
            if self._waiting:
                self._owner, gate = self._waiting.popleft()
                self._depth = 1
                gate.release()
            else:
                self._owner = None


# one lock per database file, for the writers of this process (reentrant: a thread that
# writes through a second connection while in a transaction meets the busy timeout, as
# before, rather than a deadlock)
_FILE_LOCKS: dict[str, FairLock] = {}


@dataclass
class _Opened:
    """What write() knows of a connection: its file, that file's lock, the busy timeout it
    was opened with, and what to do once the current transaction commits."""

    path: Path
    lock: FairLock
    timeout: float
    after_commit: dict[str, Callable[[Path], None]] = field(default_factory=dict)


_OPENED: weakref.WeakKeyDictionary[Database, _Opened] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def _file_lock(db: Database, path: Path) -> Database:
    with _GUARD:
        lock = _FILE_LOCKS.setdefault(os.path.realpath(path), FairLock())
        _OPENED[db] = _Opened(path, lock, busy_timeout())
    return db


def after_commit(db: Database, name: str, action: Callable[[Path], None]) -> None:
    """Call ``action(database file)`` once the write transaction under way commits (once per
    ``name`` however often asked); never if it rolls back. Outside a transaction, at once."""
    opened = _OPENED.get(db)
    if opened is None:
        return
    if not db.conn.in_transaction:
        action(opened.path)
        return
    opened.after_commit[name] = action


def database_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--db PATH``, else ``$IM_DB``, else ``<user data dir>/im.db``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("IM_DB"):
        return Path(os.environ["IM_DB"]).expanduser()
    return Path(platformdirs.user_data_dir("im", appauthor=False)) / "im.db"


def busy_timeout() -> float:
    raw = os.environ.get("IM_BUSY_TIMEOUT")
    if not raw:
        return DEFAULT_BUSY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise DatabaseError(f"IM_BUSY_TIMEOUT must be a number of seconds, not {raw!r}") from None
    return max(value, 0.0)


def create_file(path: Path) -> None:
    """Create an empty database file with mode 0600 (its directory 0700 when we make it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


def connect(path: Path) -> Database:
    """Open an existing database file. Raises DatabaseError when it is missing or not SQLite."""
    try:
        exists = path.is_file()
    except (OSError, ValueError):
        raise DatabaseError(f"cannot use {str(path)[:200]} as a database path") from None
    if not exists:
        if path.exists():
            raise DatabaseError(f"{path} is not a regular file", "pass --db with a file path")
        raise DatabaseError(
            f"no database at {path}", "run `im init` first, or pass --db PATH / set IM_DB"
        )
    try:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves (see write()).
        conn = sqlite3.connect(
            path, timeout=busy_timeout(), isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout() * 1000)}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(
            f"cannot open database {path}: {exc}",
            "check the path and its permissions, or run `im init --db NEW_PATH`",
        ) from None
    return _file_lock(Database(conn), path)


def enable_wal(db: Database) -> None:
    """WAL is a property of the file: set once when the database is created."""
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise DatabaseError(f"could not switch the database to WAL mode (got {mode})")


@contextmanager
def write(db: Database) -> Iterator[Database]:
    """One write transaction, started with BEGIN IMMEDIATE, committed or rolled back whole.

    Nested calls join the outer transaction (sqlite-utils' atomic() uses savepoints inside it).
    Raises DatabaseBusyError when the write lock is not had within the busy timeout.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    opened = _OPENED.get(db)
    if opened is not None and not opened.lock.acquire(opened.timeout):
        raise busy_error(db, sqlite3.OperationalError("database is locked"))
    actions: dict[str, Callable[[Path], None]] = {}
    try:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise busy_error(db, exc) from None
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            db.rollback()
            raise busy_error(db, exc) from None
        if opened is not None:
            actions = opened.after_commit
    finally:
        if opened is not None:
            opened.after_commit = {}
            opened.lock.release()
    if opened is not None:
        for action in actions.values():
            action(opened.path)


def _stored(value: Any) -> Any:
    """A value as a column holds it: lists and dicts as JSON (as sqlite-utils stores them)."""
    return json.dumps(value) if isinstance(value, dict | list | tuple) else value


def insert_row(db: Database, table: str, values: dict[str, Any]) -> int:
    """Insert one row (inside the caller's write transaction) and return its id. Lists and
    dicts are stored as JSON. One prepared statement: on the webhook path, sqlite-utils'
    ``insert`` (which inspects the table first) cost a quarter of receiving a delivery."""
    columns = ", ".join(f"[{name}]" for name in values)
    marks = ", ".join("?" for _ in values)
    params = [_stored(v) for v in values.values()]
    cursor = db.execute(f"INSERT INTO [{table}] ({columns}) VALUES ({marks})", params)
    if cursor.lastrowid is None:
        raise DatabaseError(f"inserting into {table} returned no id")
    return int(cursor.lastrowid)


def update_row(db: Database, table: str, row_id: int, values: dict[str, Any]) -> None:
    """Set columns of the row with this id (inside the caller's write transaction). Raises
    DatabaseError when there is no such row. One statement, for the same reason as
    ``insert_row``: sqlite-utils' ``update`` reads the table's shape and the row first."""
    if values:
        sets = ", ".join(f"[{name}] = ?" for name in values)
        params = [*(_stored(v) for v in values.values()), row_id]
        found = db.execute(f"UPDATE [{table}] SET {sets} WHERE id = ?", params).rowcount
    else:
        found = len(db.execute(f"SELECT 1 FROM [{table}] WHERE id = ?", [row_id]).fetchall())
    if found != 1:
        raise DatabaseError(f"no row {row_id} in {table} to update")


def busy_error(db: Database, exc: sqlite3.OperationalError) -> DatabaseError:
    """Turn SQLite's "database is locked" into an error that says who else has the file open."""
    text = str(exc)
    if "locked" not in text and "busy" not in text:
        return DatabaseError(f"database error: {text}")
    path = database_file(db)
    holders = ", ".join(_processes_with_open(path)) if path else ""
    return DatabaseBusyError(
        f"the database is locked by another process after waiting {busy_timeout():g} s"
        + (f" (open in: {holders})" if holders else ""),
        "retry when it finishes, or raise IM_BUSY_TIMEOUT",
    )


def database_file(db: Database) -> Path | None:
    for _, name, filename in db.execute("PRAGMA database_list").fetchall():
        if name == "main" and filename:
            return Path(filename)
    return None


def _processes_with_open(path: Path) -> list[str]:
    """Other processes that have the database (or its WAL) open: ``pid 123 (im daemon)``.

    Linux only (reads /proc); elsewhere it names nobody rather than guessing.
    """
    targets = {str(path), f"{path}-wal", f"{path}-shm"}
    found: list[str] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
            if not any(os.readlink(fd) in targets for fd in fds):
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        command = " ".join(_short_command(argv))
        found.append(f"pid {entry.name} ({command})" if command else f"pid {entry.name}")
    return sorted(found)


def _short_command(argv: list[bytes]) -> list[str]:
    words = [a.decode(errors="replace") for a in argv if a]
    if words and Path(words[0]).name.startswith("python") and len(words) > 1:
        words = words[1:]
    if words:
        words[0] = Path(words[0]).name
    # Only the command words: options may carry secrets (`--password x`) and are never shown.
    shown: list[str] = []
    for word in words[:3]:
        if word.startswith("-"):
            break
        shown.append(word)
    return shown
