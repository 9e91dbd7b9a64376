"""``im doctor``: checks the installation and says what to fix (SPEC §1, §8, §9).

Each check is ``ok``, ``warn`` (works, deserves attention) or ``FAIL`` (broken: something does
not sync until it is fixed), with a detail that names the problem and the fix:

- the database: it opens and is an im database, its schema is current, it is in WAL mode,
  its file mode is 0600;
- the master key: which source holds it, and that it opens every integration's secrets;
- the daemon: its heartbeat. **Decision:** no running daemon (never started, stopped, or a
  stale heartbeat) is a FAIL, as SPEC §8 makes "daemon not running" failing: nothing is sent
  or applied without it;
- per integration: enabled; reachability, TLS, credentials and permissions (the checks of
  `im integration test`, skipped with ``offline``); whether sending is paused (refused
  credentials FAIL, a rate limit warns); webhook activity (the last delivery received;
  deliveries refused at the door in the last hour, events waiting for a retry, and events
  that failed or were dead-lettered in the last hour; an inbound or bidirectional
  integration that never received one warns); the DLQ size (warns when not empty).
  **Decision:** a refused delivery (not authentic, malformed) is a FAIL while nothing was
  accepted after it (every delivery is being refused: nothing inbound syncs), and a warning
  once a later delivery was accepted (a stray or forged request; the secret works).

The checks read; the only write is the one `im integration test` makes itself (credentials
that work again resume an integration paused for refusing them). The database is opened
without bringing its schema up to date, so that the schema check reports what it found.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time, parse_time
from im.config.connection import TransportFor, run_checks
from im.config.integrations import PREVIOUS_WEBHOOK_SECRET, SECRETS, secret_owner
from im.errors import ImError, SecretError
from im.model import Direction
from im.security.secrets import ENV_VAR, MasterKey, find_key, unseal
from im.store import daemon, dead_letters, meta, schema, sync_state
from im.store import integrations as integration_rows
from im.store.db import connect
from im.sync.inbound import NOT_AUTHENTIC

# a doctor answers within seconds: a system that does not answer in 5 s is reported, not
# waited for with the 10 s a send allows
CHECK_TIMEOUT = 5.0
OK = "ok"
WARN = "warn"
FAIL = "FAIL"

FAILURE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Check:
    check: str
    status: str  # ok | warn | FAIL
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True unless a check failed (warnings pass)."""
        return all(c.status != FAIL for c in self.checks)

    def add(self, check: str, status: str, detail: str) -> None:
        self.checks.append(Check(check, status, detail))

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def diagnose(
    path: Path,
    clock: Clock,
    *,
    offline: bool = False,
    transport_for: TransportFor | None = None,
    only: Collection[str] | None = None,
    testable: Collection[str] | None = None,
) -> Report:
    """Run every check against the database at ``path``. ``offline`` skips the checks that
    reach the external systems; ``transport_for`` is how they are reached (None: the
    network); ``only`` limits the integrations checked (those the caller may see) and
    ``testable`` those whose connection is tested (a passing test lifts a credentials pause,
    so it takes the right to `im integration test`). Never raises for what it finds: a
    problem is a FAIL check."""
    report = Report()
    try:
        db = connect(path)
    except ImError as exc:
        report.add("database", FAIL, str(exc))
        return report
    try:
        if not _database(db, path, report):
            return report
        now = clock.now()
        _guarded(report, "master key", partial(_master_key, db, report))
        _guarded(report, "daemon", partial(_daemon, db, now, report))
        integrations = _guarded(report, "integrations", partial(integration_rows.all_rows, db))
        if integrations == []:
            report.add(
                "integrations",
                WARN,
                "none configured: nothing syncs; add one with `im integration create`",
            )
        for integration in integrations or []:
            if only is not None and integration["name"] not in only:
                continue
            network = (
                OFFLINE
                if offline
                else DENIED
                if testable is not None and integration["name"] not in testable
                else TEST
            )
            check = partial(_integration, db, integration, now, report, network, transport_for)
            _guarded(report, integration["name"], check)
    finally:
        db.close()
    return report


def _guarded(report: Report, name: str, check: Callable[[], Any]) -> Any:
    """Run one group of checks; a database that cannot be read there is a FAIL, not a crash."""
    try:
        return check()
    except sqlite3.Error as exc:
        report.add(
            name,
            FAIL,
            f"cannot read the database: {exc} (bring the schema up to date with `im init`, "
            "or restore the database from a backup)",
        )
        return None


# -- the database ------------------------------------------------------------------------------


def _database(db: Database, path: Path, report: Report) -> bool:
    """The database's checks; False when it is not an im database (nothing else can run)."""
    try:
        install_id = meta.get(db, "install_id") if db["_sqlite_migrations"].exists() else None
    except sqlite3.Error:
        install_id = None
    if install_id is None:
        report.add(
            "database",
            FAIL,
            f"{path} is not an im database: run `im init` for a new one, or pass the right "
            "--db PATH (or $IM_DB)",
        )
        return False
    report.add("database", OK, f"{path} (install {install_id})")

    # every migration this im knows: all of them are pending on an empty database
    known = {m.name for m in schema.MIGRATIONS.pending(Database(memory=True))}
    applied = [m.name for m in schema.MIGRATIONS.applied(db)]
    unknown = [name for name in applied if name not in known]
    pending = schema.pending(db)
    if unknown:
        report.add(
            "database schema",
            FAIL,
            f"written by a newer im (migrations {', '.join(unknown)} are unknown here): "
            "upgrade im to the version that wrote it",
        )
    elif pending:
        report.add(
            "database schema",
            WARN,
            f"{len(pending)} migration(s) pending ({', '.join(pending)}): the next im command "
            "that opens the database applies them, e.g. `im init`",
        )
    else:
        report.add("database schema", OK, f"current ({applied[-1] if applied else 'empty'})")

    mode = str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    if mode == "wal":
        report.add("database WAL", OK, "journal mode WAL")
    else:
        report.add(
            "database WAL",
            FAIL,
            f"journal mode is {mode}, not WAL: the daemon and the CLI block each other; stop "
            f"the daemon, then run `sqlite3 {path} 'PRAGMA journal_mode=WAL'`",
        )

    bits = stat.S_IMODE(path.stat().st_mode)
    if bits & 0o077:
        report.add(
            "database file mode",
            FAIL,
            f"mode {bits:04o}: other users can read it (and with it every incident and the "
            f"sealed secrets): run `chmod 600 {path}`",
        )
    elif path.stat().st_uid != os.getuid():
        report.add(
            "database file mode",
            WARN,
            f"mode {bits:04o}, but owned by another user (uid {path.stat().st_uid}): run im "
            "as the user who owns it",
        )
    else:
        report.add("database file mode", OK, f"mode {bits:04o}")
    return True


# -- the master key ----------------------------------------------------------------------------


def _master_key(db: Database, report: Report) -> None:
    source, key_id = meta.get(db, "key_source"), meta.get(db, "key_id")
    if source is None or key_id is None:
        report.add(
            "master key",
            FAIL,
            "the database records no master key: it was not created by `im init`",
        )
        return
    try:
        key = find_key(source, key_id)
    except SecretError as exc:
        report.add("master key", FAIL, f"{exc.message}: {_restore(source)}")
        return
    report.add("master key", OK, f"key {key.key_id} from {_where(key)}")
    _secrets(db, key, report)


def _where(key: MasterKey) -> str:
    if key.source == "env":
        return f"${ENV_VAR}"
    if key.source == "file":
        return f"the key file {key.location}"
    return f"the OS {key.location}"


def _restore(recorded: str) -> str:
    """How to bring back the key the database was sealed with, by where it was kept."""
    without = "without it no integration's credentials open and nothing syncs"
    if recorded == "env":
        return f"set ${ENV_VAR} to the key the database was sealed with ({without})"
    if recorded == "keyring":
        return (
            f"unlock the OS keyring that holds it (entry im/master-key), or set ${ENV_VAR} to "
            f"it ({without})"
        )
    return (
        f"restore the key file {recorded} (mode 0600) from your backup, or set ${ENV_VAR} "
        f"to that key ({without})"
    )


def _secrets(db: Database, key: MasterKey, report: Report) -> None:
    opened, broken = 0, []
    integrations = integration_rows.all_rows(db)
    for integration in integrations:
        for name in integration_rows.secret_status(db, integration["id"]):
            sealed = integration_rows.sealed_secret(db, integration["id"], name)
            try:
                unseal(key, sealed or b"", secret_owner(integration["id"], name))
                opened += 1
            except SecretError:
                option = "--" + name.replace("_", "-")
                fix = (
                    f"end its rotation with `im integration rotate-secret {integration['name']} "
                    "--finish`"
                    if name == PREVIOUS_WEBHOOK_SECRET
                    else f"enter it again with `im integration configure {integration['name']} "
                    f"{option}-file PATH`"
                )
                broken.append(f"{integration['name']} {name.replace('_', ' ')} ({fix})")
    if broken:
        report.add(
            "secrets",
            FAIL,
            f"{len(broken)} secret(s) do not open with key {key.key_id}: {'; '.join(broken)}",
        )
    else:
        report.add(
            "secrets",
            OK,
            f"the key opens all {opened} secret(s) of {len(integrations)} integration(s)",
        )


# -- the daemon --------------------------------------------------------------------------------


def _daemon(db: Database, now: datetime, report: Report) -> None:
    found = daemon.status(db, now)
    start = "start it with `im daemon` (nothing is sent or applied without it)"
    if found.running:
        report.add(
            "daemon",
            OK,
            f"running: pid {found.pid} on {found.hostname}, listening on {found.listen}, "
            f"heartbeat {found.heartbeat_at}",
        )
        return
    if found.pid is None:
        report.add("daemon", FAIL, f"no daemon has ever run on this database: {start}")
        return
    stopped = db.execute("SELECT stopped_at FROM daemon WHERE id = 1").fetchone()
    if stopped is not None and stopped[0]:
        report.add(
            "daemon",
            FAIL,
            f"the daemon (pid {found.pid} on {found.hostname}) stopped at {stopped[0]}: {start}",
        )
        return
    assert found.heartbeat_at is not None
    age = int((now - parse_time(found.heartbeat_at)).total_seconds())
    report.add(
        "daemon",
        FAIL,
        f"stale heartbeat: the daemon (pid {found.pid} on {found.hostname}) last beat at "
        f"{found.heartbeat_at}, {age} s ago, so it was killed or its machine stopped: {start}",
    )


# -- integrations ------------------------------------------------------------------------------


# what doctor does about an integration's connection
TEST, OFFLINE, DENIED = "test", "offline", "denied"


def _integration(
    db: Database,
    integration: Mapping[str, Any],
    now: datetime,
    report: Report,
    network: str,
    transport_for: TransportFor | None,
) -> None:
    name = integration["name"]
    if integration["enabled"]:
        report.add(f"{name}: enabled", OK, f"{integration['type']}, {integration['direction']}")
    else:
        report.add(
            f"{name}: enabled",
            WARN,
            "disabled: nothing is sent or applied; enable it with "
            f"`im integration configure {name} --enable`",
        )
    paused_before = _pause(db, integration, now)
    if network == TEST:
        _connection(db, integration, report, transport_for)
    elif network == DENIED:
        report.add(
            f"{name}: connection",
            WARN,
            "not tested: that takes the right to `im integration test` it (see `im access list`)",
        )
    _paused(db, integration, now, paused_before, report)
    _webhooks(db, integration, now, report)
    dead = dead_letters.open_count(db, integration["id"])
    if dead:
        report.add(
            f"{name}: dlq",
            WARN,
            f"{dead} change(s) in the dead letter queue: see `im integration dlq {name}`, then "
            f"`im integration dlq-retry {name} ENTRY` or `dlq-discard`",
        )
    else:
        report.add(f"{name}: dlq", OK, "empty")


def _connection(
    db: Database,
    integration: Mapping[str, Any],
    report: Report,
    transport_for: TransportFor | None,
) -> None:
    """The checks of `im integration test`, one line each."""
    name = integration["name"]
    transport = transport_for(integration) if transport_for is not None else None
    try:
        tested = run_checks(db, name, transport=transport, timeout=CHECK_TIMEOUT)
    except SecretError:
        report.add(
            f"{name}: connection",
            FAIL,
            "not tested: its credentials do not open (see the master key and secrets checks)",
        )
        return
    except ImError as exc:
        report.add(f"{name}: connection", FAIL, f"not tested: {exc}")
        return
    for c in tested.checks:
        status = FAIL if not c.ok else WARN if c.warning else OK
        detail = c.detail
        if not c.ok:
            detail += f" (after fixing it, `im integration test {name}` checks again)"
        report.add(f"{name}: {c.name}", status, detail)


def _pause(db: Database, integration: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The integration's pause while it is in force (as the dispatcher judges it), else None:
    a rate limit until its time; refused credentials until the integration changed after."""
    return sync_state.pause_in_force(db, integration["id"], format_time(now))


def _paused(
    db: Database,
    integration: Mapping[str, Any],
    now: datetime,
    before: dict[str, Any] | None,
    report: Report,
) -> None:
    name = integration["name"]
    pause = _pause(db, integration, now)
    if pause is None and before is not None and before["pause_reason"] == sync_state.AUTH_FAILING:
        report.add(
            f"{name}: paused",
            OK,
            f"was paused since {before['paused_at']} for refused credentials; they work now, "
            "so sending resumed",
        )
    elif pause is None:
        report.add(f"{name}: paused", OK, "not paused")
    elif pause["pause_reason"] == sync_state.AUTH_FAILING:
        credential = SECRETS[integration["type"]][0].option
        report.add(
            f"{name}: paused",
            FAIL,
            f"sending is paused since {pause['paused_at']}: {integration['type']} refused the "
            f"credentials ({pause.get('last_error') or 'no detail'}); fix them with "
            f"`im integration configure {name} {credential}-file PATH`, or once fixed there, "
            f"`im integration test {name}`",
        )
    else:
        report.add(
            f"{name}: paused",
            WARN,
            f"rate-limited by {integration['type']} until {pause['paused_until']}: sending "
            f"resumes by itself; pace it with `im integration configure {name} --rate-limit N/s`",
        )


def _webhooks(db: Database, integration: Mapping[str, Any], now: datetime, report: Report) -> None:
    name = integration["name"]
    receives = Direction(integration["direction"]).receives
    since = format_time(now - FAILURE_WINDOW)
    last = db.execute(
        "SELECT max(received_at) FROM inbound_events WHERE integration_id = ?",
        [integration["id"]],
    ).fetchone()[0]
    check = f"{name}: webhooks"
    if not receives:
        seen = f"; the last delivery came at {last} and was ignored" if last else ""
        report.add(check, OK, f"{integration['direction']} only: no webhooks expected{seen}")
        return
    problems: list[str] = []
    status = OK
    # refused at the door (not authentic, malformed): no event row, only the last one's time
    # and reason with the integration
    state = sync_state.get(db, integration["id"])
    refused_at, refusal = state.get("last_rejected_at"), state.get("last_rejection") or ""
    if refused_at is not None and refused_at >= since:
        if last is None or refused_at > last:
            status = FAIL
            problems.append(
                f"deliveries are refused: the last at {refused_at} ({refusal}), and none "
                f"was accepted since{_refusal_fix(integration, refusal)}"
            )
        else:
            status = WARN
            problems.append(
                f"a delivery was refused at {refused_at} ({refusal}), though later ones were "
                f"accepted{_refusal_fix(integration, refusal)}"
            )
    # stored, but not applied: waiting for a retry, or failed / dead-lettered lately
    retrying, retry_error = db.execute(
        "SELECT count(*), (SELECT outcome FROM inbound_events WHERE integration_id = :id "
        "AND state = 'received' AND attempts > 0 ORDER BY id DESC LIMIT 1) "
        "FROM inbound_events WHERE integration_id = :id AND state = 'received' AND attempts > 0",
        {"id": integration["id"]},
    ).fetchone()
    failed, latest = db.execute(
        "SELECT count(*), (SELECT outcome FROM inbound_events WHERE integration_id = :id "
        "AND received_at >= :since AND state IN ('failed', 'dead') ORDER BY id DESC LIMIT 1) "
        "FROM inbound_events WHERE integration_id = :id AND received_at >= :since "
        "AND state IN ('failed', 'dead')",
        {"id": integration["id"], "since": since},
    ).fetchone()
    if retrying:
        problems.append(
            f"{retrying} event(s) could not be applied yet and wait for a retry "
            f"(latest error: {retry_error})"
        )
    if failed:
        problems.append(f"{failed} delivery(ies) failed in the last hour (latest: {latest})")
    if problems:
        status = FAIL if status == FAIL else WARN
        if retrying or failed:
            problems.append(f"see `im integration events {name}`")
        report.add(check, status, "; ".join(problems))
    elif last is None:
        report.add(
            check,
            WARN,
            f"no webhook ever received although it is {integration['direction']}: configure "
            f"the external system with what `im integration webhook-setup {name}` prints",
        )
    else:
        report.add(check, OK, f"last delivery received at {last}, none failed in the last hour")


def _refusal_fix(integration: Mapping[str, Any], refusal: str) -> str:
    """What to do about a refused delivery, by why it was refused."""
    if refusal.startswith(NOT_AUTHENTIC):
        return (
            f": a signature that does not match means {integration['type']} signs with another "
            "webhook secret than im's; compare the two with `im integration webhook-setup "
            f"{integration['name']} --show-secret`, then set the same on both sides (`im "
            f"integration configure {integration['name']} --webhook-secret-file PATH` here)"
        )
    return (
        f": {integration['type']} sends what im cannot read; check what `im integration "
        f"webhook-setup {integration['name']}` prints against what is configured there"
    )
