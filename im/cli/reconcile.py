"""``im integration reconcile ...``: drift detection and healing, its history and schedule."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from im.cli.context import app
from im.cli.output import emit_object, emit_rows, format_option, note, warn
from im.errors import UsageError

if TYPE_CHECKING:
    from im.sync.reconcile import Progress, Report

DISCREPANCY_COLUMNS = (
    "incident_id",
    "external_key",
    "field",
    "platform_value",
    "external_value",
    "snapshot_value",
    "action",
    "reason",
)
HISTORY_COLUMNS = (
    "run_id",
    "started_at",
    "duration_seconds",
    "trigger",
    "mode",
    "state",
    "checked",
    "discrepancies",
    "healed",
    "errors",
)
RUN = "run"


class ReconcileGroup(click.Group):
    """``reconcile NAME ...`` is ``reconcile run NAME ...``: the guide's spelling, while
    ``history`` and ``schedule`` stay subcommands (integration names cannot take them)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [RUN, *args]
        return super().parse_args(ctx, args)


# what the README and the man page give as the crontab line (tests run it under `env -i`)
CRON_LINE = (
    "0 * * * * /path/to/im --db /path/to/im.db integration reconcile prod-snow "
    "--auto-heal --trigger cron >>$HOME/im-reconcile.log 2>&1"
)
HELP = f"""Find and heal drift between linked incidents and their external records.

`im integration reconcile NAME --dry-run` is short for `im integration reconcile run NAME
--dry-run`. From cron (the master key must be reachable there: the key file or
IM_MASTER_KEY, not a desktop keyring; the job acts as the crontab's user, who needs a role
that may reconcile NAME), one line of `crontab -e`:

\b
{CRON_LINE}
"""


@click.group(cls=ReconcileGroup, help=HELP)
def reconcile() -> None:
    pass


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Progress | None]:
    """A bar on standard error when it is a terminal; nothing otherwise (cron, pipes)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("reconciling", total=total or None)
        yield lambda advance: bar.advance(task, advance)


def _print_report(report: Report, fmt: str, seconds: float) -> None:
    rows = [d.view() for d in report.discrepancies]
    if fmt == "json":
        emit_object(report.as_json(), "json")
        return
    if fmt in ("jsonl", "csv"):
        emit_rows(rows, (*DISCREPANCY_COLUMNS[:2], "external_id", *DISCREPANCY_COLUMNS[2:]), fmt)
        return
    if rows:
        emit_rows(rows, DISCREPANCY_COLUMNS, fmt)
    verb = "healed" if report.mode == "auto-heal" else "would heal"
    from im.sync.drift import HEALABLE

    healable = sum(1 for d in report.discrepancies if d.action in HEALABLE)
    summary = (
        f"{report.integration} {report.run_id} ({report.mode}): checked {report.checked}, "
        f"{len(report.discrepancies)} discrepancies"
        + (f", healed {report.healed}" if report.mode == "auto-heal" else "")
        + (f", {healable} {verb}" if report.mode == "dry-run" and healable else "")
        + f" in {seconds:.1f}s"
    )
    click.echo(summary)


@reconcile.command(RUN)
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Report drift and change nothing (the default).")
@click.option(
    "--auto-heal",
    is_flag=True,
    help="Make both sides agree as ownership says: pulls apply here, pushes go through the outbox.",
)
@click.option(
    "--recreate-missing",
    is_flag=True,
    help="Re-create external records that are gone (with --auto-heal).",
)
@click.option(
    "--backfill",
    metavar="SINCE",
    help="Also take in-scope records created since SINCE (2026-11-01, or 30d ago); "
    "otherwise only those created after the integration.",
)
@click.option(
    "--trigger",
    type=click.Choice(["manual", "cron"]),
    default="manual",
    show_default=True,
    help="What started the run, as history shows it (cron in a crontab).",
)
@format_option
def run(
    name: str,
    dry_run: bool,
    auto_heal: bool,
    recreate_missing: bool,
    backfill: str | None,
    trigger: str,
    fmt: str,
) -> None:
    """Compare every linked incident of NAME with its external record, field by field,
    against what both last agreed on, and report (or heal) what differs. Exits 0 when the
    run finished (drift or not), 1 when it failed or could not read some records, 3 when
    another run of NAME is in progress."""
    from im.config import integrations as config
    from im.store import daemon, links
    from im.sync import reconcile as engine

    if dry_run and auto_heal:
        raise UsageError("--dry-run and --auto-heal exclude each other", "give one of them")
    ctx = app()
    ctx.authorize("reconcile.run", integration=name)
    integration = config.find(ctx.db, name)
    since = engine.parse_since(backfill, ctx.clock.now()) if backfill else None
    if not auto_heal and not dry_run and fmt == "table":
        note("no --auto-heal given: a dry run, nothing is changed")
    options = engine.Options(
        auto_heal=auto_heal,
        recreate_missing=recreate_missing,
        backfill_since=since,
        trigger=trigger,
    )
    started = time.monotonic()
    with _progress_bar(links.count(ctx.db, integration["id"]), fmt == "table") as progress:
        report = engine.run(
            ctx.db,
            ctx.clock,
            integration,
            options,
            transport_for=ctx.transport_for,
            sleep=ctx.sleep,
            progress=progress,
        )
    _print_report(report, fmt, time.monotonic() - started)
    if report.queued and not daemon.status(ctx.db, ctx.clock.now()).running:
        warn(
            f"{report.queued} pushes wait in the outbox: no daemon is running to send them "
            "(start `im daemon`)"
        )
    for line in report.errors if fmt == "table" else []:
        warn(line)
    if report.failed:
        raise click.ClickException(f"{report.run_id} failed: {report.failed}")
    if report.error_count:
        raise click.ClickException(
            f"{report.run_id} could not check everything: {report.error_count} errors"
        )


@reconcile.command()
@click.argument("name")
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    default=20,
    show_default=True,
    help="How many runs, newest first.",
)
@format_option
def history(name: str, limit: int, fmt: str) -> None:
    """List NAME's reconcile runs: id, start, duration, trigger (manual, schedule, cron),
    mode, state, checked, discrepancies, healed, errors."""
    from im.config import integrations as config
    from im.sync import reconcile as engine

    ctx = app()
    ctx.authorize("reconcile.history", integration=name)
    rows = engine.history(ctx.db, config.find(ctx.db, name), limit)
    emit_rows(rows, HISTORY_COLUMNS if fmt == "table" else (*HISTORY_COLUMNS, "error"), fmt)
    if fmt == "table" and not rows:
        note(f"{name} has not been reconciled yet")


@reconcile.command()
@click.argument("name")
@click.option("--interval", help="How often: 30s, 15m, 1h, 1d (at least 30s).")
@click.option(
    "--auto-heal/--no-auto-heal",
    default=None,
    help="Scheduled runs heal (else they only report).",
)
@click.option(
    "--enable/--disable",
    "enabled",
    default=None,
    help="Turn the schedule on or off (it is kept).",
)
@format_option
def schedule(
    name: str, interval: str | None, auto_heal: bool | None, enabled: bool | None, fmt: str
) -> None:
    """Show or set NAME's reconcile schedule. The daemon runs it and picks up a change
    within seconds; without options this shows it."""
    from im.config import integrations as config
    from im.store import daemon
    from im.sync import schedules

    ctx = app()
    showing = interval is None and auto_heal is None and enabled is None
    ctx.authorize("reconcile.schedule.show" if showing else "reconcile.schedule", integration=name)
    integration = config.find(ctx.db, name)
    if showing:
        emit_object(schedules.get(ctx.db, integration), fmt)
        return
    shown = schedules.put(
        ctx.db, ctx.clock, ctx.principal, integration, interval, auto_heal, enabled
    )
    emit_object(shown, fmt)
    if shown["enabled"] and not daemon.status(ctx.db, ctx.clock.now()).running:
        warn("no daemon is running: scheduled runs start when `im daemon` runs")
