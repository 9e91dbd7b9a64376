"""ServiceNow Table API (``incident`` table): field names and value maps (SPEC §3)."""

from __future__ import annotations

TYPE = "servicenow"

# platform field -> Table API field
FIELDS: dict[str, str] = {
    "title": "short_description",
    "description": "description",
    "severity": "impact,urgency",
    "status": "state",
    "assigned_to": "assigned_to",
    "work_notes": "work_notes",
    "comments": "comments",
}
NOT_SYNCED: dict[str, str] = {
    "priority": "ServiceNow derives its priority from impact and urgency",
    "escalation_policy": "ServiceNow incidents have no escalation policy field",
}
# Outbound severity -> "impact/urgency"; inbound reads ServiceNow's derived priority.
SEVERITY_OUT: dict[str, str] = {
    "sev1": "1/1",
    "sev2": "1/2",
    "sev3": "2/2",
    "sev4": "2/3",
    "sev5": "3/3",
}
PRIORITY_IN: dict[str, str] = {"1": "sev1", "2": "sev2", "3": "sev3", "4": "sev4", "5": "sev5"}
STATE_OUT: dict[str, str] = {"triggered": "1", "acknowledged": "2", "resolved": "6", "closed": "7"}
STATE_IN: dict[str, str] = {
    "1": "triggered",
    "2": "acknowledged",
    "3": "acknowledged",  # On Hold
    "6": "resolved",
    "7": "closed",
    "8": "closed",  # Canceled
}
SHORT_DESCRIPTION_MAX = 160
DEFAULT_CORRELATION_FIELD = "correlation_id"
DEFAULT_CLOSE_CODE = "Solved (Permanently)"
DEFAULT_CLOSE_NOTES = "Resolved in im"
