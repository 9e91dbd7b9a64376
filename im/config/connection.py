"""From an integration row to a working connector: settings, opened secrets, the field map.

This is the one place where secrets are unsealed for use; the connector keeps them to itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from im.config import mapping
from im.config.integrations import find, master_key, secret_owner
from im.connectors import connect
from im.connectors.base import Check, Connector, ConnectorConfig
from im.connectors.http import ConnectorError, RecordNotFoundError
from im.errors import SecretError, ValidationError
from im.security.secrets import unseal
from im.store import integrations as rows
from im.store import meta, sync_state
from im.store.db import write

if TYPE_CHECKING:
    import httpx
    from sqlite_utils import Database


def secret(db: Database, integration: Mapping[str, Any], name: str) -> str | None:
    """One opened secret of the integration, or None when it has none by that name.
    Raises SecretError when the master key is missing or does not open it."""
    for last in (False, True):
        # Outside a transaction the row and the key id are two reads: an `im key rotate` of
        # another process can commit between them. Then the key id has changed since we
        # began, and reading both again (once) gives a matching pair.
        began_with = meta.require(db, "key_id")
        sealed = rows.sealed_secret(db, integration["id"], name)
        if sealed is None:
            return None
        try:
            return unseal(master_key(db), sealed, secret_owner(integration["id"], name))
        except SecretError:
            if last or meta.require(db, "key_id") == began_with:
                raise
    raise AssertionError("unreachable")


def connector_config(
    db: Database,
    integration: Mapping[str, Any],
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] | None = None,
    timeout: float | None = None,
    concurrency: int | None = None,
) -> ConnectorConfig:
    status = rows.secret_status(db, integration["id"])
    opened = {name: value for name in status if (value := secret(db, integration, name))}
    extra: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
    if timeout is not None:
        extra["timeout"] = timeout
    if concurrency is not None:
        extra["concurrency"] = concurrency
    return ConnectorConfig(
        name=integration["name"],
        url=integration["url"],
        settings=dict(integration["settings"]),
        secrets=opened,
        fields=mapping.mappings(
            integration["type"], integration["settings"], rows.overrides(db, integration["id"])
        ),
        ca_bundle=integration.get("ca_bundle"),
        transport=transport,
        **extra,
    )


def open_connector(
    db: Database,
    integration: Mapping[str, Any],
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] | None = None,
    timeout: float | None = None,
    concurrency: int | None = None,
) -> Connector:
    """The integration's connector (no network call yet). Raises SecretError when the master
    key does not open its secrets."""
    config = connector_config(
        db, integration, transport=transport, sleep=sleep, timeout=timeout, concurrency=concurrency
    )
    return connect(integration["type"], config)


@dataclass(frozen=True)
class CheckReport:
    integration: str
    kind: str
    url: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def run_checks(
    db: Database,
    name_or_id: str,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: float | None = None,
) -> CheckReport:
    """Run the integration's checks (reachability, TLS, credentials, permissions, scope, the
    account's kind). A failure that stops the checks early becomes the last, failed row.
    When every check passes, an integration paused for failing credentials resumes (writes)."""
    integration = find(db, name_or_id)
    connector = open_connector(db, integration, transport=transport, timeout=timeout)
    checks: list[Check] = []
    try:
        checks = connector.check()
    except ConnectorError as exc:
        checks.append(Check("reachability", False, _explain(exc, integration["type"])))
    finally:
        connector.close()
    report = CheckReport(integration["name"], integration["type"], integration["url"], checks)
    if report.ok:
        # the credentials work again: an integration paused by a 401/403 resumes (SPEC §4)
        with write(db):
            if sync_state.get(db, integration["id"]).get("pause_reason") == sync_state.AUTH_FAILING:
                sync_state.resume(db, integration["id"])
    return report


def _explain(exc: ConnectorError, kind: str) -> str:
    text = exc.message
    if isinstance(exc, RecordNotFoundError):
        return f"{text}: the URL answers but has no {kind} API there; check --url"
    return f"{text} ({exc.hint})" if exc.hint else text


WEBHOOK_PATH = "/webhooks/{name}"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"


def check_public_url(public_url: str) -> str:
    """The URL where external systems reach the daemon, without a trailing slash. Raises
    ValidationError unless it is an absolute http(s) URL without a query."""
    parsed = urlsplit(public_url.strip())
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.query
        or any(c.isspace() for c in public_url.strip())
    ):
        raise ValidationError("--public-url must be an http(s) URL such as https://im.example.com")
    return public_url.strip().rstrip("/")


def webhook_url(public_url: str, name: str) -> str:
    """The daemon's webhook URL for an integration. Raises ValidationError for a bad public
    URL."""
    return check_public_url(public_url) + WEBHOOK_PATH.format(name=name)


def webhook_setup(
    db: Database, name_or_id: str, public_url: str, *, show_secret: bool = False
) -> str:
    """What to configure in the external system so that it sends webhooks to ``public_url``.
    The secret appears only when ``show_secret`` asks for it."""
    integration = find(db, name_or_id)
    url = webhook_url(public_url, integration["name"])
    connector = open_connector(db, integration)
    try:
        value = secret(db, integration, "webhook_secret") if show_secret else None
        return connector.webhook_setup(url, value)
    finally:
        connector.close()


TransportFor = Callable[[Mapping[str, Any]], "httpx.BaseTransport | None"]


class ConnectorCache:
    """One connector per integration, rebuilt when the integration changes (new settings or
    credentials). ``get`` reads the database: call it from the thread that owns ``db``.
    ``concurrency`` 1 keeps every request on the calling thread, in a fixed order (the
    deterministic simulation); None: the connectors' default."""

    def __init__(
        self,
        db: Database,
        *,
        transport_for: TransportFor | None = None,
        sleep: Callable[[float], None] | None = None,
        concurrency: int | None = None,
    ) -> None:
        self._db = db
        self._transport_for = transport_for
        self._sleep = sleep
        self._concurrency = concurrency
        self._connectors: dict[int, tuple[str, Connector]] = {}
        self._retired: list[tuple[float, Connector]] = []

    def get(self, integration: Mapping[str, Any]) -> Connector:
        cached = self._connectors.get(integration["id"])
        if cached is not None and cached[0] == integration["updated_at"]:
            return cached[1]
        if cached is not None:
            # closed later, not now: a sender thread may still be using it (the daemon claims
            # while earlier rows are being sent); no send outlives a minute
            now = time.monotonic()
            for retired_at, old in [r for r in self._retired if now - r[0] > 60]:
                old.close()
                self._retired.remove((retired_at, old))
            self._retired.append((now, cached[1]))
        transport = self._transport_for(integration) if self._transport_for else None
        connector = open_connector(
            self._db, integration, transport=transport, sleep=self._sleep,
            concurrency=self._concurrency,
        )  # fmt: skip
        self._connectors[integration["id"]] = (integration["updated_at"], connector)
        return connector

    def built(self, integration: Mapping[str, Any]) -> Connector:
        """The connector ``get`` built last for the integration (no database access)."""
        return self._connectors[integration["id"]][1]

    def close(self) -> None:
        for _, connector in self._connectors.values():
            connector.close()
        for _, connector in self._retired:
            connector.close()
        self._connectors.clear()
        self._retired.clear()
