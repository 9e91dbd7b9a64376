"""The Field Ownership Engine: which system is authoritative for each field (SPEC §3).

Pure rules: given an integration's direction and its rule for a field, say whether a platform
change is pushed to it and whether its change is applied to the platform.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from im.model import Direction, Owner, Rule

PLATFORM_DEFAULT_PRIORITY = 10
EXTERNAL_DEFAULT_PRIORITY = 5

# The guide's "Default Ownership Rules", per integration type.
DEFAULT_OWNERS: dict[str, dict[Owner, tuple[str, ...]]] = {
    "servicenow": {
        Owner.PLATFORM: ("severity", "title", "description"),
        Owner.EXTERNAL: ("assigned_to", "work_notes"),
    },
    "jira": {
        Owner.PLATFORM: ("severity", "priority"),
        Owner.EXTERNAL: ("assigned_to", "comments"),
    },
    "pagerduty": {
        Owner.PLATFORM: ("title", "description"),
        Owner.EXTERNAL: ("escalation_policy", "assigned_to"),
    },
}


def default_rules(kind: str) -> list[Rule]:
    owners = DEFAULT_OWNERS[kind]
    return [
        Rule(f, Owner.PLATFORM, PLATFORM_DEFAULT_PRIORITY, True) for f in owners[Owner.PLATFORM]
    ] + [Rule(f, Owner.EXTERNAL, EXTERNAL_DEFAULT_PRIORITY, True) for f in owners[Owner.EXTERNAL]]


def pushes(direction: Direction, rule: Rule | None) -> bool:
    """A platform change to the rule's field is sent to the integration."""
    return direction.sends and (rule is None or rule.owner is not Owner.EXTERNAL)


def accepts(direction: Direction, rule: Rule | None) -> bool:
    """An external change to the rule's field from the integration is applied."""
    return direction.receives and (rule is None or rule.owner is not Owner.PLATFORM)


def outbound_fields(
    direction: Direction,
    rules: Mapping[str, Rule],
    synced: Iterable[str],
    changed: Iterable[str],
    creating: bool,
) -> list[str]:
    """The changed fields to send to one integration, in the order given.

    ``synced`` are the fields the integration maps. A create sends every mapped field,
    whatever its owner (ownership governs updates); nothing is sent when the direction
    does not allow outbound.
    """
    if not direction.sends:
        return []
    mapped = set(synced)
    return [f for f in changed if f in mapped and (creating or pushes(direction, rules.get(f)))]


def all_defaults(rules: Iterable[Rule], kind: str) -> bool:
    """Nobody has set or removed a rule yet: every rule is one the type started with.

    A rule set explicitly counts as reviewed even when it repeats a default.
    """
    current = list(rules)
    return len(current) == len(default_rules(kind)) and all(r.is_default for r in current)
