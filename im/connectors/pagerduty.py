"""PagerDuty REST v2 incidents: field names and value maps (SPEC §3)."""

from __future__ import annotations

TYPE = "pagerduty"
DEFAULT_URL = "https://api.pagerduty.com"

FIELDS: dict[str, str] = {
    "title": "title",
    "description": "body.details",
    "severity": "urgency",
    "priority": "priority",
    "status": "status",
    "assigned_to": "assignments",
    "escalation_policy": "escalation_policy",
    "work_notes": "notes",
}
NOT_SYNCED: dict[str, str] = {
    "comments": "PagerDuty incidents have notes only (work_notes), no customer-visible comments",
}
# The API cannot change an incident's description after creation.
CREATE_ONLY: frozenset[str] = frozenset({"description"})
URGENCY_OUT: dict[str, str] = {
    "sev1": "high",
    "sev2": "high",
    "sev3": "low",
    "sev4": "low",
    "sev5": "low",
}
URGENCY_IN: dict[str, str] = {"high": "sev2", "low": "sev4"}
PRIORITY_OUT: dict[str, str] = {"p1": "P1", "p2": "P2", "p3": "P3", "p4": "P4", "p5": "P5"}
STATUS_OUT: dict[str, str] = {
    "triggered": "triggered",
    "acknowledged": "acknowledged",
    "resolved": "resolved",
    "closed": "resolved",
}
