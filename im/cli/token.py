"""``im token ...``: the bearer tokens of the REST API."""

from __future__ import annotations

from dataclasses import asdict

import click

from im.cli.context import app
from im.cli.output import emit_rows, format_option, note

TOKEN_COLUMNS = (
    "id",
    "name",
    "principal",
    "prefix",
    "created_at",
    "last_used_at",
    "revoked_at",
)


@click.group()
def token() -> None:
    """API tokens: the REST API acts as the principal of the token a request carries."""


@token.command()
@click.argument("name")
@click.option(
    "--for",
    "principal",
    metavar="PRINCIPAL",
    help="The principal the token acts as (default: you, $IM_USER or the login name).",
)
def create(name: str, principal: str | None) -> None:
    """Create the API token NAME and print it, this once.

    Only the token goes to standard output, so `TOKEN=$(im token create ci)` captures it.
    The database keeps its hash: store the token now, it cannot be shown again. The
    token has its principal's roles (`im access list`); tokens for others need an
    administrator.
    """
    from im.security import tokens

    ctx = app()
    owner = ctx.principal if principal is None else principal
    ctx.authorize("token.create", principal=owner)
    issued = tokens.issue(ctx.db, ctx.clock, ctx.principal, name, owner)
    click.echo(issued.secret)
    made = issued.token
    note(
        f"created token {made.name} (id {made.id}) acting as {made.principal}; "
        "store it now: it is not shown again"
    )
    note('send it as the header "Authorization: Bearer <token>" to /api/v1 of `im daemon`')


@token.command("list")
@format_option
def list_(fmt: str) -> None:
    """List API tokens (revoked ones too) with the first characters of each; never a token.
    Administrators see every token, others their own."""
    from im.security import tokens

    ctx = app()
    ctx.authorize("token.list", principal=ctx.principal)
    shown = [
        asdict(t)
        for t in tokens.listing(ctx.db)
        if ctx.access.allows("token.list", principal=t.principal)
    ]
    emit_rows(shown, TOKEN_COLUMNS, fmt)


@token.command()
@click.argument("token_ref", metavar="ID|NAME")
def revoke(token_ref: str) -> None:
    """Revoke a token: the API refuses it from now on."""
    from im.security import tokens

    ctx = app()
    found = tokens.find(ctx.db, token_ref)
    ctx.authorize("token.revoke", principal=found.principal)
    revoked = tokens.revoke(ctx.db, ctx.clock, str(found.id))  # the token decided on
    click.echo(f"revoked token {revoked.name} (id {revoked.id})")
