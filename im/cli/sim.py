"""``im sim ...``: local simulators of the vendors' APIs, for trying `im` with no account."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from im.errors import UsageError

DEFAULT_PORTS = {"servicenow": 8081, "jira": 8082, "pagerduty": 8083}


def _options(func: Any) -> Any:
    options = [
        click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind."),
        click.option("--port", type=click.IntRange(0, 65535), help="Port (0 picks a free one)."),
        click.option("--webhook-url", help="Send signed webhooks for every change to this URL."),
        click.option(
            "--webhook-secret",
            help="Secret that signs the webhooks (default: a new one, printed at start).",
        ),
        click.option(
            "--fault",
            "faults",
            multiple=True,
            metavar="NAME=VALUE",
            help="Inject a fault from the start, e.g. drop-webhooks=0.2 or error-rate=0.1 "
            "(repeatable; change them later with POST /_sim/faults).",
        ),
        click.option(
            "--seed",
            type=click.IntRange(0, 2**31 - 1),
            help="Seed of ids and faults (default: a new one, printed at start; a restart "
            "with the same seed repeats the same ids).",
        ),
        click.option("--tls", is_flag=True, help="Serve HTTPS with a new self-signed certificate."),
        click.option(
            "--tls-cert", type=click.Path(dir_okay=False, exists=True), help="Certificate (PEM)."
        ),
        click.option(
            "--tls-key", type=click.Path(dir_okay=False, exists=True), help="Private key (PEM)."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
def sim() -> None:
    """Run a local simulator of ServiceNow, Jira or PagerDuty.

    Each behaves like the vendor's API for everything `im` uses (paths, shapes, auth,
    pagination, errors, rate limits) and sends signed webhooks in the vendor's format for
    every change, including changes made with the `agent` account, so you can play the
    person on the other side. Stop it with Ctrl-C.
    """


@sim.command()
@_options
def servicenow(**options: Any) -> None:
    """Simulate a ServiceNow instance (Table API; Business Rule webhooks)."""
    from im.sim.servicenow import ServiceNowSimulator

    _run("servicenow", ServiceNowSimulator, {}, **options)


@sim.command()
@_options
@click.option(
    "--client-key",
    default="im-sim-jira",
    show_default=True,
    help="Connect client key (the JWT iss) of the webhooks.",
)
@click.option(
    "--signing",
    type=click.Choice(["connect", "hub"]),
    default="connect",
    show_default=True,
    help="Sign webhooks as a Connect app (JWT) or as an admin webhook (X-Hub-Signature).",
)
def jira(client_key: str, signing: str, **options: Any) -> None:
    """Simulate Jira Cloud with Jira Service Management (REST v3, plus the v2 routes clients
    use)."""
    from im.sim.jira import JiraSimulator

    _run("jira", JiraSimulator, {"client_key": client_key, "signing": signing}, **options)


@sim.command()
@_options
def pagerduty(**options: Any) -> None:
    """Simulate PagerDuty (REST v2, webhooks v3)."""
    from im.sim.pagerduty import PagerDutySimulator

    _run("pagerduty", PagerDutySimulator, {}, **options)


def _run(
    kind: str,
    factory: Any,
    extra: dict[str, Any],
    *,
    host: str,
    port: int | None,
    webhook_url: str | None,
    webhook_secret: str | None,
    faults: tuple[str, ...],
    seed: int | None,
    tls: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    from im.config.webhook_secrets import new_secret
    from im.daemon.server import Server, check_port
    from im.sim.core import Faults, parse_fault
    from im.sim.server import config, free_port, self_signed_certificate

    fault_set = Faults()
    try:
        fault_set.update(dict(parse_fault(text) for text in faults))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if webhook_url and not webhook_url.startswith(("http://", "https://")):
        raise UsageError("--webhook-url must be an http(s) URL")
    secret = webhook_secret or (new_secret(kind) if webhook_url else "")
    cert = Path(tls_cert) if tls_cert else None
    key = Path(tls_key) if tls_key else None
    if tls and not cert:
        import tempfile

        cert, key = self_signed_certificate(Path(tempfile.mkdtemp(prefix="im-sim-tls-")), host)
    if seed is None:
        # A fresh seed each start: a simulator restarted against a database kept from an
        # earlier run must not hand out the ids (and delivery ids) it gave then.
        import secrets

        seed = secrets.randbelow(2**31)
    simulator = factory(
        seed=seed, webhook_url=webhook_url or "", webhook_secret=secret, faults=fault_set, **extra
    )
    chosen = port if port is not None else DEFAULT_PORTS[kind]
    if chosen == 0:
        chosen = free_port(host)
    check_port(host, chosen)
    scheme = "https" if cert else "http"
    url = f"{scheme}://{host}:{chosen}"
    _describe(
        kind, url, simulator.describe(), webhook_url, secret, webhook_secret is None, cert, seed
    )
    server = Server(config(simulator, host, chosen, cert, key, log_level="warning"))
    server.run()
    click.echo(f"{kind} simulator stopped", err=True)


def _describe(
    kind: str,
    url: str,
    info: dict[str, Any],
    webhook_url: str | None,
    secret: str,
    generated: bool,
    cert: Path | None,
    seed: int,
) -> None:
    click.echo(f"{kind} simulator on {url}")
    for name, value in info.items():
        _show(name, value, 1)
    if webhook_url:
        click.echo(f"  webhooks: {webhook_url}")
        if generated:
            click.echo(f"  webhook secret (new): {secret}")
    else:
        click.echo("  webhooks: off (pass --webhook-url, e.g. http://127.0.0.1:8080/webhooks/NAME)")
    if cert:
        click.echo(f"  TLS certificate: {cert} (trust it with --ca-bundle {cert})")
    click.echo(f"  faults: {url}/_sim/faults (GET to see, POST a JSON object to change)")
    click.echo(f"  seed: {seed} (--seed {seed} repeats this run's ids and faults)")
    click.echo("  Ctrl-C stops it.")


def _show(name: str, value: Any, depth: int) -> None:
    pad = "  " * depth
    name = name.replace("_", " ")
    if isinstance(value, dict):
        click.echo(f"{pad}{name}:")
        for key, item in value.items():
            _show(str(key), item, depth + 1)
    elif isinstance(value, list | tuple):
        click.echo(f"{pad}{name}:")
        for item in value:
            if isinstance(item, dict):
                click.echo(f"{pad}  - " + ", ".join(f"{k}: {v}" for k, v in item.items()))
            else:
                click.echo(f"{pad}  - {item}")
    else:
        click.echo(f"{pad}{name}: {value}")
