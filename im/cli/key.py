"""``im key ...``: the master key that seals the integrations' secrets (SPEC §9)."""

from __future__ import annotations

from dataclasses import asdict

import click

from im.cli.context import app
from im.cli.output import emit_object, format_option, note


@click.group()
def key() -> None:
    """The master key that encrypts the integrations' secrets in the database."""


@key.command()
@format_option
def rotate(fmt: str) -> None:
    """Re-encrypt every stored secret with a new master key.

    The new key replaces the current one where it is kept (the OS keyring entry or the 0600
    key file), and a running daemon picks it up by itself. The keyring entry and key file are
    per user: another database sealed with the same key no longer opens afterwards unless you
    keep a copy of the old key for it (give each database its own key with $IM_MASTER_KEY to
    avoid this). The old key opens nothing of this database afterwards. Administrators only.

    When the key comes from $IM_MASTER_KEY, im cannot store the new one: put it (32 random
    bytes, base64) in $IM_NEW_MASTER_KEY, run this, then set $IM_MASTER_KEY to it wherever
    im runs and restart the daemon.

    Keys are never printed, only their ids. With --format json: {"secrets", "integrations",
    "old_key_id", "new_key_id", "source", "location"}.
    """
    from im.config.rotation import rotate as rotate_key

    ctx = app()
    ctx.authorize("key.rotate")
    done = rotate_key(ctx.db)
    if fmt == "table":
        click.echo(
            f"re-encrypted {_count(done.secrets, 'secret')} of "
            f"{_count(done.integrations, 'integration')} with key "
            f"{done.new_key_id} (was {done.old_key_id}); the key is in {done.location}"
        )
    else:
        emit_object(asdict(done), fmt)
    if done.source == "env":
        note(
            "now set IM_MASTER_KEY to the value of IM_NEW_MASTER_KEY wherever im runs (shell, "
            "cron, the daemon's service) and restart the daemon: until then they cannot open "
            "the secrets"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
