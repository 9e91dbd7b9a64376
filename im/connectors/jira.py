"""Jira Cloud REST v3 / Jira Service Management: field names and value maps (SPEC §3)."""

from __future__ import annotations

TYPE = "jira"

# platform field -> issue field; severity has no field until --severity-field names one
FIELDS: dict[str, str | None] = {
    "title": "summary",
    "description": "description",
    "severity": None,
    "priority": "priority",
    "status": "status",
    "assigned_to": "assignee",
    "work_notes": "comment.internal",
    "comments": "comment.public",
}
NOT_SYNCED: dict[str, str] = {
    "escalation_policy": "Jira issues have no escalation policy field",
}
PRIORITY_OUT: dict[str, str] = {
    "p1": "Highest",
    "p2": "High",
    "p3": "Medium",
    "p4": "Low",
    "p5": "Lowest",
}
SEVERITY_OUT: dict[str, str] = {
    "sev1": "Sev-1",
    "sev2": "Sev-2",
    "sev3": "Sev-3",
    "sev4": "Sev-4",
    "sev5": "Sev-5",
}
STATUS_OUT: dict[str, str] = {
    "triggered": "Open",
    "acknowledged": "In Progress",
    "resolved": "Resolved",
    "closed": "Closed",
}
DEFAULT_ISSUE_TYPE = "Incident"
