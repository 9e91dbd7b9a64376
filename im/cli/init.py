"""``im init``: create the database (or show the existing one)."""

from __future__ import annotations

import click

from im.cli.context import app
from im.cli.output import emit_object, format_option


@click.command()
@format_option
def init(fmt: str) -> None:
    """Create the database, its install id and master key; make you an administrator.

    On an existing database it changes nothing and shows what is there. The master key
    comes from $IM_MASTER_KEY, else the OS keyring, else a 0600 key file in the user
    config directory; the output says which.
    """
    from im.store import initialise

    ctx = app()
    result = initialise(ctx.path, ctx.clock, ctx.principal)
    ctx.adopt(result.db)
    emit_object(
        {
            "database": str(result.path),
            "created": result.created,
            "install_id": result.install_id,
            "key_source": result.key_source,
            "key_id": result.key_id,
            "administrator": result.granted_to,
        },
        fmt,
    )
    if not result.created and fmt == "table":
        click.echo("(already initialised: nothing changed)", err=True)
