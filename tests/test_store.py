"""The database: creation, file modes, WAL, migrations, and writers across processes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from im.store import locks, open_database
from im.store import principals as bindings
from im.store.db import FairLock
from tests.conftest import Im


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_private_wal_database_and_key_file(im: Im, tmp_path: Path) -> None:
    out = im.ok("init", "--format", "json")
    assert '"created": true' in out
    assert _mode(im.db_path) == 0o600
    key_file = tmp_path / "config" / "im" / "master.key"
    assert _mode(key_file) == 0o600
    assert str(key_file) in out  # the output says where the key lives
    assert im.db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert im.db().execute("PRAGMA foreign_keys").fetchone() is not None


def test_init_makes_only_the_first_caller_an_administrator(im: Im) -> None:
    im.ok("init")
    again = im("init", env={"IM_USER": "mallory"})
    assert again.exit_code == 0
    assert "already initialised" in again.stderr
    db = open_database(im.db_path)
    assert [(b["principal"], b["role"]) for b in bindings.bindings(db)] == [
        ("alice", "platform.administrator")
    ]


def test_init_keeps_install_id(im: Im) -> None:
    first = im.ok("init", "--format", "json")
    second = im.ok("init", "--format", "json")
    install = [line for line in first.splitlines() if "install_id" in line]
    assert install and install == [line for line in second.splitlines() if "install_id" in line]


def test_commands_refuse_a_missing_database(im: Im) -> None:
    result = im("incident", "list")
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"error: no database at {im.db_path} (run `im init` first, or pass --db PATH / set IM_DB)\n"
    )
    assert not im.db_path.exists()


def test_commands_refuse_a_file_that_is_not_a_database(im: Im) -> None:
    im.db_path.write_text("not sqlite at all, just some text " * 100)
    result = im("incident", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: cannot open database {im.db_path}: file is not a database"
    )
    assert result.stderr.count("\n") == 1


def test_commands_refuse_a_foreign_sqlite_database(im: Im) -> None:
    conn = sqlite3.connect(im.db_path)
    conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.commit()
    conn.close()
    result = im("incident", "list")
    assert result.exit_code == 1
    assert "is not an im database" in result.stderr
    assert (
        "_sqlite_migrations"
        not in sqlite3.connect(im.db_path)
        .execute("SELECT group_concat(name) FROM sqlite_master")
        .fetchone()[0]
    )


def test_db_option_and_env_var_choose_the_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from im.cli import cli

    target = tmp_path / "elsewhere" / "chosen.db"
    runner = CliRunner()
    result = runner.invoke(cli, ["--db", str(target), "init"])
    assert result.exit_code == 0, result.stderr
    assert target.exists()
    by_env = runner.invoke(cli, ["incident", "list"], env={"IM_DB": str(target)})
    assert by_env.exit_code == 0, by_env.stderr


HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE meta SET value = 'held' WHERE key = 'created_at'")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    """
)


def _hold_write_lock(db_path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db_path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_writer_waits_for_another_process_and_then_succeeds(initialised: Im) -> None:
    holder = _hold_write_lock(initialised.db_path, 1.0)
    try:
        result = initialised("incident", "create", "--title", "waits for the lock")
    finally:
        holder.wait(timeout=10)
    assert result.exit_code == 0, result.stderr
    db = initialised.db()
    # The holder committed first, then our write landed: both are there.
    assert db.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()[0] == "held"
    assert db.execute("SELECT title FROM incidents").fetchall() == [("waits for the lock",)]


def test_a_writer_gives_up_after_the_busy_timeout_naming_the_holder(
    initialised: Im, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IM_BUSY_TIMEOUT", "0.3")
    holder = _hold_write_lock(initialised.db_path, 5.0)
    try:
        started = time.monotonic()
        result = initialised("incident", "create", "--title", "never lands")
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: the database is locked by another process after waiting 0.3 s"
    )
    assert f"pid {holder.pid}" in result.stderr
    assert result.stderr.count("\n") == 1
    assert waited >= 0.3  # it did wait before failing
    assert initialised.db().execute("SELECT count(*) FROM incidents").fetchone()[0] == 0


def test_two_inits_at_once_make_one_database(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    env = {**os.environ, "IM_DB": str(path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "im.cli", "init", "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    reports = [json.loads(out) for out, _ in outputs]
    assert sorted(r["created"] for r in reports) == [False, False, True]
    assert len({r["install_id"] for r in reports}) == 1
    db = open_database(path)
    assert len(bindings.bindings(db)) == 1


def test_init_fills_a_database_another_init_made_but_has_not_filled_yet(im: Im) -> None:
    # What a second `im init` sees between the first one's switch to WAL and its commit.
    conn = sqlite3.connect(im.db_path)
    assert conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    conn.close()
    assert im.db_path.stat().st_size > 0
    assert '"created": true' in im.ok("init", "--format", "json")
    assert [(b["principal"], b["role"]) for b in bindings.bindings(im.db())] == [
        ("alice", "platform.administrator")
    ]


def test_init_waits_for_another_process_making_the_master_key(im: Im, tmp_path: Path) -> None:
    # Two inits each making a key would seal one database with a key that was replaced.
    with locks.key_store():
        result = im("init", env={"IM_BUSY_TIMEOUT": "0.2"})
    assert result.exit_code == 3
    assert result.stderr == (
        "error: another im process is making or rotating the master key (wait for it to finish)\n"
    )
    assert not im.db_path.exists()
    assert not (tmp_path / "config" / "im" / "master.key").exists()


def test_writers_of_one_process_take_the_database_in_the_order_they_asked() -> None:
    """The lock before BEGIN IMMEDIATE: a thread that writes again right after its commit
    (the applier) queues behind the ones already waiting (the webhook writer), each waiter
    gets it exactly once, and one that waits too long gives up (the busy timeout)."""
    lock = FairLock()
    assert lock.acquire(1) and lock.acquire(1)  # reentrant, as nested writes are
    got: list[str] = []

    def writer(name: str) -> None:
        assert lock.acquire(5)
        got.append(name)
        lock.release()

    waiting = []
    for name in ("receiver", "dispatcher", "heartbeat"):
        thread = threading.Thread(target=writer, args=(name,))
        thread.start()
        waiting.append(thread)
        while len(lock._waiting) < len(waiting):  # queued behind the holder
            time.sleep(0.001)
    lock.release()
    lock.release()
    assert lock.acquire(5)  # the applier again: last in line
    got.append("applier")
    lock.release()
    for thread in waiting:
        thread.join()
    assert got == ["receiver", "dispatcher", "heartbeat", "applier"]

    lock.acquire(1)
    gave_up: list[bool] = []
    late = threading.Thread(target=lambda: gave_up.append(lock.acquire(0.05)))
    late.start()
    late.join()
    lock.release()
    assert gave_up == [False] and lock.acquire(0.05)  # nothing left behind by the one that gave up
    lock.release()
