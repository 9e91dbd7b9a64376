"""`im key rotate`: every stored secret re-sealed under a new master key (SPEC §9), the key kept
where the old one was, and a crash at any step leaving a database whose secrets open."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from keyring.errors import PasswordDeleteError
from sqlite_utils import Database

from im.config import rotation
from im.config.connection import ConnectorCache, secret
from im.config.integrations import secret_owner
from im.errors import SecretError
from im.security import secrets
from im.security.secrets import MasterKey, find_key, key_id, seal, unseal
from im.store import integrations as rows
from im.store import locks, meta, open_database, write
from tests.conftest import JIRA, PD, SECRETS, SNOW, Im

EXPECTED = {
    ("prod-snow", "password"): SECRETS["IM_PASSWORD"],
    ("prod-snow", "webhook_secret"): SECRETS["IM_WEBHOOK_SECRET"],
    ("prod-jira", "api_token"): SECRETS["IM_API_TOKEN"],
    ("prod-jira", "webhook_secret"): SECRETS["IM_WEBHOOK_SECRET"],
    ("prod-pd", "api_token"): SECRETS["IM_API_TOKEN"],
    ("prod-pd", "webhook_secret"): SECRETS["IM_WEBHOOK_SECRET"],
}


class Crash(BaseException):
    """The process dies here: nothing after it runs, no `except Exception` sees it."""


def opened(db_path: Path) -> dict[tuple[str, str], str | None]:
    """Every secret, opened the way the connectors open them, from a fresh connection."""
    db = open_database(db_path)
    try:
        return {
            (integration["name"], name): secret(db, integration, name)
            for integration in rows.all_rows(db)
            for name in rows.secret_status(db, integration["id"])
        }
    finally:
        db.close()


def recorded(db_path: Path) -> tuple[str, str]:
    db = open_database(db_path)
    try:
        return meta.require(db, "key_source"), meta.require(db, "key_id")
    finally:
        db.close()


def secret_rows(db_path: Path) -> list[dict[str, Any]]:
    db = Database(db_path)
    try:
        return list(db.query("SELECT * FROM integration_secrets ORDER BY integration_id, name"))
    finally:
        db.close()


def file_key() -> MasterKey:
    key = secrets._from_file(False)
    assert key is not None
    return key


def assert_no_key_or_secret(text: str, *keys: bytes) -> None:
    for key in keys:
        assert base64.b64encode(key).decode() not in text
        assert base64.urlsafe_b64encode(key).decode() not in text
    for value in SECRETS.values():
        assert value not in text


def doctor_key_checks(im: Im) -> dict[str, tuple[str, str]]:
    result = im("doctor", "--offline", "--format", "json")
    report = json.loads(result.stdout)
    return {
        c["check"]: (c["status"], c["detail"])
        for c in report["checks"]
        if c["check"] in ("master key", "secrets")
    }


def assert_healthy(im: Im, key_id_now: str) -> None:
    """The secrets open to their values, and the doctor is content with key and secrets."""
    assert opened(im.db_path) == EXPECTED
    checks = doctor_key_checks(im)
    assert checks["master key"][0] == "ok"
    assert key_id_now in checks["master key"][1]
    assert checks["secrets"] == ("ok", "the key opens all 6 secret(s) of 3 integration(s)")


# -- the key file (keyring is the fail backend in tests) ---------------------------------------


def test_rotate_reseals_every_secret_under_a_new_key_in_the_key_file(three: Im) -> None:
    old = file_key()
    before = secret_rows(three.db_path)
    assert recorded(three.db_path) == (str(secrets.key_file_path()), old.key_id)

    result = three("key", "rotate")

    assert result.exit_code == 0, result.stderr
    new = file_key()
    assert new.key != old.key
    assert result.stdout == (
        f"re-encrypted 6 secrets of 3 integrations with key {new.key_id} (was {old.key_id}); "
        f"the key is in {secrets.key_file_path()}\n"
    )
    assert_no_key_or_secret(result.stdout + result.stderr, old.key, new.key)
    assert recorded(three.db_path) == (str(secrets.key_file_path()), new.key_id)
    assert oct(secrets.key_file_path().stat().st_mode & 0o777) == "0o600"
    assert not secrets.staging_file_path().exists()
    assert not secrets.key_file_path().with_name("master.key.tmp").exists()
    after = secret_rows(three.db_path)
    assert len(after) == 6
    for was, now in zip(before, after, strict=True):
        owner = secret_owner(now["integration_id"], now["name"])
        assert now["key_id"] == new.key_id
        # only the ciphertext and its key id change: updated_at still says when the credential
        # was set (a pause for refused credentials waits for a newer one)
        assert {k: v for k, v in now.items() if k not in ("sealed", "key_id")} == {
            k: v for k, v in was.items() if k not in ("sealed", "key_id")
        }
        with pytest.raises(SecretError, match="does not open"):
            unseal(old, now["sealed"], owner)
        assert unseal(new, now["sealed"], owner) == unseal(old, was["sealed"], owner)
    assert_healthy(three, new.key_id)


def test_every_row_is_resealed_whatever_its_name_and_keeps_its_other_columns(three: Im) -> None:
    # e.g. the previous webhook secret, kept valid until it expires while a new one rolls out
    db = open_database(three.db_path)
    integration = rows.find(db, "prod-pd")
    assert integration is not None
    owner = secret_owner(integration["id"], "webhook_secret_previous")
    row: dict[str, Any] = {
        "integration_id": integration["id"],
        "name": "webhook_secret_previous",
        "sealed": seal(file_key(), "whsec_b2xkLXNlY3JldA==", owner),
        "key_id": file_key().key_id,
        "updated_at": "2026-11-01T00:00:00Z",
        "expires_at": "2026-12-01T00:00:00Z",
    }
    with write(db):
        db["integration_secrets"].insert(row)
    db.close()

    output = three.ok("key", "rotate")

    assert output.startswith("re-encrypted 7 secrets of 3 integrations ")
    [kept] = [r for r in secret_rows(three.db_path) if r["name"] == "webhook_secret_previous"]
    unchanged = {k: v for k, v in row.items() if k not in ("sealed", "key_id")}
    assert kept == dict(unchanged, sealed=kept["sealed"], key_id=file_key().key_id)
    assert unseal(file_key(), kept["sealed"], owner) == "whsec_b2xkLXNlY3JldA=="


def test_json_output_has_counts_key_ids_and_where_the_key_is(three: Im) -> None:
    old = file_key()
    result = three("key", "rotate", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "secrets": 6,
        "integrations": 3,
        "old_key_id": old.key_id,
        "new_key_id": file_key().key_id,
        "source": "file",
        "location": str(secrets.key_file_path()),
    }
    assert_no_key_or_secret(result.stdout + result.stderr, old.key, file_key().key)


def test_two_rotations_in_a_row_each_take_a_new_key(three: Im) -> None:
    ids = {file_key().key_id}
    for _ in range(2):
        three.ok("key", "rotate")
        ids.add(file_key().key_id)
    assert len(ids) == 3
    assert_healthy(three, file_key().key_id)


def test_a_database_without_secrets_still_gets_the_new_key(initialised: Im) -> None:
    old = file_key().key_id
    output = initialised.ok("key", "rotate")
    assert output.startswith("re-encrypted 0 secrets of 0 integrations ")
    assert recorded(initialised.db_path)[1] == file_key().key_id != old


def test_a_second_rotation_at_the_same_time_is_refused(three: Im) -> None:
    def refusal() -> Any:
        raise AssertionError("the test holds the lock first")

    with locks.exclusive(secrets.key_lock_path(), refusal):
        result = three("key", "rotate")
    assert result.exit_code == 3
    assert "another im process is making or rotating the master key" in result.stderr
    assert opened(three.db_path) == EXPECTED


def test_a_secret_that_does_not_open_stops_the_rotation_before_anything_changes(
    three: Im,
) -> None:
    old = file_key()
    db = open_database(three.db_path)
    with write(db):  # a ciphertext moved onto another row: it no longer opens
        db.execute(
            "UPDATE integration_secrets SET sealed = (SELECT sealed FROM integration_secrets "
            "WHERE name = 'password') WHERE name = 'api_token' AND integration_id = 2"
        )
    db.close()
    before = secret_rows(three.db_path)

    result = three("key", "rotate")

    assert result.exit_code == 1
    assert "integration:2:api_token does not open" in result.stderr
    assert "nothing was re-encrypted" in result.stderr
    assert secret_rows(three.db_path) == before
    assert recorded(three.db_path)[1] == old.key_id
    assert file_key().key == old.key
    assert not secrets.staging_file_path().exists()


# -- a daemon (another process) running across the rotation ---------------------------------


def test_a_running_daemon_keeps_opening_secrets_after_a_rotation(three: Im) -> None:
    daemon_db = open_database(three.db_path)  # the daemon's connection, open all along
    cache = ConnectorCache(daemon_db)
    integration = rows.find(daemon_db, "prod-pd")
    assert integration is not None
    connector = cache.get(integration)

    three.ok("key", "rotate")

    # keys are looked up per call (meta, then the keyring or key file): nothing to reload
    assert secret(daemon_db, integration, "api_token") == SECRETS["IM_API_TOKEN"]
    # a cached connector holds opened values, which a rotation does not change
    again = rows.find(daemon_db, "prod-pd")
    assert again is not None and cache.get(again) is connector
    cache.close()
    daemon_db.close()


def test_a_secret_read_while_a_rotation_commits_is_read_again(
    three: Im, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon_db = open_database(three.db_path)
    integration = rows.find(daemon_db, "prod-snow")
    assert integration is not None
    sealed_secret = rows.sealed_secret
    calls: list[int] = []

    def rotated_right_after(db: Database, integration_id: int, name: str) -> bytes | None:
        value = sealed_secret(db, integration_id, name)
        calls.append(integration_id)
        if len(calls) == 1:  # the old ciphertext is read; then another process rotates
            other = open_database(three.db_path)
            rotation.rotate(other)
            other.close()
        return value

    monkeypatch.setattr(rows, "sealed_secret", rotated_right_after)
    assert secret(daemon_db, integration, "password") == SECRETS["IM_PASSWORD"]
    assert len(calls) == 2
    daemon_db.close()


# -- crashes ------------------------------------------------------------------------------


def _crash_when_staging_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    replace = os.replace

    def crash(src: Any, dst: Any) -> None:
        if Path(dst) == secrets.staging_file_path():
            raise Crash  # the temporary file is written, the staging file not yet there
        replace(src, dst)

    monkeypatch.setattr(secrets.os, "replace", crash)


def _crash_after_staging(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = secrets.stage_key

    def crash(key: MasterKey) -> str:
        stage(key)
        raise Crash

    monkeypatch.setattr(rotation, "stage_key", crash)


def _crash_midway_through_the_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    reseal = rows.reseal_secret
    done: list[str] = []

    def crash(*args: Any) -> None:
        if len(done) == 3:
            raise Crash
        reseal(*args)
        done.append(args[2])

    monkeypatch.setattr(rows, "reseal_secret", crash)


def _crash_before_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    put = meta.put

    def crash(db: Database, key: str, value: str) -> None:
        put(db, key, value)
        if key == "key_id":
            raise Crash

    monkeypatch.setattr(meta, "put", crash)


def _crash_after_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(key: MasterKey) -> None:
        raise Crash

    monkeypatch.setattr(rotation, "promote_key", crash)


def _crash_after_the_key_file_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(source: str) -> None:
        raise Crash

    monkeypatch.setattr(secrets, "discard_staged", crash)


CRASHES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], bool]] = {
    # step: (how to crash there, whether the database was committed with the new key)
    "while writing the staged key": (_crash_when_staging_is_written, False),
    "after staging the new key": (_crash_after_staging, False),
    "midway through the secrets": (_crash_midway_through_the_secrets, False),
    "just before the commit": (_crash_before_commit, False),
    "after the commit": (_crash_after_commit, True),
    "after replacing the key file": (_crash_after_the_key_file_is_replaced, True),
}


@pytest.mark.parametrize("step", CRASHES)
def test_a_crash_at_any_step_leaves_secrets_that_open(
    three: Im, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    crash_there, committed = CRASHES[step]
    old = file_key()
    with monkeypatch.context() as patched:
        crash_there(patched)
        db = open_database(three.db_path)
        with pytest.raises(Crash):
            rotation.rotate(db)
        db.close()

    source, now = recorded(three.db_path)
    assert source == str(secrets.key_file_path())
    assert (now != old.key_id) is committed
    assert find_key(source, now).key_id == now
    assert_healthy(three, now)

    # the next rotation finishes or replaces whatever was left, and cleans up
    result = three("key", "rotate")
    assert result.exit_code == 0, result.stderr
    assert f"(was {now})" in result.stdout
    assert not secrets.staging_file_path().exists()
    assert oct(secrets.key_file_path().stat().st_mode & 0o777) == "0o600"
    assert recorded(three.db_path)[1] == file_key().key_id
    assert_healthy(three, file_key().key_id)


def test_a_staged_key_left_by_a_crash_before_the_commit_is_harmless(three: Im) -> None:
    secrets._write_key_file(secrets.staging_file_path(), os.urandom(32))
    assert_healthy(three, file_key().key_id)
    three.ok("key", "rotate")
    assert not secrets.staging_file_path().exists()
    assert_healthy(three, file_key().key_id)


# -- the key in $IM_MASTER_KEY -------------------------------------------------------------


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch) -> bytes:
    key = os.urandom(32)
    monkeypatch.setenv("IM_MASTER_KEY", _b64(key))
    return key


@pytest.fixture
def env_three(env_key: bytes, im: Im) -> Iterator[Im]:
    im.ok("init")
    for name, args in (("prod-snow", SNOW), ("prod-jira", JIRA), ("prod-pd", PD)):
        im.ok("integration", "create", name, *args, env=SECRETS)
    assert recorded(im.db_path) == ("env", key_id(env_key))
    yield im


@pytest.mark.parametrize(
    ("new_value", "message"),
    [
        (None, "put a new key in $IM_NEW_MASTER_KEY"),
        ("not-a-key", "$IM_NEW_MASTER_KEY does not hold a 32-byte base64 key"),
        ("current", "$IM_NEW_MASTER_KEY holds the current master key"),
    ],
)
def test_an_env_key_needs_a_usable_new_key_in_im_new_master_key(
    env_three: Im, env_key: bytes, new_value: str | None, message: str
) -> None:
    env = {} if new_value is None else {"IM_NEW_MASTER_KEY": new_value}
    if new_value == "current":
        env["IM_NEW_MASTER_KEY"] = _b64(env_key)
    result = env_three("key", "rotate", env=env)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "make " in result.stderr and "os.urandom(32)" in result.stderr  # the MAKE_KEY hint
    assert_no_key_or_secret(result.stdout + result.stderr, env_key)
    assert recorded(env_three.db_path) == ("env", key_id(env_key))
    assert opened(env_three.db_path) == EXPECTED


def test_an_env_key_is_replaced_by_im_new_master_key(
    env_three: Im, env_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = os.urandom(32)
    result = env_three("key", "rotate", env={"IM_NEW_MASTER_KEY": _b64(new)})

    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        f"re-encrypted 6 secrets of 3 integrations with key {key_id(new)} "
        f"(was {key_id(env_key)}); the key is in $IM_NEW_MASTER_KEY\n"
    )
    assert "set IM_MASTER_KEY to the value of IM_NEW_MASTER_KEY" in result.stderr
    assert "restart the daemon" in result.stderr
    assert_no_key_or_secret(result.stdout + result.stderr, env_key, new)
    assert recorded(env_three.db_path) == ("env", key_id(new))
    assert not secrets.key_file_path().exists()  # nothing was written anywhere
    with pytest.raises(SecretError, match="is missing"):  # the old key opens nothing now
        opened(env_three.db_path)
    monkeypatch.setenv("IM_MASTER_KEY", _b64(new))
    assert_healthy(env_three, key_id(new))


# -- the OS keyring ------------------------------------------------------------------------


class MemoryKeyring:
    """A keyring backend in memory, standing in for the OS one."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, user: str) -> str | None:
        return self.entries.get((service, user))

    def set_password(self, service: str, user: str, password: str) -> None:
        self.entries[(service, user)] = password

    def delete_password(self, service: str, user: str) -> None:
        if self.entries.pop((service, user), None) is None:
            raise PasswordDeleteError("not found")


@pytest.fixture
def keyring(monkeypatch: pytest.MonkeyPatch) -> MemoryKeyring:
    backend = MemoryKeyring()
    monkeypatch.setattr(secrets, "_usable_keyring", lambda: backend)
    return backend


def test_a_keyring_key_is_replaced_in_the_keyring(keyring: MemoryKeyring, im: Im) -> None:
    im.ok("init")
    for name, args in (("prod-snow", SNOW), ("prod-jira", JIRA), ("prod-pd", PD)):
        im.ok("integration", "create", name, *args, env=SECRETS)
    old = base64.b64decode(keyring.entries[("im", "master-key")])
    assert recorded(im.db_path) == ("keyring", key_id(old))

    result = im("key", "rotate")

    assert result.exit_code == 0, result.stderr
    new = base64.b64decode(keyring.entries[("im", "master-key")])
    assert list(keyring.entries) == [("im", "master-key")]  # the staged copy is gone
    assert result.stdout.endswith(
        f"with key {key_id(new)} (was {key_id(old)}); the key is in keyring MemoryKeyring "
        "(im/master-key)\n"
    )
    assert_no_key_or_secret(result.stdout + result.stderr, old, new)
    assert recorded(im.db_path) == ("keyring", key_id(new))
    assert not secrets.key_file_path().exists()
    assert_healthy(im, key_id(new))


def test_a_crash_after_the_commit_leaves_the_key_in_the_keyring_staging_entry(
    keyring: MemoryKeyring, three: Im, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert recorded(three.db_path)[0] == "keyring"  # the keyring was there before `im init`
    with monkeypatch.context() as patched:
        _crash_after_commit(patched)
        db = open_database(three.db_path)
        with pytest.raises(Crash):
            rotation.rotate(db)
        db.close()
    staged = base64.b64decode(keyring.entries[("im", "master-key-next")])
    assert recorded(three.db_path)[1] == key_id(staged)
    assert_healthy(three, key_id(staged))

    three.ok("key", "rotate")
    assert list(keyring.entries) == [("im", "master-key")]
    assert_healthy(three, key_id(base64.b64decode(keyring.entries[("im", "master-key")])))
