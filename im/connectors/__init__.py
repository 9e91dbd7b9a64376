"""Connectors to the external systems. Each vendor module owns its value maps as named
constants and its HTTP client class; ``base`` holds the protocol, ``http`` the shared client
factory and typed errors."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from im.connectors.base import Connector, ConnectorConfig

TYPES: tuple[str, ...] = ("servicenow", "jira", "pagerduty")


def vendor(kind: str) -> ModuleType:
    """The vendor module of an integration type (its value maps and connector class)."""
    if kind not in TYPES:
        raise ValueError(f"unknown integration type {kind!r}")
    return importlib.import_module(f"im.connectors.{kind}")


def connect(kind: str, config: ConnectorConfig) -> Connector:
    """A connector of the given type. Makes no network call."""
    if kind == "servicenow":
        from im.connectors.servicenow import ServiceNowConnector

        return ServiceNowConnector(config)
    if kind == "jira":
        from im.connectors.jira import JiraConnector

        return JiraConnector(config)
    if kind == "pagerduty":
        from im.connectors.pagerduty import PagerDutyConnector

        return PagerDutyConnector(config)
    raise ValueError(f"unknown integration type {kind!r}")
