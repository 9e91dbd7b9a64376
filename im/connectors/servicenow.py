"""ServiceNow Table API (``incident`` table): field names, value maps (SPEC §3) and the
connector.

ServiceNow has no outbound webhook of its own. ``im`` defines one: a Business Rule (its script
is printed by ``webhook_setup``) that POSTs a JSON payload signed with Standard Webhooks after
every insert or update of an incident. Payload (compact JSON, keys in this order)::

    {"type": "incident.created" | "incident.updated",
     "operation": "insert" | "update",
     "table": "incident",
     "sys_id": "<32 hex>", "number": "INC0010001",
     "sys_mod_count": "3", "sys_updated_on": "2026-11-27 09:00:05", "sys_updated_by": "agent",
     "correlation": {"field": "correlation_id", "value": "im:<install>:INC-7"},
     "assigned_to": {"sys_id": "<sys_user sys_id or empty>", "email": "<its email or empty>"},
     "changes": {"<column>": "<current value>", ...},
     "journal": [{"sys_id": "<sys_journal_field sys_id>", "element": "work_notes",
                  "value": "...", "sys_created_on": "...", "sys_created_by": "agent"}]}

``changes`` holds the current values of the watched columns that changed in this save (every
watched column on insert); ``journal`` the work notes and comments this save added. Headers:
``webhook-id`` (``msg_<guid>``, the delivery id), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``).

Retries: none. The rule runs *after* the save (an async rule has no ``previous``, so it could
not tell what changed) and hands the POST to ServiceNow's ECC queue with ``executeAsync()``, so
a save never waits for ``im``; ServiceNow does not send a refused or lost delivery again. A
missed delivery is healed by drift reconciliation: keep a reconcile schedule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from im.clock import format_time
from im.connectors.base import (
    Check,
    ConnectorConfig,
    ExternalRecord,
    JournalEntry,
    WebhookEvent,
    WebhookRequest,
)
from im.connectors.http import (
    AuthError,
    ConnectorError,
    MalformedEventError,
    PermanentError,
    RecordNotFoundError,
    RetryableError,
    TLSError,
    make_client,
    send,
)
from im.security.signatures import json_body, standard_webhooks_verify

if TYPE_CHECKING:
    import httpx

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
# platform field -> its outbound value map (im.config.mapping adds the user's overrides)
VALUE_MAPS: dict[str, dict[str, str]] = {"severity": SEVERITY_OUT, "status": STATE_OUT}
CREATE_ONLY: frozenset[str] = frozenset()

# The base system's priority lookup (impact, urgency) -> priority (vendor README §1.7). An
# instance may edit these rules; normalise() predicts the base system's answer.
PRIORITY_MATRIX: dict[tuple[str, str], str] = {
    ("1", "1"): "1",
    ("1", "2"): "2",
    ("1", "3"): "3",
    ("2", "1"): "2",
    ("2", "2"): "3",
    ("2", "3"): "4",
    ("3", "1"): "3",
    ("3", "2"): "4",
    ("3", "3"): "5",
}
PRIORITY_FIELD = "priority"
# states that ServiceNow accepts only with a resolution code and notes
CLOSING_STATES = frozenset({"6", "7"})
DESCRIPTION_MAX = 4000  # task.description is a 4,000-character string column
# ServiceNow cuts longer strings silently; the connector cuts them itself and says so
TEXT_LIMITS = {"title": SHORT_DESCRIPTION_MAX, "description": DESCRIPTION_MAX}
TABLE_PATH = "/api/now/table/{table}"
INCIDENT = "incident"
JOURNAL_TABLE = "sys_journal_field"
# Responses over 5 MB fail on a default instance; 1,000 incidents stay well under it.
DEFAULT_PAGE_SIZE = 1000
# Roles that may write incidents on a base instance.
WRITE_ROLES = frozenset({"itil", "admin", "sn_incident_write", "itil_admin"})
ASSIGNEE_EMAIL = "assigned_to.email"  # dot-walked column: no user look-up per record
WEBHOOK_EVENTS = ("incident.created", "incident.updated")
WEBHOOK_TIMEOUT_SECONDS = 10
# A journal entry is written in the same transaction as its incident; this much slack covers a
# second boundary between the two timestamps.
JOURNAL_MATCH_SLACK = timedelta(seconds=5)
SN_TIME = "%Y-%m-%d %H:%M:%S"
JOURNAL_ORDER = ("work_notes", "comments")  # the order the Business Rule reports new entries in
JOURNAL_COLUMNS = "sys_id,element,element_id,value,sys_created_on,sys_created_by"
# sys_ids per ``…IN`` query (list_journals, in_scope): 100 keep the URL near 3.5 KB
ID_BATCH = 100
# Creation order with sys_id breaking ties (many incidents share a second): offset paging is
# stable while incidents change, and so never skips or repeats one.
CREATION_ORDER = "ORDERBYsys_created_on^ORDERBYsys_id"
_ROLE_HINT = "the itil role (read and write incidents)"
_SYS_ID = re.compile(r"[0-9a-f]{32}")


def _error_text(body: Any) -> str:
    """The Table API's error text: ``{"error": {"message", "detail"}, "status": "failure"}``."""
    error = body["error"]
    message = str(error.get("message") or "").strip()
    detail = str(error.get("detail") or "").strip()
    return f"{message}: {detail}" if message and detail else message or detail


def _value(raw: Mapping[str, Any], column: str) -> str:
    """A column's value whatever the shape: a string, or a reference / display object."""
    value = raw.get(column, "")
    if isinstance(value, Mapping):
        value = value.get("value", "")
    return "" if value is None else str(value)


def _literal(value: str) -> str:
    """A value inside an encoded query: a literal ``^`` is written ``^^``."""
    return value.replace("^", "^^")


def _branches(query: str) -> list[str]:
    """The queries an encoded query ORs with ``^NQ``, empty ones dropped. A literal ``^`` is
    written ``^^``, so ``a^^NQb`` is one query."""
    escaped = "\x00"
    parts = query.replace("^^", escaped).split("^NQ")
    return [p.replace(escaped, "^^") for p in parts if p.strip("^ ")]


def _and_each(query: str, before: Sequence[str], after: Sequence[str] = ()) -> str:
    """Conditions ANDed into every ``^NQ`` branch of ``query``: ``^NQ`` ORs whole queries, so
    a condition written once binds to one branch only, and the others match records outside
    it."""
    branches = _branches(query) or [""]
    return "^NQ".join("^".join(c for c in (*before, b, *after) if c) for b in branches)


def _id_lists(ids: Sequence[str]) -> Iterator[str]:
    """``ids`` (each once) as the comma lists of ``…IN`` conditions, ID_BATCH at a time."""
    wanted = list(dict.fromkeys(ids))
    for start in range(0, len(wanted), ID_BATCH):
        yield ",".join(_literal(i) for i in wanted[start : start + ID_BATCH])


def _sn_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(SN_TIME)


def _iso(sn_time: str) -> str:
    """``2026-11-27 09:00:05`` (UTC) -> ``2026-11-27T09:00:05.000Z``; "" when unreadable."""
    try:
        moment = datetime.strptime(sn_time.strip(), SN_TIME).replace(tzinfo=UTC)
    except ValueError:
        return ""
    return format_time(moment)


def _version(mod_count: str) -> str:
    """``sys_mod_count`` zero-padded, so versions compare as strings."""
    try:
        return f"{int(mod_count):012d}"
    except ValueError:
        return "0" * 12


def _read_text(value: str) -> str:
    return value.replace("\r\n", "\n").strip()


def _text_out(field: str, value: str) -> str:
    """What ServiceNow stores for a title or description: titles trimmed, both cut to their
    column's length."""
    text = value.strip() if field == "title" else value
    return text[: TEXT_LIMITS[field]]


def _inbound(values: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str]:
    """External value -> platform value: the vendor defaults, then the inverse of the
    (possibly overridden) outbound map. Where several platform values map to one external
    value, the default keeps it when it is one of them, else the first one wins."""
    result = dict(defaults)
    seen: set[str] = set()
    for platform, external in values.items():
        if external in seen:
            continue
        seen.add(external)
        if values.get(result.get(external, "")) != external:
            result[external] = platform
    return result


class ServiceNowConnector:
    """The Table API on ``incident``, Basic auth, values read with display values off."""

    kind = TYPE
    updates_description = True
    journals = frozenset({"work_notes", "comments"})
    create_steps: frozenset[str] = frozenset()  # one POST writes every field

    def __init__(self, config: ConnectorConfig) -> None:
        self._config = config
        settings = config.settings
        self._username = settings.get("username", "")
        self._correlation = settings.get("correlation_field") or DEFAULT_CORRELATION_FIELD
        self._close_code = settings.get("close_code") or DEFAULT_CLOSE_CODE
        self._close_notes = settings.get("close_notes") or DEFAULT_CLOSE_NOTES
        self._group_setting = (settings.get("assignment_group") or "").strip()
        self._scope_query = (settings.get("scope_query") or "").strip()
        self._page_size = config.page_size or DEFAULT_PAGE_SIZE
        self._base = config.url.rstrip("/")
        self._client: httpx.Client | None = None
        self._group_id: str | None = None
        self._user_ids: dict[str, str] = {}  # email -> sys_user sys_id
        self._user_emails: dict[str, str] = {}  # sys_user sys_id -> email
        fields = config.fields
        status = fields.get("status")
        self._state_out = dict(status.values) if status else dict(STATE_OUT)
        self._state_in = _inbound(self._state_out, STATE_IN)
        severity = fields.get("severity")
        self._severity_out = dict(severity.values) if severity else dict(SEVERITY_OUT)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = make_client(
                self._config.url,
                auth=(self._username, self._config.secrets.get("password", "")),
                ca_bundle=self._config.ca_bundle,
                timeout=self._config.timeout,
                transport=self._config.transport,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, httpx.Response]:
        """One Table API call: the ``result`` of its JSON body and the response. Raises the
        typed errors of ``im.connectors.http``; a 2xx answer that is not the Table API's JSON
        (a hibernating developer instance answers with a web page) is retryable."""
        response = send(self.client, method, path, error_text=_error_text, **kwargs)
        if response.status_code == 204:
            return None, response
        try:
            body = response.json()
            return body["result"], response
        except (ValueError, KeyError, TypeError):
            raise RetryableError(
                f"{method} {path}: {response.status_code} the answer is not Table API JSON "
                "(is the instance hibernating or behind a login page?)",
                status=response.status_code,
            ) from None

    def _params(self, **extra: str) -> dict[str, str]:
        return {
            "sysparm_display_value": "false",
            "sysparm_exclude_reference_link": "true",
            **extra,
        }

    def _column(self, platform_field: str) -> str:
        mapping = self._config.fields.get(platform_field)
        default = FIELDS.get(platform_field, platform_field)
        return (mapping.external_field if mapping else None) or default

    def _severity_columns(self) -> tuple[str, str]:
        impact, _, urgency = self._column("severity").partition(",")
        return impact.strip() or "impact", urgency.strip() or "urgency"

    def _read_columns(self) -> str:
        columns = ["sys_id", "number", "sys_mod_count", "sys_updated_on", "sys_updated_by"]
        columns.append("sys_created_on")
        columns += [self._correlation, PRIORITY_FIELD, ASSIGNEE_EMAIL, "assignment_group"]
        for name in self._config.fields:
            if name in self.journals or name == "severity":
                continue
            columns.append(self._column(name))
        columns += self._severity_columns()
        return ",".join(dict.fromkeys(columns))

    def _table(self, table: str, sys_id: str = "") -> str:
        path = TABLE_PATH.format(table=table)
        return f"{path}/{sys_id}" if sys_id else path

    def _pages(self, table: str, query: str, fields: str) -> Iterator[dict[str, Any]]:
        """Every row matching ``query``, page by page: offset and limit, following the
        ``Link`` header's next page (else ``X-Total-Count``)."""
        offset = 0
        while True:
            params = self._params(
                sysparm_query=query,
                sysparm_fields=fields,
                sysparm_limit=str(self._page_size),
                sysparm_offset=str(offset),
            )
            rows, response = self._call("GET", self._table(table), params=params)
            if not isinstance(rows, list):
                raise RetryableError(f"GET {self._table(table)}: the result is not a list")
            yield from rows
            if not rows:
                return
            following = _next_offset(response.headers.get("link", ""))
            if following is None:
                total = response.headers.get("x-total-count", "")
                if total.isdigit():
                    following = offset + len(rows) if offset + len(rows) < int(total) else None
                elif len(rows) >= self._page_size:
                    following = offset + len(rows)
            if following is None or following <= offset:
                return
            offset = following

    # -- scope ------------------------------------------------------------------------------

    def _group(self) -> str | None:
        """The configured assignment group's sys_id (looked up once), or None when no group is
        configured. Raises PermanentError when it does not exist."""
        if not self._group_setting:
            return None
        if self._group_id is None:
            found = self._find_group()
            if found is None:
                raise PermanentError(
                    f"ServiceNow has no assignment group {self._group_setting!r}",
                    "check --assignment-group (a group name or sys_id)",
                )
            self._group_id = found
        return self._group_id

    def _find_group(self) -> str | None:
        wanted = _literal(self._group_setting)
        params = self._params(
            sysparm_query=f"name={wanted}^ORsys_id={wanted}",
            sysparm_fields="sys_id,name",
            sysparm_limit="2",
        )
        rows, _ = self._call("GET", self._table("sys_user_group"), params=params)
        for row in rows or []:
            if self._group_setting in (_value(row, "sys_id"), _value(row, "name")):
                return _value(row, "sys_id")
        return None

    def _scoped(self, *conditions: str, order: str = "") -> str:
        """An encoded query: the assignment group and ``conditions`` ANDed into every
        ``^NQ`` branch of the scope query, then ``order`` (which applies to all branches)."""
        group = self._group()
        head = [f"assignment_group={group}"] if group else []
        query = _and_each(self._scope_query, head, conditions)
        return f"{query}^{order}" if order and query else query or order

    # -- records ----------------------------------------------------------------------------

    def _record(self, raw: Mapping[str, Any], warnings: list[str] | None = None) -> ExternalRecord:
        notes = list(warnings or [])
        fields = self._fields_in(raw, notes)
        sys_id = _value(raw, "sys_id")
        return ExternalRecord(
            id=sys_id,
            key=_value(raw, "number"),
            url=f"{self._base}/incident.do?sys_id={sys_id}",
            version=_version(_value(raw, "sys_mod_count")),
            updated_at=_iso(_value(raw, "sys_updated_on")),
            fields=fields,
            created_at=_iso(_value(raw, "sys_created_on")),
            correlation_key=_value(raw, self._correlation) or None,
            updated_by=_value(raw, "sys_updated_by"),
            warnings=tuple(notes),
        )

    def _fields_in(
        self, raw: Mapping[str, Any], notes: list[str], lookup: bool = True
    ) -> dict[str, str]:
        """Platform values of the scalar fields ``raw`` holds; a value that cannot be mapped
        is left out with a warning in ``notes``."""
        fields: dict[str, str] = {}
        for name in self._config.fields:
            if name not in self.journals:
                value = self._field_in(name, raw, notes, lookup)
                if value is not None:
                    fields[name] = value
        return fields

    def _field_in(
        self, name: str, raw: Mapping[str, Any], notes: list[str], lookup: bool
    ) -> str | None:
        column = PRIORITY_FIELD if name == "severity" else self._column(name)
        if column not in raw:
            return None
        value = _value(raw, column)
        if name == "severity":
            if value in PRIORITY_IN:
                return PRIORITY_IN[value]
            notes.append(f"severity: ServiceNow priority {value!r} maps to no severity")
            return None
        if name == "status":
            if value in self._state_in:
                return self._state_in[value]
            notes.append(f"status: ServiceNow state {value!r} maps to no status")
            return None
        if name == "assigned_to":
            return self._assignee_in(value, raw.get(ASSIGNEE_EMAIL), notes, lookup)
        return _read_text(value)

    def _assignee_in(self, sys_id: str, email: Any, notes: list[str], lookup: bool) -> str | None:
        """The assignee's email: from the dot-walked column, the cache, or (``lookup``) a
        ``sys_user`` read. Parsing a delivery never looks up: it runs on the request path."""
        if not sys_id:
            return ""
        if isinstance(email, str) and email:
            self._remember(email, sys_id)
            return email.strip().lower()
        found = self._user_emails.get(sys_id)
        if found is None and lookup:
            params = self._params(sysparm_fields="sys_id,email,user_name")
            try:
                row, _ = self._call("GET", self._table("sys_user", sys_id), params=params)
            except RecordNotFoundError:
                row = {}
            found = _value(row or {}, "email")
            if found:
                self._remember(found, sys_id)
        if not found:
            notes.append(f"assigned_to: ServiceNow user {sys_id} has no email address")
            return None
        return found.strip().lower()

    def _remember(self, email: str, sys_id: str) -> None:
        email = email.strip().lower()
        self._user_ids[email] = sys_id
        self._user_emails[sys_id] = email

    def _outbound(
        self, values: Mapping[str, str], strict: bool = True
    ) -> tuple[dict[str, str], list[str]]:
        """Table API columns for platform values, and warnings (a truncated title; an unknown
        assignee left out unless ``strict``). Raises PermanentError for a value ServiceNow
        cannot hold."""
        body: dict[str, str] = {}
        warnings: list[str] = []
        for name, value in values.items():
            if name not in self._config.fields or name in self.journals:
                continue
            if name in TEXT_LIMITS:
                if len(value.strip()) > TEXT_LIMITS[name]:
                    limit = TEXT_LIMITS[name]
                    warnings.append(f"{name}: truncated to ServiceNow's {limit} characters")
                body[self._column(name)] = _text_out(name, value)
            elif name == "severity":
                impact, sep, urgency = self._severity_out.get(value, "").partition("/")
                if not sep:
                    raise PermanentError(f"severity {value!r} has no impact/urgency mapping")
                impact_column, urgency_column = self._severity_columns()
                body[impact_column], body[urgency_column] = impact, urgency
            elif name == "status":
                state = self._state_out.get(value)
                if state is None:
                    raise PermanentError(f"status {value!r} has no ServiceNow state mapping")
                body[self._column(name)] = state
                if state in CLOSING_STATES:
                    body["close_code"] = self._close_code
                    body["close_notes"] = self._close_notes
            elif name == "assigned_to":
                assignee = self._assignee_out(value, strict)
                if assignee is None:
                    warnings.append(f"assigned_to: ServiceNow has no user {value}; unassigned")
                else:
                    body[self._column(name)] = assignee
            else:
                body[self._column(name)] = value
        return body, warnings

    def _assignee_out(self, email: str, strict: bool) -> str | None:
        """The sys_id to write for an assignee ("" unassigns). An unknown email raises
        PermanentError when ``strict``, else gives None."""
        email = email.strip().lower()
        if not email:
            return ""
        sys_id = self.resolve_user(email)
        if sys_id is None and strict:
            raise PermanentError(
                f"ServiceNow has no user with the email {email}",
                "create the user in ServiceNow or map the assignee by hand",
            )
        return sys_id

    # -- the Connector protocol -------------------------------------------------------------

    def create(self, values: Mapping[str, str], correlation_key: str) -> ExternalRecord:
        """POST the incident with every non-empty mapped field, the correlation key and the
        configured assignment group. An assignee ServiceNow does not know is left out with a
        warning (the incident matters more than its assignment). Raises PermanentError when
        the correlation column does not exist (ServiceNow drops unknown columns silently:
        retries would duplicate). Writes."""
        body, warnings = self._outbound({k: v for k, v in values.items() if v}, strict=False)
        body[self._correlation] = correlation_key
        group = self._group()
        if group:
            body["assignment_group"] = group
        params = self._params(sysparm_fields=self._read_columns())
        raw, _ = self._call("POST", self._table(INCIDENT), params=params, json=body)
        record = self._record(raw, warnings)
        if record.correlation_key != correlation_key:
            raise PermanentError(
                f"{record.key} was created without the correlation key: the incident table "
                f"has no column {self._correlation!r}",
                "set --correlation-field to an existing column, then delete "
                f"{record.key} in ServiceNow",
            )
        return record

    def find_by_correlation(self, correlation_key: str) -> ExternalRecord | None:
        """Our incident with that key, or None. Only an exact match counts: ServiceNow
        ignores a condition on an unknown column and would answer every incident."""
        query = f"{self._correlation}={_literal(correlation_key)}^ORDERBYsys_created_on"
        params = self._params(
            sysparm_query=query, sysparm_fields=self._read_columns(), sysparm_limit="10"
        )
        rows, _ = self._call("GET", self._table(INCIDENT), params=params)
        for raw in rows or []:
            if _value(raw, self._correlation) == correlation_key:
                return self._record(raw)
        return None

    def get(self, external_id: str) -> ExternalRecord:
        params = self._params(sysparm_fields=self._read_columns())
        raw, _ = self._call("GET", self._table(INCIDENT, external_id), params=params)
        return self._record(raw)

    def update(self, external_id: str, changes: Mapping[str, str]) -> ExternalRecord:
        """PATCH the mapped fields (resolving and closing add the close code and notes) and
        return the record as ServiceNow answers it. Raises PermanentError for an assignee
        ServiceNow does not know. Writes."""
        journal = [name for name in changes if name in self.journals]
        if journal:
            raise ValueError(f"{', '.join(journal)}: journals are appended with add_journal")
        body, warnings = self._outbound(changes)
        if not body:
            return self.get(external_id)
        params = self._params(sysparm_fields=self._read_columns())
        path = self._table(INCIDENT, external_id)
        raw, _ = self._call("PATCH", path, params=params, json=body)
        return self._record(raw, warnings)

    def add_journal(self, external_id: str, field: str, body: str) -> JournalEntry:
        """Append a work note or comment (PATCH; journal columns are write-append), then find
        its ``sys_journal_field`` entry by author, content and time. Writes. Raises
        PermanentError when the entry cannot be read back after the write: retrying would
        write it again (the account usually lacks read access to sys_journal_field)."""
        if field not in self.journals:
            raise ValueError(f"{field} is not a ServiceNow journal")
        params = self._params(sysparm_fields="sys_id,sys_updated_on,sys_mod_count")
        path = self._table(INCIDENT, external_id)
        raw, _ = self._call("PATCH", path, params=params, json={self._column(field): body})
        written = _value(raw or {}, "sys_updated_on")
        entry = self.find_journal_entry(external_id, field, body, written or None)
        if entry is None:
            raise PermanentError(
                f"the {field} entry was written to {external_id} but cannot be read back from "
                f"{JOURNAL_TABLE}; it was not written twice",
                f"grant the integration account read access to {JOURNAL_TABLE}",
            )
        return entry

    def find_journal_entry(
        self, external_id: str, field: str, body: str, written_on: str | None = None
    ) -> JournalEntry | None:
        """The newest entry of ``field`` written by this integration's account with this
        text, at or after ``written_on`` (ServiceNow time, with a few seconds' slack), or
        None. This is how a write whose id was never recorded is recovered."""
        conditions = [
            f"element_id={_literal(external_id)}",
            f"element={self._column(field)}",
            f"sys_created_by={_literal(self._username)}",
        ]
        if written_on:
            try:
                since = datetime.strptime(written_on, SN_TIME) - JOURNAL_MATCH_SLACK
                conditions.append(f"sys_created_on>={since.strftime(SN_TIME)}")
            except ValueError:
                pass
        query = "^".join(conditions) + "^ORDERBYDESCsys_created_on"
        wanted = _read_text(body)
        for row in self._pages(JOURNAL_TABLE, query, JOURNAL_COLUMNS):
            if _read_text(_value(row, "value")) == wanted:
                return self._journal(row, field)
        return None

    def _journal(self, row: Mapping[str, Any], field: str | None = None) -> JournalEntry:
        element = _value(row, "element")
        platform = field or next(
            (name for name in self.journals if self._column(name) == element), element
        )
        return JournalEntry(
            vendor_id=_value(row, "sys_id"),
            field=platform,
            body=_read_text(_value(row, "value")),
            author=_value(row, "sys_created_by"),
            created_at=_iso(_value(row, "sys_created_on")),
        )

    def list_journal(self, external_id: str) -> list[JournalEntry]:
        """Every work note and comment of the incident from ``sys_journal_field``, oldest
        first."""
        condition = f"element_id={_literal(external_id)}"
        return [self._journal(row) for row in self._journal_rows(condition)]

    def list_journals(self, external_ids: Sequence[str]) -> dict[str, list[JournalEntry]]:
        """Every work note and comment of several incidents, one ``sys_journal_field`` query
        (paged) per ID_BATCH ids; each list oldest first, [] for an incident without any."""
        result: dict[str, list[JournalEntry]] = {i: [] for i in external_ids}
        for chunk in _id_lists(list(result)):
            for row in self._journal_rows(f"element_idIN{chunk}"):
                entries = result.get(_value(row, "element_id"))
                if entries is not None:
                    entries.append(self._journal(row))
        return result

    def _journal_rows(self, condition: str) -> Iterator[dict[str, Any]]:
        """The synced journal entries matching ``condition`` (on ``element_id``), oldest first
        with sys_id breaking ties, so one incident's entries come in the same order whether
        asked for alone or with others."""
        elements = ",".join(self._column(name) for name in self._journal_fields())
        query = f"{condition}^elementIN{elements}^{CREATION_ORDER}"
        return self._pages(JOURNAL_TABLE, query, JOURNAL_COLUMNS)

    def _journal_fields(self) -> list[str]:
        return [name for name in JOURNAL_ORDER if name in self._config.fields]

    def list_in_scope(self, created_since: datetime | None = None) -> Iterator[ExternalRecord]:
        """Incidents in scope created at or after ``created_since`` (to the second,
        ServiceNow's resolution: up to a second earlier too), oldest first, sys_id breaking
        ties."""
        since = [f"sys_created_on>={_sn_time(created_since)}"] if created_since else []
        query = self._scoped(*since, order=CREATION_ORDER)
        for raw in self._pages(INCIDENT, query, self._read_columns()):
            yield self._record(raw)

    def list_changed(self, since: datetime) -> Iterator[ExternalRecord]:
        """Incidents in scope updated at or after ``since`` (to the second, ServiceNow's
        resolution), oldest change first, sys_id breaking ties."""
        condition = f"sys_updated_on>={_sn_time(since)}"
        query = self._scoped(condition, order="ORDERBYsys_updated_on^ORDERBYsys_id")
        for raw in self._pages(INCIDENT, query, self._read_columns()):
            yield self._record(raw)

    def in_scope(self, external_ids: Sequence[str]) -> set[str]:
        """The incidents among ``external_ids`` that match the scope now: one query (paged,
        sys_ids only) per ID_BATCH ids, ``sys_idIN…`` ANDed into the scope as the listings
        do. Incidents that are gone simply do not match."""
        wanted = set(external_ids)
        found: set[str] = set()
        for chunk in _id_lists([i for i in external_ids if i]):
            query = self._scoped(f"sys_idIN{chunk}", order="ORDERBYsys_id")
            found.update(_value(row, "sys_id") for row in self._pages(INCIDENT, query, "sys_id"))
        return found & wanted

    def resolve_user(self, email: str) -> str | None:
        """The ``sys_user`` sys_id for an email (found ones are cached), or None."""
        email = email.strip().lower()
        if not email:
            return None
        if email in self._user_ids:
            return self._user_ids[email]
        params = self._params(
            sysparm_query=f"email={_literal(email)}^ORDERBYsys_created_on",
            sysparm_fields="sys_id,email,user_name",
            sysparm_limit="10",
        )
        rows, _ = self._call("GET", self._table("sys_user"), params=params)
        for row in rows or []:
            if _value(row, "email").strip().lower() == email:
                self._remember(email, _value(row, "sys_id"))
                return self._user_ids[email]
        return None

    def normalise(self, field: str, value: str) -> str:
        """What reading ``value`` back from ServiceNow gives: titles trimmed and cut to 160
        characters, descriptions to 4,000, severity through the priority lookup."""
        if field in TEXT_LIMITS:
            return _read_text(_text_out(field, value))
        if field in self.journals:
            return _read_text(value)
        if field == "severity":
            impact, _, urgency = self._severity_out.get(value, "").partition("/")
            priority = PRIORITY_MATRIX.get((impact, urgency))
            return PRIORITY_IN.get(priority or "", value)
        if field == "status":
            return self._state_in.get(self._state_out.get(value, ""), value)
        if field == "assigned_to":
            return value.strip().lower()
        return value

    def verify_webhook(self, request: WebhookRequest, secrets: list[str], now: datetime) -> None:
        standard_webhooks_verify(secrets, request.headers, request.body, now)

    def malformed(self, payload: Any) -> str | None:
        """What is wrong with an authentic delivery's JSON, without any network call."""
        if not isinstance(payload, dict):
            return "the body is not a JSON object"
        if payload.get("table", INCIDENT) != INCIDENT or payload.get("type") not in WEBHOOK_EVENTS:
            return None
        sys_id = payload.get("sys_id")
        if not isinstance(sys_id, str) or not _SYS_ID.fullmatch(sys_id):
            return "sys_id is missing or not a sys_id"
        if not isinstance(payload.get("changes", {}), dict) or not isinstance(
            payload.get("journal", []), list
        ):
            return "changes must be an object and journal a list"
        return None

    def parse_webhook(self, request: WebhookRequest) -> WebhookEvent | None:
        """The event of one Business Rule delivery (the payload in this module's docstring),
        or None for another table or event type. Raises MalformedEventError."""
        try:
            payload = json_body(request.body)
        except (ValueError, UnicodeDecodeError):
            raise MalformedEventError("the body is not UTF-8 JSON") from None
        problem = self.malformed(payload)
        if problem:
            raise MalformedEventError(problem)
        assert isinstance(payload, dict)  # malformed() said so
        if payload.get("table", INCIDENT) != INCIDENT or payload.get("type") not in WEBHOOK_EVENTS:
            return None
        sys_id = payload["sys_id"]
        changes = payload.get("changes", {})
        journal = payload.get("journal", [])
        delivery_id = request.headers.get("webhook-id", "")
        if not delivery_id:
            raise MalformedEventError("the webhook-id header is missing")
        # conflicts are judged on it (SPEC §6): like Jira's and PagerDuty's event times, one
        # that cannot be read makes the event malformed (it fails, saying why)
        event_time = _iso(str(payload.get("sys_updated_on") or ""))
        if not event_time:
            raise MalformedEventError("sys_updated_on is missing or not a ServiceNow time")
        raw: dict[str, Any] = {str(k): "" if v is None else str(v) for k, v in changes.items()}
        assignee = payload.get("assigned_to")
        if isinstance(assignee, dict) and assignee.get("email"):
            raw[ASSIGNEE_EMAIL] = str(assignee["email"])
        notes: list[str] = []
        fields = self._fields_in(raw, notes, lookup=False)
        correlation = payload.get("correlation")
        correlation_key = None
        if isinstance(correlation, dict) and correlation.get("field") == self._correlation:
            correlation_key = str(correlation.get("value") or "") or None
        actor = str(payload.get("sys_updated_by") or "")
        return WebhookEvent(
            delivery_id=delivery_id,
            event_type=str(payload["type"]),
            external_id=sys_id,
            external_key=str(payload.get("number") or ""),
            version=_version(str(payload.get("sys_mod_count", ""))),
            event_time=event_time,
            actor=actor,
            by_self=bool(actor) and actor.lower() == self._username.lower(),
            changes=fields,
            journals=self._event_journals(journal),
            correlation_key=correlation_key,
            created=payload.get("operation") == "insert",
            warnings=tuple(notes),
        )

    def _event_journals(self, journal: list[Any]) -> tuple[JournalEntry, ...]:
        wanted = {self._column(name): name for name in self._journal_fields()}
        entries = []
        for item in journal:
            if not isinstance(item, dict):
                raise MalformedEventError("a journal entry is not an object")
            element = str(item.get("element") or "")
            if element not in wanted or not item.get("sys_id"):
                continue
            row = {k: "" if v is None else str(v) for k, v in item.items()}
            entries.append(self._journal(row, wanted[element]))
        return tuple(entries)

    def check(self) -> list[Check]:
        """Reachability and TLS, credentials, reading incidents in scope, the account's
        ``sys_user`` row and roles (writing incidents), reading journal entries, the
        assignment group, the correlation column, and whether the account is a person's."""
        reached = [Check("reachability", True, f"{self._base} answers")]
        if self._base.startswith("https://"):
            reached.append(Check("tls", True, "the certificate is trusted"))
        signed_in = Check("credentials", True, f"signed in as {self._username}")
        probe = self._params(sysparm_fields="sys_id", sysparm_limit="1")
        try:
            self._call("GET", self._table(INCIDENT), params=probe)
            read = Check("read incidents", True, "the incident table is readable")
        except TLSError as exc:
            return [Check("tls", False, f"{exc.message} ({exc.hint})")]
        except RetryableError as exc:  # no answer, 5xx, or a web page instead of the API
            return [Check("reachability", False, exc.message)]
        except RecordNotFoundError as exc:
            detail = f"{exc.message}: the URL answers but has no Table API there; check --url"
            return [*reached, Check("table api", False, detail)]
        except AuthError as exc:
            if exc.status == 401:
                detail = f"ServiceNow refused {self._username}: {exc.message}"
                return [*reached, Check("credentials", False, detail)]
            read = Check("read incidents", False, f"{exc.message}: the account needs {_ROLE_HINT}")
        except ConnectorError as exc:
            read = Check("read incidents", False, exc.message)
        checks = [*reached, signed_in, read]
        checks += self._check_account()
        checks.append(self._check_journal())
        checks += self._check_scope()
        return checks

    def _check_account(self) -> list[Check]:
        params = self._params(
            sysparm_query=f"user_name={_literal(self._username)}",
            sysparm_fields="sys_id,user_name,email,name,web_service_access_only",
            sysparm_limit="1",
        )
        try:
            rows, _ = self._call("GET", self._table("sys_user"), params=params)
        except ConnectorError as exc:
            return [Check("read users", False, f"{exc.message}: assignees cannot be mapped")]
        if not rows:
            return [
                Check(
                    "read users",
                    False,
                    f"no sys_user row for {self._username} is readable: assignees cannot be "
                    "mapped (the account needs read access to sys_user)",
                )
            ]
        user = rows[0]
        result = [Check("read users", True, "sys_user is readable (assignees map by email)")]
        result.append(self._check_roles(_value(user, "sys_id")))
        if _value(user, "web_service_access_only") == "true":
            result.append(Check("service account", True, "web service access only"))
        else:
            result.append(
                Check(
                    "service account",
                    True,
                    f"{self._username} can sign in to the web UI: it looks like a person's "
                    "account; use a dedicated account with 'Web service access only'",
                    warning=True,
                )
            )
        return result

    def _check_roles(self, user_id: str) -> Check:
        params = {
            "sysparm_query": f"user={user_id}^state=active",
            "sysparm_fields": "role",
            "sysparm_display_value": "true",
            "sysparm_exclude_reference_link": "true",
            "sysparm_limit": "100",
        }
        try:
            rows, _ = self._call("GET", self._table("sys_user_has_role"), params=params)
        except ConnectorError as exc:
            return Check(
                "write incidents",
                True,
                f"not verified: the account's roles are not readable ({exc.message})",
                warning=True,
            )
        roles = {_value(row, "role") for row in rows or []}
        if roles & WRITE_ROLES:
            return Check("write incidents", True, f"role {sorted(roles & WRITE_ROLES)[0]}")
        return Check("write incidents", False, f"{self._username} lacks {_ROLE_HINT}")

    def _check_journal(self) -> Check:
        params = self._params(
            sysparm_query="name=incident", sysparm_fields="sys_id", sysparm_limit="1"
        )
        try:
            self._call("GET", self._table(JOURNAL_TABLE), params=params)
        except ConnectorError as exc:
            return Check(
                "read journal",
                False,
                f"{exc.message}: work notes and comments cannot be matched "
                f"(grant read on {JOURNAL_TABLE})",
            )
        return Check("read journal", True, f"{JOURNAL_TABLE} is readable")

    def _check_scope(self) -> list[Check]:
        result: list[Check] = []
        try:
            group = self._group()
        except PermanentError as exc:
            return [Check("scope", False, f"{exc.message} ({exc.hint})")]
        except ConnectorError as exc:
            return [Check("scope", False, exc.message)]
        params = self._params(
            sysparm_query=self._scoped(order="ORDERBYDESCsys_updated_on"),
            sysparm_fields=f"sys_id,{self._correlation}",
            sysparm_limit="1",
        )
        try:
            rows, response = self._call("GET", self._table(INCIDENT), params=params)
        except ConnectorError as exc:
            return [Check("scope", False, exc.message)]
        total = response.headers.get("x-total-count", "?")
        where = []
        if group:
            where.append(f"assignment group {self._group_setting}")
        if self._scope_query:
            where.append(f"query {self._scope_query}")
        detail = f"{total} incidents in scope ({' and '.join(where) or 'the whole table'})"
        result.append(Check("scope", True, detail))
        if rows and self._correlation not in rows[0]:
            result.append(
                Check(
                    "correlation field",
                    False,
                    f"the incident table has no column {self._correlation!r}: set "
                    "--correlation-field to an existing column",
                )
            )
        else:
            result.append(Check("correlation field", True, f"keys go to {self._correlation}"))
        return result

    def webhook_setup(self, webhook_url: str, secret: str | None) -> str:
        """The system property and the Business Rule (with its script) that send each change
        of an in-scope incident to ``webhook_url``."""
        prop = f"im.{self._config.name}.webhook_secret"
        watched = self.watched_columns()
        scope = self.webhook_scope()
        script = BUSINESS_RULE_SCRIPT.format(
            url=json.dumps(webhook_url),
            property=json.dumps(prop),
            correlation=json.dumps(self._correlation),
            fields=json.dumps(watched),
            journals=json.dumps([self._column(n) for n in self._journal_fields()]),
            scope=json.dumps(scope),
            timeout=WEBHOOK_TIMEOUT_SECONDS * 1000,
        )
        value = secret if secret is not None else "<webhook-secret>"
        return WEBHOOK_SETUP.format(
            url=webhook_url,
            property=prop,
            secret=value,
            name=self._config.name,
            script="\n".join(f"    {line}" if line else "" for line in script.splitlines()),
        )

    def watched_columns(self) -> list[str]:
        """The incident columns whose changes the Business Rule sends."""
        columns = []
        for name in self._config.fields:
            if name in self.journals:
                continue
            if name == "severity":
                columns += [*self._severity_columns(), PRIORITY_FIELD]
            else:
                columns.append(self._column(name))
        columns += ["assignment_group", "close_code", "close_notes", self._correlation]
        return list(dict.fromkeys(columns))

    def webhook_scope(self) -> str:
        """The encoded query an incident must match for the Business Rule to send it: the
        assignment group ANDed into every ``^NQ`` branch of the scope query, as listings do."""
        group = []
        if _SYS_ID.fullmatch(self._group_setting):
            group.append(f"assignment_group={self._group_setting}")
        elif self._group_setting:
            group.append(f"assignment_group.name={_literal(self._group_setting)}")
        return _and_each(self._scope_query, group)


def _next_offset(link: str) -> int | None:
    """The ``sysparm_offset`` of the ``rel="next"`` entry of a Link header, or None. Only the
    offset is taken: the next request goes to our own base URL, whatever host the link
    names."""
    for part in link.split(","):
        target, _, rel = part.partition(";")
        if 'rel="next"' not in rel.replace(" ", ""):
            continue
        query = parse_qs(urlsplit(target.strip().strip("<>")).query)
        try:
            return int(query["sysparm_offset"][0])
        except (KeyError, IndexError, ValueError):
            return None
    return None


WEBHOOK_SETUP = """\
ServiceNow sends no webhooks of its own. Add one system property and one Business Rule, and
every save of an incident in scope is POSTed, signed with Standard Webhooks, to
    {url}

1. The secret, stored encrypted.
   System Properties > All Properties (sys_properties.list) > New:
     Name:  {property}
     Type:  password2
     Value: {secret}

2. The rule.
   System Definition > Business Rules > New:
     Name:     im webhook ({name})
     Table:    Incident [incident]
     Advanced: checked
     When:     after      Order: 10000
     Insert:   checked    Update: checked
   Advanced tab > Script (replace the template):

{script}

3. Save, edit an incident in scope, and look for the delivery:
     im integration events {name}

The rule runs after each save and hands the POST to the ECC queue, so a save never waits for
im. ServiceNow does not retry a refused or lost delivery: keep a reconcile schedule to heal
what was missed. Each delivery names who saved (sys_updated_by); that is how im recognises its
own writes coming back.
"""

BUSINESS_RULE_SCRIPT = """\
(function executeRule(current, previous) {{
    var URL = {url};
    var SECRET_PROPERTY = {property};
    var CORRELATION = {correlation};
    var FIELDS = {fields};
    var JOURNALS = {journals};
    var SCOPE = {scope};
    if (SCOPE && !GlideFilter.checkRecord(current, SCOPE)) return;
    var insert = current.operation() == 'insert';
    var changes = {{}};
    var changed = false;
    for (var i = 0; i < FIELDS.length; i++) {{
        if (!current.isValidField(FIELDS[i])) continue;
        if (insert || current[FIELDS[i]].changes()) {{
            changes[FIELDS[i]] = current.getValue(FIELDS[i]) || '';
            changed = true;
        }}
    }}
    var journal = [];
    for (var j = 0; j < JOURNALS.length; j++) {{
        if (!current[JOURNALS[j]].changes()) continue;
        var entry = new GlideRecord('sys_journal_field');
        entry.addQuery('element_id', current.getUniqueValue());
        entry.addQuery('element', JOURNALS[j]);
        entry.orderByDesc('sys_created_on');
        entry.setLimit(1);
        entry.query();
        if (entry.next()) {{
            journal.push({{
                sys_id: entry.getUniqueValue(),
                element: entry.getValue('element'),
                value: entry.getValue('value') || '',
                sys_created_on: entry.getValue('sys_created_on'),
                sys_created_by: entry.getValue('sys_created_by')
            }});
        }}
    }}
    if (!changed && journal.length == 0) return;
    var body = JSON.stringify({{
        type: insert ? 'incident.created' : 'incident.updated',
        operation: insert ? 'insert' : 'update',
        table: 'incident',
        sys_id: current.getUniqueValue(),
        number: current.getValue('number'),
        sys_mod_count: current.getValue('sys_mod_count'),
        sys_updated_on: current.getValue('sys_updated_on'),
        sys_updated_by: current.getValue('sys_updated_by'),
        correlation: {{field: CORRELATION, value: current.getValue(CORRELATION) || ''}},
        assigned_to: {{
            sys_id: current.getValue('assigned_to') || '',
            email: current.assigned_to.email.toString()
        }},
        changes: changes,
        journal: journal
    }});
    // Standard Webhooks: v1,<base64 HMAC-SHA256 of id.timestamp.body>; the secret is
    // whsec_<base64 key> and generateMac takes the base64 key
    var id = 'msg_' + gs.generateGUID();
    var timestamp = String(Math.floor(new GlideDateTime().getNumericValue() / 1000));
    var key = String(gs.getProperty(SECRET_PROPERTY)).replace(/^whsec_/, '');
    var mac = new GlideCertificateEncryption().generateMac(
        key, 'HmacSHA256', id + '.' + timestamp + '.' + body);
    var request = new sn_ws.RESTMessageV2();
    request.setEndpoint(URL);
    request.setHttpMethod('post');
    request.setHttpTimeout({timeout});
    request.setRequestHeader('Content-Type', 'application/json');
    request.setRequestHeader('webhook-id', id);
    request.setRequestHeader('webhook-timestamp', timestamp);
    request.setRequestHeader('webhook-signature', 'v1,' + mac);
    request.setRequestBody(body);
    request.executeAsync();
}})(current, previous);
"""
