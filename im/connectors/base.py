"""The Connector protocol: what the sync engine asks of an external system, and the values
that cross that boundary.

Everything a connector returns is already *normalised*: platform field names, platform values
(``sev2``, ``acknowledged``, an assignee's email), text with the vendor's representation
removed (ADF, trailing whitespace, ServiceNow's 160-character titles), so echo, conflict and
drift checks compare like with like. A connector holds no mutable state shared between
integrations; it never makes a network call in its constructor.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # httpx costs ~140 ms to import; the value maps must stay cheap
    import httpx

TEXT_FIELDS = ("title", "description")


@dataclass(frozen=True)
class FieldMapping:
    """How one platform field travels to one integration type (SPEC §3)."""

    field: str
    external_field: str | None
    # platform value -> external value (the vendor default, then the user's overrides)
    values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    create_only: bool = False
    overridden: bool = False
    note: str = ""

    @property
    def synced(self) -> bool:
        return self.external_field is not None


@dataclass(frozen=True)
class ConnectorConfig:
    """What a connector needs, built by ``im.config.connection`` from an integration row and
    its opened secrets. ``secrets`` never leaves the connector in any message."""

    name: str
    url: str
    settings: Mapping[str, str]
    secrets: Mapping[str, str]
    fields: Mapping[str, FieldMapping]
    ca_bundle: str | None = None
    timeout: float = 10.0
    page_size: int | None = None  # None: the vendor's usual page size (tests page sooner)
    # reads made at once where the vendor has no batch read (the journals of many records);
    # 1 keeps requests in a fixed order (the deterministic simulation)
    concurrency: int = 4
    # how the connector waits between look-ups (Jira's eventually consistent search); the
    # deterministic simulation passes its clock's advance
    sleep: Callable[[float], None] = time.sleep
    # None: a real network client; tests and the simulation pass an in-process transport
    transport: httpx.BaseTransport | None = None


@dataclass(frozen=True)
class ExternalRecord:
    """An external incident as the platform sees it."""

    id: str  # the vendor's stable id: sys_id, issue id, PagerDuty incident id
    key: str  # what people call it: INC0010001, OPS-12, incident number
    url: str  # where a person opens it
    version: str  # comparable within one integration: larger is newer (SPEC §4 snapshots)
    updated_at: str  # UTC, ``YYYY-MM-DDTHH:MM:SS.mmmZ``
    fields: Mapping[str, str]  # platform field -> normalised platform value
    created_at: str = ""  # UTC, ``YYYY-MM-DDTHH:MM:SS.mmmZ``: the vendor's creation time
    correlation_key: str | None = None
    updated_by: str = ""  # the vendor's login/email of the last writer, when known
    # values that could not be mapped (field skipped, integration degraded): one line each
    warnings: tuple[str, ...] = ()
    # every journal entry, when the read brought them all along (Jira's search can); None:
    # ask list_journals
    journal: tuple[JournalEntry, ...] | None = None


@dataclass(frozen=True)
class JournalEntry:
    """One work note or comment, identified by the vendor's own entry id."""

    vendor_id: str
    field: str  # "work_notes" | "comments"
    body: str
    author: str  # email or login
    created_at: str  # UTC, ``YYYY-MM-DDTHH:MM:SS.mmmZ``


@dataclass(frozen=True)
class WebhookEvent:
    """One authentic delivery, parsed into what changed (SPEC §5)."""

    delivery_id: str
    event_type: str  # the vendor's own name: incident.reassigned, jira:issue_updated, ...
    external_id: str
    external_key: str
    version: str  # the record's vendor version after this change (same scale as the record)
    event_time: str  # UTC, ``YYYY-MM-DDTHH:MM:SS.mmmZ``
    actor: str  # the vendor's login/email of who made the change
    by_self: bool  # the actor is this integration's own account (echo candidate)
    changes: Mapping[str, str] = field(default_factory=dict)  # platform field -> value
    journals: tuple[JournalEntry, ...] = ()
    correlation_key: str | None = None
    created: bool = False  # the event announces a new record
    deleted: bool = False
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    """One line of ``im integration test``: what was checked, whether it passed, and what to
    do when it did not. ``warning`` checks pass but deserve attention."""

    name: str
    ok: bool
    detail: str
    warning: bool = False


@dataclass(frozen=True)
class WebhookRequest:
    """An inbound delivery as received: everything verification may need."""

    method: str
    path: str  # the path on the public URL, e.g. /webhooks/prod-jira
    query: str  # the raw query string, without "?"
    headers: Mapping[str, str]  # lower-case names
    body: bytes


class Connector(Protocol):
    """The operations the sync engine uses. Every call may raise the typed errors of
    ``im.connectors.http`` (classified as SPEC §4 says); none returns an empty result in
    place of an error."""

    kind: str
    # capabilities
    updates_description: bool  # PagerDuty cannot change an incident's description
    journals: frozenset[str]  # which journal fields the vendor has
    # fields a create writes after the request that makes the record (a crash or a lost
    # answer can leave them undone); the others can only differ later by someone's edit
    create_steps: frozenset[str]

    def create(self, values: Mapping[str, str], correlation_key: str) -> ExternalRecord:
        """Create the external record with every given mapped field. The correlation key is
        written where ``find_by_correlation`` finds it. A vendor "duplicate key" answer
        returns the existing record."""
        ...

    def find_by_correlation(self, correlation_key: str) -> ExternalRecord | None:
        """Our record with that key, or None. Retries a few times where the vendor's search
        is eventually consistent."""
        ...

    def get(self, external_id: str) -> ExternalRecord:
        """The current record. Raises RecordNotFoundError when it is gone."""
        ...

    def update(self, external_id: str, changes: Mapping[str, str]) -> ExternalRecord:
        """Write the given platform field values (status by the vendor's rules) and return the
        record after the write, with its new version."""
        ...

    def add_journal(self, external_id: str, field: str, body: str) -> JournalEntry:
        """Append a work note or comment and return it with the vendor's entry id."""
        ...

    def list_journal(self, external_id: str) -> list[JournalEntry]:
        """Every journal entry of the record, oldest first."""
        ...

    def list_journals(self, external_ids: Sequence[str]) -> dict[str, list[JournalEntry]]:
        """The journal entries of several records at once: every given id is a key (an empty
        list when the record has none), each list oldest first and the same entries
        ``list_journal`` gives."""
        ...

    def list_in_scope(self, created_since: datetime | None = None) -> Iterator[ExternalRecord]:
        """Every record in the integration's scope created at or after ``created_since``
        (None: every record), in creation order with a stable tie-breaker, so that paging
        neither skips nor repeats a record while records are being updated. A superset is
        allowed where the vendor filters creation time more coarsely (callers filter on
        ``created_at``), a subset never."""
        ...

    def list_changed(self, since: datetime) -> Iterator[ExternalRecord]:
        """Records in scope changed at or after ``since`` (a superset is allowed where the
        vendor cannot filter precisely: callers compare versions)."""
        ...

    def in_scope(self, external_ids: Sequence[str]) -> set[str]:
        """Which of these records match the integration's scope now (ids of records that are
        gone or out of scope are simply absent). Batched: a few requests for many ids."""
        ...

    def resolve_user(self, email: str) -> str | None:
        """The vendor's id for a user's email (cached), or None when there is none."""
        ...

    def normalise(self, field: str, value: str) -> str:
        """A platform value in the form the vendor stores it, mapped back: what a later read
        of this value will return (so comparisons never flap on representation)."""
        ...

    def verify_webhook(self, request: WebhookRequest, secrets: list[str], now: datetime) -> None:
        """Raise SignatureError unless the delivery is authentic under one of ``secrets``."""
        ...

    def malformed(self, payload: Any) -> str | None:
        """What is wrong with an authentic delivery's decoded JSON (None: nothing), checked
        on the request path, so without any network call."""
        ...

    def parse_webhook(self, request: WebhookRequest) -> WebhookEvent | None:
        """The normalised event, or None for an event type the product does not use. Raises
        MalformedEventError for an authentic body it cannot read."""
        ...

    def check(self) -> list[Check]:
        """Reachability, TLS, credentials, permissions and the account's kind."""
        ...

    def webhook_setup(self, webhook_url: str, secret: str | None) -> str:
        """What to configure in the vendor for deliveries to ``webhook_url``; the secret, or a
        placeholder when None."""
        ...

    def close(self) -> None: ...
