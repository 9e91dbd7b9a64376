"""``im integration ...``: connections to external systems and their field rules."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from im.cli import secret_input
from im.cli.context import app
from im.cli.field_rules import field_mapping, field_ownership
from im.cli.output import emit_object, emit_rows, format_option, note, warn
from im.cli.reconcile import reconcile
from im.connectors import TYPES
from im.errors import UsageError
from im.model import ConflictStrategy, Direction

if TYPE_CHECKING:
    from im.config import integrations as config
    from im.config.integrations import IntegrationInput

SETTING_OPTIONS: tuple[tuple[str, str], ...] = (
    ("--username", "ServiceNow: the integration account's user name."),
    ("--assignment-group", "ServiceNow scope: the assignment group this integration owns."),
    ("--scope-query", "ServiceNow scope: an encoded query records must match."),
    ("--correlation-field", "ServiceNow: column holding the correlation key (correlation_id)."),
    ("--close-code", "ServiceNow: close_code sent on resolve (Solved (Permanently))."),
    ("--close-notes", "ServiceNow: close_notes sent on resolve."),
    ("--email", "Jira: the account email that owns the API token."),
    ("--project", "Jira scope: the project key (e.g. OPS)."),
    ("--jql", "Jira scope: extra JQL records must match."),
    ("--issue-type", "Jira: issue type of created issues (Incident)."),
    ("--severity-field", "Jira: the severity custom field (customfield_N)."),
    ("--client-key", "Jira: the Connect client key (JWT iss) of inbound webhooks."),
    ("--from-email", "PagerDuty: the From header of writes (a user's email)."),
    ("--service", "PagerDuty scope: the service id (e.g. PSVC001)."),
    ("--escalation-policy", "PagerDuty: escalation policy id used when unassigned."),
)
SECRET_OPTIONS: tuple[tuple[str, str], ...] = (
    ("--password", "ServiceNow password ($IM_PASSWORD; - prompts)."),
    ("--api-token", "Jira or PagerDuty API token ($IM_API_TOKEN; - prompts)."),
    ("--webhook-secret", "Secret that signs inbound webhooks ($IM_WEBHOOK_SECRET; - prompts)."),
)


def _connection_options(func: Any) -> Any:
    options = [
        click.option("--url", help="Base URL: https://, or http:// on loopback."),
        *[click.option(flag, help=text) for flag, text in SETTING_OPTIONS],
        *[
            option
            for flag, text in SECRET_OPTIONS
            for option in (
                click.option(flag, help=text),
                click.option(
                    f"{flag}-file",
                    type=click.Path(dir_okay=False),
                    help=f"Read {flag[2:]} from a file.",
                ),
            )
        ],
        click.option(
            "--direction",
            type=click.Choice([d.value for d in Direction]),
            help="outbound (new integrations), inbound or bidirectional.",
        ),
        click.option(
            "--conflict-strategy",
            type=click.Choice([c.value for c in ConflictStrategy]),
            help="How simultaneous edits are decided.",
        ),
        click.option("--conflict-window", help="Edits this close together conflict (5s)."),
        click.option("--rate-limit", help="Client-side pacing: N/s, N/m or off."),
        click.option(
            "--rate-limit-backoff/--no-rate-limit-backoff",
            default=None,
            help="Honour 429 and Retry-After (on).",
        ),
        click.option(
            "--enable/--disable",
            "enabled",
            default=None,
            help="A disabled integration sends and applies nothing.",
        ),
        click.option("--ca-bundle", help="PEM file of CAs to trust (private CAs)."),
        click.option(
            "--allow-insecure-http/--no-allow-insecure-http",
            default=None,
            help="Allow plain http to a non-loopback host (warns).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _input(kind: str, values: dict[str, Any], creating: bool) -> IntegrationInput:
    from im.config.integrations import IntegrationInput

    secret_names = [flag[2:].replace("-", "_") for flag, _ in SECRET_OPTIONS]
    secrets = secret_input.gather(
        kind,
        {n: values.pop(n) for n in secret_names},
        {n: values.pop(f"{n}_file") for n in secret_names},
        creating,
    )
    setting_names = [flag[2:].replace("-", "_") for flag, _ in SETTING_OPTIONS]
    settings = {n: values.pop(n) for n in setting_names}
    return IntegrationInput(settings=settings, secrets=secrets, **values)


def _report(outcome: config.Outcome) -> None:
    for warning in outcome.warnings:
        warn(warning)
    for line in outcome.changes:
        click.echo(line)


@click.group()
def integration() -> None:
    """Connections to ServiceNow, Jira Service Management and PagerDuty."""


integration.add_command(field_ownership)
integration.add_command(field_mapping)
integration.add_command(reconcile)


@integration.command()
@click.argument("name")
@click.option(
    "--type", "kind", type=click.Choice(TYPES), required=True, help="The external system."
)
@_connection_options
def create(name: str, kind: str, **values: Any) -> None:
    """Create an integration NAME (it starts outbound, with the type's default ownership).

    Secrets not given as options are taken from their environment variable, or asked for
    with a hidden prompt. Nothing is sent until the daemon runs.
    """
    from im.config import integrations as config

    ctx = app()
    config.check_name(name)
    ctx.authorize("integration.create", integration=name)
    db = ctx.db
    inp = _input(kind, values, creating=True)
    _report(config.create(db, ctx.clock, ctx.principal, name, kind, inp))


@integration.command()
@click.argument("name")
@_connection_options
def configure(name: str, **values: Any) -> None:
    """Change an integration's settings. A secret changes only when its option is given.

    Switching to --direction inbound cancels its waiting outbound changes.
    """
    from im.config import integrations as config

    ctx = app()
    ctx.authorize("integration.configure", integration=name)
    current = config.find(ctx.db, name)
    outcome = config.configure(
        ctx.db, ctx.clock, ctx.principal, name, _input(current["type"], values, creating=False)
    )
    _report(outcome)
    if not outcome.changes:
        click.echo(f"{current['name']} unchanged")


@integration.command()
@click.argument("name")
@format_option
def get(name: str, fmt: str) -> None:
    """Show an integration's settings; secrets only as set / not set."""
    from im.config import integrations as config

    ctx = app()
    ctx.authorize("integration.get", integration=name)
    emit_object(config.view(ctx.db, config.find(ctx.db, name), ctx.clock.now()), fmt)


@integration.command("list")
@format_option
def list_(fmt: str) -> None:
    """List integrations."""
    from im.config import integrations as config
    from im.store import integrations as rows

    ctx = app()
    ctx.authorize("integration.list")
    visible = ctx.access.visible("integration.get")
    now = ctx.clock.now()
    views = [config.view(ctx.db, r, now) for r in rows.all_rows(ctx.db) if r["name"] in visible]
    columns = ("id", "name", "type", "enabled", "direction", "conflict_strategy", "url")
    emit_rows(views, columns, fmt)


@integration.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete an integration with its secrets, rules, links and unsent changes."""
    from im.config import integrations as config

    ctx = app()
    ctx.authorize("integration.delete", integration=name)
    current = config.find(ctx.db, name)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"deleting {current['name']} needs confirmation", "pass --yes")
        click.confirm(f"Delete integration {current['name']}?", abort=True)
    _report(config.delete(ctx.db, name))
    note("external records are left as they are")


@integration.command("test")
@click.argument("name")
@format_option
def test_(name: str, fmt: str) -> None:
    """Check reachability, TLS, credentials, permissions and scope against the external
    system, and warn when the account looks like a person's. Exits 1 when a check fails."""
    from im.config import connection
    from im.config import integrations as config

    ctx = app()
    ctx.authorize("integration.test", integration=name)
    reach = ctx.transport_for(config.find(ctx.db, name)) if ctx.transport_for else None
    report = connection.run_checks(ctx.db, name, transport=reach)
    if fmt == "json":
        emit_object(
            {
                "integration": report.integration,
                "type": report.kind,
                "ok": report.ok,
                "checks": [
                    {"check": c.name, "ok": c.ok, "warning": c.warning, "detail": c.detail}
                    for c in report.checks
                ],
            },
            "json",
        )
    else:
        for check in report.checks:
            mark = "FAIL" if not check.ok else "warn" if check.warning else "ok"
            click.echo(f"{mark:<5} {check.name}: {check.detail}")
        verdict = "passed" if report.ok else "failed"
        click.echo(f"{report.integration} ({report.kind}, {report.url}): {verdict}")
    if not report.ok:
        raise click.exceptions.Exit(1)


@integration.command("webhook-setup")
@click.argument("name")
@click.option(
    "--public-url",
    help="Where the external system reaches `im daemon` (default: the daemon's --public-url, "
    "else http://127.0.0.1:8080).",
)
@click.option(
    "--show-secret", is_flag=True, help="Print the webhook secret instead of a placeholder."
)
def webhook_setup(name: str, public_url: str | None, show_secret: bool) -> None:
    """Print what to configure in the external system so that it sends signed webhooks to
    this integration."""
    from im.config import connection
    from im.store import daemon, meta

    ctx = app()
    ctx.authorize(
        "integration.show-secret" if show_secret else "integration.webhook-setup",
        integration=name,
    )
    running = daemon.status(ctx.db, ctx.clock.now())
    known = meta.get(ctx.db, "public_url") or (
        f"http://{running.listen}" if running.running and running.listen else None
    )
    url = public_url or known or connection.DEFAULT_PUBLIC_URL
    if not public_url and not known:
        warn(
            f"no public URL known: using {url}; the external system must reach it "
            "(pass --public-url or run `im daemon --public-url URL`)"
        )
    click.echo(connection.webhook_setup(ctx.db, name, url, show_secret=show_secret))


@integration.command("rotate-secret")
@click.argument("name")
@click.option(
    "--grace",
    metavar="DURATION",
    help="How long the old webhook secret stays valid: 24h (default), 90m, up to 7d; "
    "0 refuses it at once.",
)
@click.option(
    "--finish", is_flag=True, help="Stop accepting the old webhook secret now (ends the grace)."
)
@click.option(
    "--new-secret",
    metavar="VALUE",
    help="The new secret instead of a generated one; required for PagerDuty, which "
    "generates its own (- prompts).",
)
def rotate_secret(name: str, grace: str | None, finish: bool, new_secret: str | None) -> None:
    """Replace an integration's webhook secret; the old one stays valid for the grace period,
    so deliveries keep arriving while the external system is switched over. Only two are
    ever valid: rotating again drops the oldest. No secret is printed: see
    `im integration webhook-setup NAME --show-secret`."""
    from im.config import webhook_secrets

    ctx = app()
    ctx.authorize("integration.rotate-secret", integration=name)
    if finish:
        if grace is not None or new_secret is not None:
            raise UsageError("--finish cannot be combined with --grace or --new-secret")
        rotation = webhook_secrets.finish(ctx.db, ctx.clock, name)
    else:
        value = None
        if new_secret == "-":
            value = secret_input.prompt("new webhook secret")
        elif new_secret is not None:
            warn(
                "--new-secret on the command line shows in `ps` and shell history; "
                "prefer --new-secret - (a hidden prompt)"
            )
            value = new_secret
        rotation = webhook_secrets.rotate(
            ctx.db,
            ctx.clock,
            name,
            grace=webhook_secrets.DEFAULT_GRACE
            if grace is None
            else webhook_secrets.parse_grace(grace),
            value=value,
        )
    for line in rotation.changes:
        click.echo(line)
    if rotation.next_steps:
        click.echo("next:")
        for step in rotation.next_steps:
            click.echo(f"  - {step}")


@integration.command()
@click.argument("name")
@format_option
def dlq(name: str, fmt: str) -> None:
    """List the dead letter queue: changes given up on, with every attempt's time and error."""
    from dataclasses import asdict, fields

    from im.config import integrations as config
    from im.sync import retry

    ctx = app()
    ctx.authorize("dlq.list", integration=name)
    entries = retry.dead_entries(ctx.db, config.find(ctx.db, name))
    if fmt in ("json", "jsonl"):
        keys = tuple(f.name for f in fields(retry.DeadEntry))
        emit_rows([asdict(e) for e in entries], keys, fmt)
        return
    # one line per attempt, so every attempt's time and error shows
    views = [
        {
            "entry": e.id,
            "incident": e.incident,
            "direction": e.direction,
            "operation": e.operation,
            "fields": ",".join(e.fields) + (f" +{e.journal} journal" if e.journal else ""),
            "attempt": n,
            "at": attempt.at,
            "error": attempt.error if attempt.charged else f"(not counted) {attempt.error}",
        }
        for e in entries
        for n, attempt in enumerate(e.attempts, start=1)
    ]
    columns = ("entry", "incident", "direction", "operation", "fields", "attempt", "at", "error")
    emit_rows(views, columns, fmt)
    if fmt == "table":
        note(
            "retry with `im integration dlq-retry NAME ENTRY` (sends current values), or discard"
            if entries
            else "the dead letter queue is empty"
        )


def _dlq_act(name: str, entry: str | None, all_: bool, retrying: bool) -> None:
    from im.config import integrations as config
    from im.sync import retry

    if bool(entry) == all_:
        raise UsageError("give one ENTRY or --all")
    ctx = app()
    ctx.authorize("dlq.retry" if retrying else "dlq.discard", integration=name)
    act = retry.retry_dead if retrying else retry.discard_dead
    done = act(ctx.db, ctx.clock, config.find(ctx.db, name), entry)
    for entry_id in done:
        click.echo(
            f"{entry_id} queued again with current values" if retrying else f"{entry_id} discarded"
        )
    if not done:
        click.echo("the DLQ is empty")


@integration.command("dlq-retry")
@click.argument("name")
@click.argument("entry", required=False)
@click.option("--all", "all_", is_flag=True, help="Retry every entry of the integration.")
def dlq_retry(name: str, entry: str | None, all_: bool) -> None:
    """Send a DLQ entry again, with the incident's current values of its fields."""
    _dlq_act(name, entry, all_, retrying=True)


@integration.command("dlq-discard")
@click.argument("name")
@click.argument("entry", required=False)
@click.option("--all", "all_", is_flag=True, help="Discard every entry of the integration.")
def dlq_discard(name: str, entry: str | None, all_: bool) -> None:
    """Drop a DLQ entry without sending it."""
    _dlq_act(name, entry, all_, retrying=False)


@integration.command()
@click.argument("name")
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    default=50,
    show_default=True,
    help="How many, newest first.",
)
@format_option
def events(name: str, limit: int, fmt: str) -> None:
    """List recent inbound webhook deliveries with their outcome (bodies are never shown)."""
    from im.config import integrations as config
    from im.model import incident_display_id
    from im.store import inbound

    ctx = app()
    ctx.authorize("integration.events", integration=name)
    integration = config.find(ctx.db, name)
    rows = [
        {
            "event": r["id"],
            "received_at": r["received_at"],
            "state": r["state"],
            "event_type": r["event_type"] or "",
            "external_id": r["external_id"] or "",
            "incident": incident_display_id(r["incident_id"]) if r["incident_id"] else "",
            "delivery_id": r["delivery_id"] or "",
            "outcome": r["outcome"] or "",
            "attempts": r["attempts"],
        }
        for r in inbound.recent(ctx.db, integration["id"], limit)
    ]
    columns = ("event", "received_at", "state", "event_type", "external_id", "incident", "outcome")
    emit_rows(rows, columns if fmt == "table" else (*columns, "delivery_id", "attempts"), fmt)


@integration.command("sync-status")
@click.argument("name")
@format_option
def sync_status(name: str, fmt: str) -> None:
    """Show an integration's health (healthy, degraded or failing) with every reason and
    what to do, then the daemon, the last webhook, the last outbound success and failure,
    any pause, the outbox backlog and its oldest age, the DLQ size, pending conflicts, the
    last reconcile and its schedule, and the counters.

    It is a report: it exits 0 whatever the health; to alert, read the "health" key of
    --format json."""
    from im.sync import status

    ctx = app()
    ctx.authorize("integration.sync-status", integration=name)
    found = status.read(ctx.db, ctx.clock, name).as_json()
    if fmt != "table":
        emit_object(found, fmt)
        return
    click.echo(f"{found['integration']} ({found['type']}): {found['health']}")
    for reason in found["reasons"]:
        click.echo(f"  - {reason}")
    click.echo()
    counters = {**found.pop("metrics"), **found.pop("other_counters")}
    rest = {k: v for k, v in found.items() if k not in ("health", "reasons")}
    emit_object({k: _shown(k, v) for k, v in rest.items()}, fmt)
    click.echo()
    emit_rows([{"counter": k, "value": v} for k, v in counters.items()], ("counter", "value"), fmt)


def _shown(key: str, value: Any) -> Any:
    """What a person reads for a value that is not there."""
    if value is not None:
        return value
    return "never" if key.startswith("last_") and key.endswith("_at") else "-"
