"""Wake-ups for the daemon's engine: a commit that queues outbox rows says so at once, after
the commit and never for a rollback, and a stray or lost datagram changes nothing."""

from __future__ import annotations

import queue
import sys
from pathlib import Path

import pytest

from im.store import open_database, wake
from im.store.db import after_commit, write
from tests.conftest import Im

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="wake-ups use Linux's abstract sockets"
)


def listening(db_path: Path) -> tuple[wake.Listener, queue.Queue[set[bytes]]]:
    woken: queue.Queue[set[bytes]] = queue.Queue()
    return wake.Listener(db_path, woken.put), woken


def test_actions_run_once_after_the_commit_and_never_after_a_rollback(initialised: Im) -> None:
    db = open_database(initialised.db_path)
    ran: list[tuple[str, bool]] = []

    def note(path: Path) -> None:
        ran.append((path.name, db.conn.in_transaction))

    with write(db):
        after_commit(db, "note", note)
        after_commit(db, "note", note)  # asked twice in one transaction: done once
        with write(db):  # a nested write joins the outer transaction
            after_commit(db, "note", note)
        assert ran == []
    assert ran == [("im.db", False)]
    with pytest.raises(RuntimeError), write(db):
        after_commit(db, "note", note)
        raise RuntimeError("rolled back")
    with write(db):
        pass
    assert ran == [("im.db", False)]  # the rolled-back one is forgotten, not carried over


def test_queuing_a_change_wakes_the_dispatcher_of_that_database(three: Im) -> None:
    listener, woken = listening(three.db_path)
    try:
        three.ok("incident", "create", "--title", "queued for three systems")
        assert woken.get(timeout=5) == {wake.DISPATCH}
        three.ok("incident", "list")  # reading queues nothing, so wakes nothing
        with pytest.raises(queue.Empty):
            woken.get(timeout=0.2)
    finally:
        listener.close()


def test_each_database_has_its_own_engine_and_a_second_listener_is_refused(
    tmp_path: Path,
) -> None:
    first, woken = listening(tmp_path / "a.db")
    try:
        with pytest.raises(OSError):
            wake.Listener(tmp_path / "a.db", lambda kinds: None)
        wake.poke(tmp_path / "b.db", wake.APPLY)  # nobody listens there: nothing happens
        wake.poke(tmp_path / "a.db", wake.APPLY)
        assert woken.get(timeout=5) == {wake.APPLY}
    finally:
        first.close()
    wake.poke(tmp_path / "a.db", wake.APPLY)  # the engine is gone: still no error
    again, _ = listening(tmp_path / "a.db")  # closing gave the name back
    again.close()
