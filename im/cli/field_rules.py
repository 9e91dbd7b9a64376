"""``im integration field-ownership ...`` and ``im integration field-mapping ...``."""

from __future__ import annotations

import click

from im.cli.context import app
from im.cli.output import emit_rows, format_option
from im.model import Owner


@click.group("field-ownership")
def field_ownership() -> None:
    """Which system is authoritative for each field of an integration."""


@field_ownership.command("set")
@click.argument("name")
@click.argument("field")
@click.option(
    "--owner",
    type=click.Choice([o.value for o in Owner]),
    required=True,
    help="Who is authoritative.",
)
@click.option(
    "--priority",
    type=int,
    default=0,
    show_default=True,
    help="A larger number wins between integrations.",
)
def ownership_set(name: str, field: str, owner: str, priority: int) -> None:
    """Make OWNER authoritative for FIELD (platform or external field name)."""
    from im.config import fields

    app().authorize("field-ownership.set", integration=name)
    integration, rule = fields.set_ownership(app().db, name, field, owner, priority)
    click.echo(
        f"{integration['name']}: {rule.field} owned by {rule.owner}, priority {rule.priority}"
    )


@field_ownership.command("unset")
@click.argument("name")
@click.argument("field")
def ownership_unset(name: str, field: str) -> None:
    """Remove the rule for FIELD: changes then flow both ways and conflicts decide."""
    from im.config import fields

    app().authorize("field-ownership.unset", integration=name)
    integration, platform_field = fields.unset_ownership(app().db, name, field)
    click.echo(f"{integration['name']}: {platform_field} has no owner now")


@field_ownership.command("list")
@click.argument("name")
@format_option
def ownership_list(name: str, fmt: str) -> None:
    """Every field the integration syncs, with its external name, owner and priority."""
    from im.config import fields

    app().authorize("field-ownership.list", integration=name)
    rows = fields.list_ownership(app().db, name)
    emit_rows(rows, ("field", "external_field", "owner", "priority", "default"), fmt)


@click.group("field-mapping")
def field_mapping() -> None:
    """Which external field (and values) each platform field maps to."""


@field_mapping.command("list")
@click.argument("name")
@format_option
def mapping_list(name: str, fmt: str) -> None:
    """The integration's field map: defaults of its type plus your overrides."""
    from im.config import fields

    app().authorize("field-mapping.list", integration=name)
    rows = fields.list_mappings(app().db, name)
    emit_rows(rows, ("field", "external_field", "synced", "values", "overridden", "note"), fmt)


@field_mapping.command("set")
@click.argument("name")
@click.argument("field")
@click.argument("external_field")
@click.option(
    "--value",
    "values",
    multiple=True,
    metavar="PLATFORM=EXTERNAL",
    help="Map one value (repeatable), e.g. sev1=Critical.",
)
def mapping_set(name: str, field: str, external_field: str, values: tuple[str, ...]) -> None:
    """Map FIELD to EXTERNAL_FIELD, optionally with other values."""
    from im.config import fields

    app().authorize("field-mapping.set", integration=name)
    integration, result = fields.set_mapping(
        app().db, app().clock, name, field, external_field, list(values)
    )
    shown = ", ".join(f"{k}={v}" for k, v in result.values.items())
    click.echo(
        f"{integration['name']}: {result.field} -> {result.external_field}"
        + (f" ({shown})" if shown else "")
    )


@field_mapping.command("unset")
@click.argument("name")
@click.argument("field")
def mapping_unset(name: str, field: str) -> None:
    """Return FIELD to its type's default mapping."""
    from im.config import fields

    app().authorize("field-mapping.unset", integration=name)
    integration, platform_field = fields.unset_mapping(app().db, app().clock, name, field)
    click.echo(f"{integration['name']}: {platform_field} has its default mapping again")
