"""Per-integration field rules as a user edits them: `field-ownership set|unset|list` and
`field-mapping list|set|unset`. Names may be platform or external field names."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time
from im.config import mapping
from im.config.integrations import find
from im.connectors.base import FieldMapping
from im.errors import StateError, ValidationError
from im.model import Owner, Rule
from im.store import integrations as rows
from im.store.db import write


def mapping_table(db: Database, integration: dict[str, Any]) -> dict[str, FieldMapping]:
    return mapping.mappings(
        integration["type"], integration["settings"], rows.overrides(db, integration["id"])
    )


def _resolve(db: Database, name_or_id: str, field_name: str) -> tuple[dict[str, Any], str]:
    """The integration and the platform field a user means (platform or external name)."""
    integration = find(db, name_or_id)
    table = mapping_table(db, integration)
    return integration, mapping.platform_field(integration["type"], table, field_name)


def set_ownership(
    db: Database, name_or_id: str, field_name: str, owner: str, priority: int
) -> tuple[dict[str, Any], Rule]:
    """Set (or replace) the rule for one field. Writes."""
    if owner not in (o.value for o in Owner):
        raise ValidationError(f"--owner must be platform or external, not {owner!r}")
    if not -1_000_000 <= priority <= 1_000_000:
        raise ValidationError("--priority must be between -1000000 and 1000000")
    with write(db):
        integration, platform_field = _resolve(db, name_or_id, field_name)
        rule = Rule(platform_field, Owner(owner), priority, False)
        rows.put_rule(db, integration["id"], rule)
    return integration, rule


def unset_ownership(db: Database, name_or_id: str, field_name: str) -> tuple[dict[str, Any], str]:
    """Remove the rule for one field: nobody owns it then. Writes."""
    with write(db):
        integration, platform_field = _resolve(db, name_or_id, field_name)
        if not rows.delete_rule(db, integration["id"], platform_field):
            raise StateError(f"{integration['name']} has no ownership rule for {platform_field}")
    return integration, platform_field


def list_ownership(db: Database, name_or_id: str) -> list[dict[str, Any]]:
    """Every mapped field with its rule (owner ``none`` where no rule exists)."""
    integration = find(db, name_or_id)
    table = mapping_table(db, integration)
    rules = rows.rules(db, integration["id"])
    result = []
    for name, fm in table.items():
        rule = rules.get(name)
        result.append(
            {
                "field": name,
                "external_field": fm.external_field or "",
                "owner": rule.owner.value if rule else "none",
                "priority": rule.priority if rule else None,
                "default": rule.is_default if rule else False,
            }
        )
    return result


def list_mappings(db: Database, name_or_id: str) -> list[dict[str, Any]]:
    integration = find(db, name_or_id)
    return [
        {
            "field": fm.field,
            "external_field": fm.external_field or "",
            "synced": fm.synced,
            "values": ", ".join(f"{k}={v}" for k, v in fm.values.items()),
            "overridden": fm.overridden,
            "note": fm.note,
        }
        for fm in mapping_table(db, integration).values()
    ]


def set_mapping(
    db: Database,
    clock: Clock,
    name_or_id: str,
    field_name: str,
    external_field: str,
    values: list[str],
) -> tuple[dict[str, Any], FieldMapping]:
    """Map a platform field to another external field and/or other values. Writes."""
    with write(db):
        integration, platform_field = _resolve(db, name_or_id, field_name)
        override = mapping.parse_override(platform_field, external_field, values)
        rows.put_override(db, integration["id"], platform_field, override)
        _changed(db, clock, integration)
        result = mapping_table(db, integration)[platform_field]
    return integration, result


def unset_mapping(
    db: Database, clock: Clock, name_or_id: str, field_name: str
) -> tuple[dict[str, Any], str]:
    """Return one field to the type's default mapping. Writes."""
    with write(db):
        integration, platform_field = _resolve(db, name_or_id, field_name)
        if not rows.delete_override(db, integration["id"], platform_field):
            raise StateError(f"{platform_field} already has the default mapping")
        _changed(db, clock, integration)
    return integration, platform_field


def _changed(db: Database, clock: Clock, integration: dict[str, Any]) -> None:
    """A new mapping changes what the connector sends: a running daemon rebuilds its
    connector when the integration's updated_at moves."""
    rows.update(db, integration["id"], {"updated_at": format_time(clock.now())})
