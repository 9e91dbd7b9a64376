"""Connectors to the external systems. Each vendor module owns its value maps as named
constants; the HTTP clients build on them."""

from __future__ import annotations

TYPES: tuple[str, ...] = ("servicenow", "jira", "pagerduty")
