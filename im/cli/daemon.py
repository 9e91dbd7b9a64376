"""``im daemon``: the foreground service."""

from __future__ import annotations

from pathlib import Path

import click

from im.cli.context import app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port."
)
@click.option(
    "--public-url",
    help="Where external systems reach this daemon (used by `im integration webhook-setup`).",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the log lines to this file.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="The least important log lines to write.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Serve HTTPS with this certificate (PEM); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The certificate's private key (PEM).",
)
def daemon(
    host: str,
    port: int,
    public_url: str | None,
    log_file: Path | None,
    log_level: str,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Run the sync service in the foreground: send queued changes with retries, serve the
    HTTP endpoints, and stop cleanly on Ctrl-C or SIGTERM.

    One daemon per database; a second one exits at once saying which is running. Sending,
    applying and scheduled reconciles run in a child process (the engine), started again
    if it dies and killed with the daemon. Log lines are logfmt on stderr (and --log-file).
    """
    import ipaddress

    from im.cli.output import warn
    from im.daemon.service import Daemon, Options
    from im.errors import UsageError

    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not tls_cert:
        warn(
            f"listening on {host} without TLS: webhooks and API tokens cross the network in "
            "clear text (pass --tls-cert and --tls-key, or keep a TLS proxy in front)"
        )
    ctx = app()
    ctx.authorize("daemon.run")
    options = Options(ctx.path, host, port, public_url, log_file, log_level, tls_cert, tls_key)
    Daemon(options, ctx.clock).run()
