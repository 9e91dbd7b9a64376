"""Platform field <-> external field: each vendor's default map plus the user's overrides.

A field without an external field is not synced with that integration (ServiceNow priority,
Jira severity until ``--severity-field`` names a custom field, PagerDuty comments).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING

from im.connectors import vendor
from im.errors import ValidationError
from im.model import JOURNAL_FIELDS, SYNC_FIELDS, Override, Priority, Severity, Status

if TYPE_CHECKING:
    from im.connectors.base import FieldMapping

_NOTES: dict[tuple[str, str], str] = {
    ("servicenow", "severity"): "in: ServiceNow priority 1-5 -> sev1-sev5",
    ("servicenow", "title"): "truncated to 160 characters",
    ("servicenow", "status"): "in: 3 On Hold -> acknowledged, 8 Canceled -> closed",
    ("jira", "status"): "by the shortest path of transitions",
    ("jira", "work_notes"): "internal comments",
    ("jira", "comments"): "public comments",
    ("pagerduty", "description"): "on create only: the API cannot update it",
    ("pagerduty", "severity"): "in: high -> sev2, low -> sev4 unless already mapped",
    ("pagerduty", "status"): "a return to triggered is skipped",
    ("pagerduty", "assigned_to"): "else the integration's escalation policy",
}
_ENUMS = {"severity": Severity, "priority": Priority, "status": Status}
_EXTERNAL_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_.,]{0,127}")


def _vendor_fields(module: ModuleType, settings: Mapping[str, str]) -> dict[str, str | None]:
    fields: dict[str, str | None] = dict(module.FIELDS)
    if module.TYPE == "jira":
        fields["severity"] = settings.get("severity_field") or None
    return fields


def not_synced_reason(kind: str, platform_field: str) -> str | None:
    reasons: Mapping[str, str] = vendor(kind).NOT_SYNCED
    return reasons.get(platform_field)


def mappings(
    kind: str, settings: Mapping[str, str], overrides: Mapping[str, Override]
) -> dict[str, FieldMapping]:
    """Every field the integration type can sync, in the platform's field order."""
    from im.connectors.base import FieldMapping

    module = vendor(kind)  # loaded on first use: commands that map nothing stay fast
    external = _vendor_fields(module, settings)
    result: dict[str, FieldMapping] = {}
    for name in SYNC_FIELDS:
        if name not in external:
            continue
        override = overrides.get(name)
        values = dict(module.VALUE_MAPS.get(name, {}))
        note = _NOTES.get((kind, name), "")
        if name == "severity" and kind == "jira" and external[name] is None:
            note = "not synced until --severity-field names the custom field"
        if override is not None:
            values.update(override.values)
        result[name] = FieldMapping(
            field=name,
            external_field=override.external_field if override else external[name],
            values=values,
            create_only=name in module.CREATE_ONLY,
            overridden=override is not None,
            note=note,
        )
    return result


def platform_field(kind: str, table: Mapping[str, FieldMapping], name: str) -> str:
    """The platform field a user means by ``name`` (platform or external name, e.g. Jira's
    ``assignee``). Raises ValidationError naming the accepted fields."""
    wanted = name.strip()
    if wanted in table:
        return wanted
    for mapping in table.values():
        names = set((mapping.external_field or "").split(","))
        if wanted in names:
            return mapping.field
    reason = not_synced_reason(kind, wanted)
    if reason:
        raise ValidationError(f"{wanted} is not synced with {kind} integrations: {reason}")
    accepted = ", ".join(table)
    raise ValidationError(f"unknown field {wanted!r} for a {kind} integration", f"use {accepted}")


def parse_override(field_name: str, external_field: str, values: list[str]) -> Override:
    """Validate ``field-mapping set`` input. Raises ValidationError."""
    if field_name in JOURNAL_FIELDS and values:
        raise ValidationError(f"{field_name} is a journal: it has no values to map")
    if not _EXTERNAL_FIELD.fullmatch(external_field):
        raise ValidationError(f"{external_field!r} is not a valid external field name")
    value_map: dict[str, str] = {}
    enum = _ENUMS.get(field_name)
    for item in values:
        platform_value, sep, external_value = item.partition("=")
        if not sep or not platform_value.strip() or not external_value.strip():
            raise ValidationError(f"--value takes PLATFORM=EXTERNAL, not {item!r}")
        platform_value = platform_value.strip().lower()
        if enum is None:
            raise ValidationError(f"{field_name} has free-text values: there is nothing to map")
        allowed = [m.value for m in enum]
        if platform_value not in allowed:
            raise ValidationError(
                f"{platform_value!r} is not a {field_name}", f"use one of {', '.join(allowed)}"
            )
        value_map[platform_value] = external_value.strip()
    return Override(external_field, value_map)
