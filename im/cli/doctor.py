"""``im doctor``: check the installation and print what to fix."""

from __future__ import annotations

import click

from im.cli.context import app
from im.cli.output import emit_object, emit_rows, format_option, note


@click.command()
@click.option(
    "--offline",
    is_flag=True,
    help="Skip the checks that reach the external systems (reachability, TLS, credentials, "
    "permissions); make no network call.",
)
@format_option
def doctor(offline: bool, fmt: str) -> None:
    """Check the installation and print what to fix.

    The database (opens, schema current, WAL mode, file mode 0600), the master key (its
    source, and that it opens the integrations' secrets), the daemon's heartbeat (a daemon
    that is not running FAILs: nothing syncs without it), and each integration: enabled,
    reachability and credentials (as `im integration test`), paused or not, webhook activity
    (the last delivery received, failures in the last hour) and the DLQ size.

    Each check is ok, warn or FAIL with what to fix. Exits 1 when a check FAILs. With
    --format json: {"ok": bool, "checks": [{"check", "status", "detail"}]}.
    """
    from im import doctor as diagnosis
    from im.errors import DatabaseError, SecretError

    ctx = app()
    only: set[str] | None = set()
    testable: set[str] = set()
    try:
        ctx.db  # noqa: B018 (opening it is the point)
        opened = True
    except (DatabaseError, SecretError):
        opened = False  # a database that does not open is what the checks below report
    if opened:
        ctx.authorize("doctor.run")
        only = ctx.access.visible("doctor.run")
        # a passing test lifts a credentials pause: it takes the right to test, and is logged
        testable = {n for n in only if ctx.access.allows("integration.test", integration=n)}
        for name in sorted(testable if not offline else ()):
            ctx.authorize("integration.test", integration=name, detail=f"on {name} (im doctor)")
    report = diagnosis.diagnose(
        ctx.path,
        ctx.clock,
        offline=offline,
        transport_for=ctx.transport_for,
        only=only,
        testable=testable,
    )
    if fmt in ("json", "jsonl"):
        emit_object(report.as_json(), fmt)
    elif fmt == "csv":
        emit_rows(report.as_json()["checks"], ("check", "status", "detail"), fmt)
    else:
        for check in report.checks:
            click.echo(f"{check.status:<5} {check.check}: {check.detail}")
        counts = {
            status: sum(1 for c in report.checks if c.status == status)
            for status in (diagnosis.OK, diagnosis.WARN, diagnosis.FAIL)
        }
        click.echo(
            f"{counts[diagnosis.OK]} ok, {counts[diagnosis.WARN]} warn, "
            f"{counts[diagnosis.FAIL]} FAIL"
        )
    if offline:
        note("network checks skipped (--offline)")
    if not report.ok:
        raise click.exceptions.Exit(1)
