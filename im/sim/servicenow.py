"""A ServiceNow instance for tests, the demo and people: the Table API (``/api/now/table`` and
its ``v1``/``v2`` forms) on ``incident``, ``sys_user``, ``sys_user_group``, ``sys_user_role``,
``sys_user_has_role`` and ``sys_journal_field``.

What it does like the vendor: Basic auth (401 with ``WWW-Authenticate: Basic
realm="Service-now"``), ACL failures as 403, the ``{"error": {"message", "detail"}, "status":
"failure"}`` envelope, encoded queries (``= != > >= < <= IN NOT IN LIKE NOTLIKE STARTSWITH
ENDSWITH ISEMPTY ISNOTEMPTY ^ ^OR ^NQ ORDERBY ORDERBYDESC``, several ORDERBY in turn, one-level
dot-walks; a condition on an unknown column is ignored, as on a default instance; rows that tie on
every ORDERBY come in no promised order: here the last changed last), offset/limit paging with
``Link`` and ``X-Total-Count`` (``sysparm_limit`` defaults to 10,000), ``sysparm_fields``
(dot-walks too), ``sysparm_display_value`` false/true/all, ``sysparm_exclude_reference_link``,
``sysparm_suppress_pagination_header``, ``sysparm_no_count``; POST 201 with ``Location``,
PATCH/PUT returning the whole record, journal columns that append to ``sys_journal_field`` and
read back as "", priority derived from impact and urgency, resolution fields required when
resolving or closing (a data policy), ``short_description`` cut to 160 characters, per-hour rate
limits with ``X-RateLimit-*`` headers.

Webhooks: the Business Rule that ``im integration webhook-setup`` prints (see
``im.connectors.servicenow``) runs on every save that changes a watched column or adds a journal
entry, and this simulator sends exactly its payload, signed with Standard Webhooks. Like that
rule (and ServiceNow's outbound REST), it does not retry a failed delivery.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from standardwebhooks.webhooks import EmptyWebhookSecretError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from im.connectors.servicenow import (
    DEFAULT_CORRELATION_FIELD,
    DESCRIPTION_MAX,
    PRIORITY_MATRIX,
    SHORT_DESCRIPTION_MAX,
)
from im.security.signatures import standard_webhooks_sign
from im.sim.core import RetryPolicy, Simulator, basic_credentials

SN_TIME = "%Y-%m-%d %H:%M:%S"
API_VERSIONS = ("v1", "v2")
DEFAULT_LIMIT = 10_000
FIRST_NUMBER = 10_001
DEFAULT_ACCOUNTS: dict[str, str] = {"im-integration": "im-integration", "agent": "agent"}
DEFAULT_USERS: tuple[dict[str, Any], ...] = (
    {
        "user_name": "im-integration",
        "name": "im integration",
        "email": "im-integration@example.com",
        "web_service_access_only": "true",
        "roles": ("itil",),
    },
    {
        "user_name": "agent",
        "name": "Service Desk Agent",
        "email": "agent@example.com",
        "web_service_access_only": "false",
        "roles": ("itil",),
    },
    {
        "user_name": "alice",
        "name": "Alice Example",
        "email": "alice@example.com",
        "web_service_access_only": "false",
        "roles": ("itil",),
    },
    {
        "user_name": "bob",
        "name": "Bob Example",
        "email": "bob@example.com",
        "web_service_access_only": "false",
        "roles": ("itil",),
    },
)
DEFAULT_GROUPS: tuple[str, ...] = ("Service Desk", "Network")
DEFAULT_ROLES: tuple[str, ...] = ("itil", "admin")
# roles that may read the tables, and those that may also write incidents
READ_ROLES = frozenset({"itil", "admin", "snc_read_only"})
WRITE_ROLES = frozenset({"itil", "admin"})
# The columns the Business Rule watches, before the correlation column (its order).
WATCHED_COLUMNS: tuple[str, ...] = (
    "short_description",
    "description",
    "impact",
    "urgency",
    "priority",
    "state",
    "assigned_to",
    "assignment_group",
    "close_code",
    "close_notes",
)
JOURNALS: tuple[str, ...] = ("work_notes", "comments")
JOURNAL_LABELS = {"work_notes": "Work notes", "comments": "Additional comments"}
STATE_LABELS = {
    "1": "New",
    "2": "In Progress",
    "3": "On Hold",
    "6": "Resolved",
    "7": "Closed",
    "8": "Canceled",
}
LEVEL_LABELS = {"1": "1 - High", "2": "2 - Medium", "3": "3 - Low"}
PRIORITY_LABELS = {
    "1": "1 - Critical",
    "2": "2 - High",
    "3": "3 - Moderate",
    "4": "4 - Low",
    "5": "5 - Planning",
}
CHOICES: dict[str, dict[str, dict[str, str]]] = {
    "incident": {
        "state": STATE_LABELS,
        "incident_state": STATE_LABELS,
        "impact": LEVEL_LABELS,
        "urgency": LEVEL_LABELS,
        "severity": LEVEL_LABELS,
        "priority": PRIORITY_LABELS,
    }
}
REFERENCES: dict[str, dict[str, str]] = {
    "incident": {
        "assigned_to": "sys_user",
        "assignment_group": "sys_user_group",
        "caller_id": "sys_user",
        "opened_by": "sys_user",
        "resolved_by": "sys_user",
        "closed_by": "sys_user",
    },
    "sys_user_has_role": {"user": "sys_user", "role": "sys_user_role"},
}
DISPLAY_COLUMN = {
    "incident": "number",
    "sys_user": "name",
    "sys_user_group": "name",
    "sys_user_role": "name",
    "sys_journal_field": "value",
    "sys_user_has_role": "role",
}
INCIDENT_DEFAULTS: dict[str, str] = {
    "active": "true",
    "approval": "not requested",
    "assigned_to": "",
    "assignment_group": "",
    "caller_id": "",
    "category": "inquiry",
    "close_code": "",
    "close_notes": "",
    "closed_at": "",
    "closed_by": "",
    "comments": "",
    "comments_and_work_notes": "",
    "contact_type": "",
    "correlation_display": "",
    "correlation_id": "",
    "description": "",
    "escalation": "0",
    "hold_reason": "",
    "impact": "3",
    "incident_state": "1",
    "knowledge": "false",
    "made_sla": "true",
    "notify": "1",
    "number": "",
    "opened_at": "",
    "opened_by": "",
    "priority": "5",
    "reassignment_count": "0",
    "reopen_count": "0",
    "resolved_at": "",
    "resolved_by": "",
    "severity": "3",
    "short_description": "",
    "state": "1",
    "subcategory": "",
    "sys_class_name": "incident",
    "sys_created_by": "",
    "sys_created_on": "",
    "sys_domain": "global",
    "sys_id": "",
    "sys_mod_count": "0",
    "sys_tags": "",
    "sys_updated_by": "",
    "sys_updated_on": "",
    "upon_approval": "proceed",
    "upon_reject": "cancel",
    "urgency": "3",
    "watch_list": "",
    "work_notes": "",
    "work_notes_list": "",
}
# columns a client cannot set (sys_id only on insert)
READ_ONLY = frozenset(
    {
        "number",
        "priority",
        "sys_created_by",
        "sys_created_on",
        "sys_mod_count",
        "sys_updated_by",
        "sys_updated_on",
        "sys_class_name",
        "comments_and_work_notes",
    }
)
MAX_LENGTH = {"short_description": SHORT_DESCRIPTION_MAX, "description": DESCRIPTION_MAX}
CLOSING_STATES = frozenset({"6", "7"})
INACTIVE_STATES = frozenset({"7", "8"})
_SYS_ID = re.compile(r"[0-9a-f]{32}")
_OPERATORS = (
    "ISNOTEMPTY",
    "ISEMPTY",
    "ANYTHING",
    "NOT IN",
    "NOTLIKE",
    "DOES NOT CONTAIN",
    "STARTSWITH",
    "ENDSWITH",
    "CONTAINS",
    "LIKE",
    "IN",
    "!=",
    ">=",
    "<=",
    "=",
    ">",
    "<",
)
_CONDITION = re.compile(
    r"([a-z_][a-z0-9_.]*)(" + "|".join(re.escape(op) for op in _OPERATORS) + r")(.*)", re.S
)
_DATE_GENERATE = re.compile(r"javascript:gs\.dateGenerate\('([^']+)',\s*'([^']+)'\)")
_ESCAPED_CARET = "\x00"


# -- encoded queries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    column: str
    operator: str
    value: str


@dataclass
class EncodedQuery:
    """A parsed ``sysparm_query``: OR of segments (``^NQ``), each an AND of OR-groups."""

    segments: list[list[list[Condition]]] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)

    @classmethod
    def parse(cls, text: str) -> EncodedQuery:
        query = cls()
        segment: list[list[Condition]] = []
        tokens = text.replace("^^", _ESCAPED_CARET).split("^")
        for raw in tokens:
            token = raw.replace(_ESCAPED_CARET, "^").strip()
            if token.startswith("NQ"):
                if segment:
                    query.segments.append(segment)
                segment, token = [], token[2:]
            if not token or token == "EQ":
                continue
            if token.startswith("ORDERBYDESC"):
                query.order.append((token[len("ORDERBYDESC") :], True))
            elif token.startswith("ORDERBY"):
                query.order.append((token[len("ORDERBY") :], False))
            elif token.startswith("OR") and segment:
                condition = _condition(token[2:])
                if condition:
                    segment[-1].append(condition)
            else:
                condition = _condition(token)
                if condition:
                    segment.append([condition])
        if segment or not query.segments:
            query.segments.append(segment)
        return query

    def matches(self, test: Callable[[Condition], bool]) -> bool:
        return any(all(any(test(c) for c in group) for group in seg) for seg in self.segments)


def _condition(token: str) -> Condition | None:
    match = _CONDITION.fullmatch(token)
    if match is None:
        return None
    value = match.group(3)
    generated = _DATE_GENERATE.fullmatch(value)
    if generated:
        value = f"{generated.group(1)} {generated.group(2)}"
    return Condition(match.group(1), match.group(2), value)


def _number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _compare(actual: str, operator: str, wanted: str) -> bool:
    a, w = actual.lower(), wanted.lower()
    if operator in ("=", "!="):
        return (a == w) == (operator == "=")
    if operator in (">", ">=", "<", "<="):
        left, right = _sort_key(actual), _sort_key(wanted)
        if operator == ">":
            return left > right
        if operator == ">=":
            return left >= right
        return left < right if operator == "<" else left <= right

    if operator in ("IN", "NOT IN"):
        inside = a in [v.strip() for v in w.split(",")]
        return inside == (operator == "IN")
    if operator in ("LIKE", "CONTAINS"):
        return w in a
    if operator in ("NOTLIKE", "DOES NOT CONTAIN"):
        return w not in a
    if operator == "STARTSWITH":
        return a.startswith(w)
    if operator == "ENDSWITH":
        return a.endswith(w)
    if operator == "ISEMPTY":
        return actual == ""
    if operator == "ISNOTEMPTY":
        return actual != ""
    return True  # ANYTHING


def _sort_key(value: str) -> tuple[int, int, str]:
    number = _number(value)
    return (0, number, "") if number is not None else (1, 0, value.lower())


# -- the simulator ------------------------------------------------------------------------------


class SnError(Exception):
    """An answer in the Table API's error envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail
        self.headers = dict(headers or {})


def _json(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse(
        content,
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json;charset=UTF-8",
    )


class ServiceNowSimulator(Simulator):
    """A ServiceNow instance in memory. Options (all overridable): ``accounts`` (user name ->
    password), ``users`` (``sys_user`` rows, each with ``roles``), ``groups``
    (``sys_user_group`` names), ``denied`` (user name -> tables that user's ACLs refuse),
    ``correlation_field`` (the Business Rule's correlation column), ``webhook_query`` (the
    rule's scope condition), ``extra_columns`` (custom ``u_`` columns on incident),
    ``close_fields_mandatory``, ``rate_limit_per_hour``."""

    kind = "servicenow"
    user_agent = "ServiceNow/1.0"
    # The Business Rule hands each POST to the ECC queue once: no retries.
    retry = RetryPolicy(frozenset(), ())

    def __init__(
        self,
        *,
        accounts: Mapping[str, str] | None = None,
        users: Sequence[Mapping[str, Any]] | None = None,
        groups: Iterable[str] = DEFAULT_GROUPS,
        denied: Mapping[str, Iterable[str]] | None = None,
        correlation_field: str = DEFAULT_CORRELATION_FIELD,
        webhook_query: str = "",
        extra_columns: Iterable[str] = (),
        close_fields_mandatory: bool = True,
        rate_limit_per_hour: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if self.webhook_secret:
            try:
                standard_webhooks_sign(self.webhook_secret, "msg_check", self.clock.now(), b"")
            except (ValueError, RuntimeError, EmptyWebhookSecretError) as exc:
                raise ValueError("the webhook secret must be whsec_<base64>") from exc
        self.accounts = dict(DEFAULT_ACCOUNTS if accounts is None else accounts)
        self.denied = {user: frozenset(tables) for user, tables in (denied or {}).items()}
        self.correlation_field = correlation_field
        self.webhook_query = webhook_query
        self.close_fields_mandatory = close_fields_mandatory
        self.rate_limit_per_hour = rate_limit_per_hour
        self.rate_limit_rule = self.random_hex(32)
        self._usage: dict[tuple[str, int], int] = {}
        self._next_number = FIRST_NUMBER
        self.tables: dict[str, dict[str, dict[str, str]]] = {
            name: {}
            for name in (
                "incident",
                "sys_user",
                "sys_user_group",
                "sys_user_role",
                "sys_user_has_role",
                "sys_journal_field",
            )
        }
        self.incident_columns = dict(INCIDENT_DEFAULTS)
        for column in (correlation_field, *extra_columns):
            self.incident_columns.setdefault(column, "")
        roles = {name: self._insert_row("sys_user_role", {"name": name}) for name in DEFAULT_ROLES}
        for user in DEFAULT_USERS if users is None else users:
            row = {k: str(v) for k, v in user.items() if k != "roles"}
            row.setdefault("active", "true")
            row.setdefault("locked_out", "false")
            row.setdefault("web_service_access_only", "false")
            user_id = self._insert_row("sys_user", row)
            for role in user.get("roles", ()):
                if role not in roles:
                    roles[role] = self._insert_row("sys_user_role", {"name": role})
                self._insert_row(
                    "sys_user_has_role",
                    {"user": user_id, "role": roles[role], "state": "active", "inherited": "false"},
                )
        for name in groups:
            self._insert_row("sys_user_group", {"name": name, "active": "true"})

    # -- Simulator hooks --------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        for prefix in ("/api/now/table", "/api/now/{api_version}/table"):
            routes.append(Route(prefix + "/{table}", self._collection, methods=["GET", "POST"]))
            routes.append(
                Route(
                    prefix + "/{table}/{sys_id}",
                    self._member,
                    methods=["GET", "PUT", "PATCH", "DELETE"],
                )
            )
        return routes

    def sign(self, delivery_id: str, body: bytes, attempt: int) -> dict[str, str]:
        """Standard Webhooks headers, as the Business Rule computes them."""
        now = self.clock.now()
        headers = {"webhook-id": delivery_id, "webhook-timestamp": str(int(now.timestamp()))}
        if self.webhook_secret:
            headers["webhook-signature"] = standard_webhooks_sign(
                self.webhook_secret, delivery_id, now, body
            )
        return headers

    def error(self, status: int, message: str) -> Response:
        return self._failure(SnError(status, message))

    def rate_limited(self, retry_after: int) -> Response:
        reset = int(self.clock.now().timestamp()) + retry_after
        headers = {
            "Retry-After": str(retry_after),
            "X-RateLimit-Limit": str(self.rate_limit_per_hour or 1000),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Rule": self.rate_limit_rule,
        }
        return self._failure(
            SnError(
                429,
                "Rate limit exceeded",
                f"Too many requests: try again in {retry_after} seconds",
                headers,
            )
        )

    def describe(self) -> dict[str, Any]:
        users = {u["user_name"]: u for u in self.tables["sys_user"].values()}
        return {
            "accounts (Basic auth)": [
                {
                    "user": name,
                    "password": password,
                    "web service access only": users.get(name, {}).get(
                        "web_service_access_only", "false"
                    ),
                }
                for name, password in self.accounts.items()
            ],
            "users": sorted(u["email"] for u in users.values() if u.get("email")),
            "assignment groups": [g["name"] for g in self.tables["sys_user_group"].values()],
            "incidents": self.record_count(),
            "business rule": {
                "correlation field": self.correlation_field,
                "scope": self.webhook_query or "every incident",
                "signing": "Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)",
                "retries": "none",
            },
        }

    def record_count(self) -> int:
        return len(self.tables["incident"])

    # -- state ------------------------------------------------------------------------------

    def _now(self) -> str:
        return self.clock.now().strftime(SN_TIME)

    def _insert_row(self, table: str, values: Mapping[str, str]) -> str:
        sys_id = values.get("sys_id") or self.random_hex(32)
        stamp = self._now()
        row = {
            "sys_id": sys_id,
            "sys_created_on": stamp,
            "sys_created_by": "system",
            "sys_updated_on": stamp,
            "sys_updated_by": "system",
            "sys_mod_count": "0",
            **values,
        }
        self.tables[table][sys_id] = row
        return sys_id

    def incident(self, sys_id: str) -> dict[str, str]:
        """One incident row (tests read the stored truth)."""
        return self.tables["incident"][sys_id]

    def columns(self, table: str) -> set[str]:
        if table == "incident":
            return set(self.incident_columns)
        names: set[str] = set()
        for row in self.tables[table].values():
            names.update(row)
        return names

    def _lookup(self, table: str, row: Mapping[str, str], column: str) -> str | None:
        """A column's value, following one dot-walk through a reference; None when the column
        does not exist."""
        name, _, rest = column.partition(".")
        if not rest:
            if name in row or name in self.columns(table):
                return row.get(name, "")
            return None
        target = REFERENCES.get(table, {}).get(name)
        if target is None:
            return None
        referenced = self.tables[target].get(row.get(name, ""))
        if referenced is None:
            return "" if rest in self.columns(target) else None
        return self._lookup(target, referenced, rest)

    def _matches(self, table: str, row: Mapping[str, str], query: EncodedQuery) -> bool:
        def check(condition: Condition) -> bool:
            actual = self._lookup(table, row, condition.column)
            if actual is None:  # an unknown column: a default instance ignores the condition
                return True
            return _compare(actual, condition.operator, condition.value)

        return query.matches(check)

    def _select(self, table: str, text: str) -> list[dict[str, str]]:
        query = EncodedQuery.parse(text)
        selected = [r for r in self.tables[table].values() if self._matches(table, r, query)]
        # Rows that tie on every ORDERBY column come in no promised order, and the order can
        # change between two pages: here, as if the database read them through the
        # sys_updated_on index, the row changed last comes last. Paging is stable only
        # under an ordering that breaks every tie (sys_id).
        selected.sort(key=lambda r: r.get("sys_updated_on", ""))
        for column, descending in reversed(query.order):  # stable: the first ORDERBY leads
            selected.sort(
                key=lambda r: _sort_key(self._lookup(table, r, column) or ""),
                reverse=descending,
            )
        return selected

    # -- rendering --------------------------------------------------------------------------

    def _display(self, table: str, column: str, value: str, sys_id: str) -> str:
        if column in JOURNALS and table == "incident":
            return self._journal_text(sys_id, column)
        target = REFERENCES.get(table, {}).get(column)
        if target:
            referenced = self.tables[target].get(value)
            return referenced.get(DISPLAY_COLUMN[target], "") if referenced else ""
        return CHOICES.get(table, {}).get(column, {}).get(value, value)

    def _journal_text(self, sys_id: str, column: str) -> str:
        entries = [
            e
            for e in self.tables["sys_journal_field"].values()
            if e["element_id"] == sys_id and e["element"] == column
        ]
        users = {u["user_name"]: u.get("name", "") for u in self.tables["sys_user"].values()}
        return "\n\n".join(
            f"{e['sys_created_on']} - {users.get(e['sys_created_by'], e['sys_created_by'])} "
            f"({JOURNAL_LABELS[column]})\n{e['value']}"
            for e in reversed(entries)
        )

    def _render(
        self, request: Request, table: str, row: Mapping[str, str], fields: list[str] | None
    ) -> dict[str, Any]:
        params = request.query_params
        mode = params.get("sysparm_display_value", "false").lower()
        links = params.get("sysparm_exclude_reference_link", "false").lower() != "true"
        base = str(request.base_url).rstrip("/")
        result: dict[str, Any] = {}
        for column in fields or list(row):
            value = self._lookup(table, row, column)
            if value is None:
                continue  # ServiceNow leaves unknown columns out
            if column in JOURNALS and table == "incident":
                value = ""
            target = REFERENCES.get(table, {}).get(column)
            link = f"{base}/api/now/table/{target}/{value}" if target and value and links else ""
            display = self._display(table, column, value, row.get("sys_id", ""))
            if mode == "all":
                cell: dict[str, str] = {"display_value": display, "value": value}
                if link:
                    cell["link"] = link
                result[column] = cell
            elif mode == "true":
                result[column] = {"display_value": display, "link": link} if link else display
            else:
                result[column] = {"link": link, "value": value} if link else value
        return result

    def _fields(self, request: Request) -> list[str] | None:
        text = request.query_params.get("sysparm_fields", "")
        names = [name.strip() for name in text.split(",") if name.strip()]
        return names or None

    # -- requests ---------------------------------------------------------------------------

    def _failure(self, error: SnError) -> Response:
        headers = dict(error.headers)
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="Service-now"'
        body = {"error": {"message": error.message, "detail": error.detail}, "status": "failure"}
        return _json(body, error.status, headers)

    def _authenticate(self, request: Request) -> dict[str, str]:
        credentials = basic_credentials(request)
        if credentials is None or self.accounts.get(credentials[0]) != credentials[1]:
            raise SnError(401, "User Not Authenticated", "Required to provide Auth information")
        for user in self.tables["sys_user"].values():
            if user.get("user_name") == credentials[0] and user.get("active") != "false":
                return user
        raise SnError(401, "User Not Authenticated", "Required to provide Auth information")

    def _roles(self, user: Mapping[str, str]) -> set[str]:
        roles = self.tables["sys_user_role"]
        return {
            roles[link["role"]]["name"]
            for link in self.tables["sys_user_has_role"].values()
            if link["user"] == user["sys_id"] and link.get("state") == "active"
        }

    def _authorise(self, user: Mapping[str, str], table: str, operation: str) -> None:
        if table not in self.tables:
            raise SnError(400, f"Invalid table {table}")
        roles = self._roles(user)
        allowed = bool(roles & READ_ROLES) and table not in self.denied.get(user["user_name"], ())
        if operation != "read":
            allowed = allowed and bool(roles & WRITE_ROLES)
            allowed = allowed and (table == "incident" or "admin" in roles)
            if operation == "delete":
                allowed = allowed and "admin" in roles
        if not allowed:
            raise SnError(
                403,
                "Operation Failed",
                f"ACL Exception {operation.capitalize()} Failed due to security constraints",
            )

    def _rate_headers(self, user: Mapping[str, str]) -> dict[str, str]:
        """Count the request against the per-hour rule; raise 429 over it."""
        if self.rate_limit_per_hour is None:
            return {}
        now = int(self.clock.now().timestamp())
        hour = now // 3600
        key = (user["user_name"], hour)
        self._usage[key] = self._usage.get(key, 0) + 1
        reset = (hour + 1) * 3600
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit_per_hour),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Rule": self.rate_limit_rule,
        }
        if self._usage[key] > self.rate_limit_per_hour:
            raise SnError(
                429,
                "Rate limit exceeded",
                f"{user['user_name']} exceeded {self.rate_limit_per_hour} requests per hour",
                {**headers, "Retry-After": str(reset - now)},
            )
        return headers

    async def _collection(self, request: Request) -> Response:
        return await self._handle(request, None)

    async def _member(self, request: Request) -> Response:
        return await self._handle(request, request.path_params["sys_id"])

    async def _handle(self, request: Request, sys_id: str | None) -> Response:
        table = request.path_params["table"]
        try:
            if request.path_params.get("api_version", "v1") not in API_VERSIONS:
                raise SnError(400, "Invalid API version", request.path_params["api_version"])
            user = self._authenticate(request)
            headers = self._rate_headers(user)
            operation = {"GET": "read", "POST": "insert", "DELETE": "delete"}.get(
                request.method, "update"
            )
            self._authorise(user, table, operation)
            if request.method == "GET":
                response = self._get(request, table, sys_id)
            elif request.method == "DELETE":
                response = self._delete(table, sys_id or "")
            else:
                body = await self._body(request)
                if sys_id is None:
                    response = self._create(request, user, table, body)
                else:
                    response = self._update(request, user, table, sys_id, body)
        except SnError as error:
            return self._failure(error)
        response.headers.update(headers)
        return response

    async def _body(self, request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type:
            raise SnError(415, "Unsupported Media Type", f"Content-Type {content_type!r}")
        try:
            body = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise SnError(400, "Exception while reading request", "Invalid JSON") from None
        if not isinstance(body, dict):
            raise SnError(400, "Exception while reading request", "The payload is not an object")
        return body

    def _not_found(self) -> SnError:
        return SnError(
            404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
        )

    def _get(self, request: Request, table: str, sys_id: str | None) -> Response:
        fields = self._fields(request)
        if sys_id is not None:
            row = self.tables[table].get(sys_id)
            if row is None:
                raise self._not_found()
            return _json({"result": self._render(request, table, row, fields)})
        params = request.query_params
        rows = self._select(table, params.get("sysparm_query", ""))
        limit = _number(params.get("sysparm_limit", "")) or DEFAULT_LIMIT
        offset = max(0, _number(params.get("sysparm_offset", "")) or 0)
        page = rows[offset : offset + max(1, limit)]
        headers: dict[str, str] = {}
        if params.get("sysparm_no_count", "false").lower() != "true":
            headers["X-Total-Count"] = str(len(rows))
        if params.get("sysparm_suppress_pagination_header", "false").lower() != "true":
            headers["Link"] = self._link(request, len(rows), offset, max(1, limit))
        result = [self._render(request, table, row, fields) for row in page]
        return _json({"result": result}, headers=headers)

    def _link(self, request: Request, total: int, offset: int, limit: int) -> str:
        """RFC 5988 links as ServiceNow sends them: first, prev (negative on the first page,
        as observed), next (while more rows follow) and last."""
        others = [(k, v) for k, v in request.query_params.multi_items() if k != "sysparm_offset"]
        base = str(request.url.replace(query=""))

        def url(at: int) -> str:
            return f"<{base}?{urlencode([*others, ('sysparm_offset', str(at))])}>"

        last = max(0, (total - 1) // limit * limit)
        links = [f'{url(0)};rel="first"', f'{url(offset - limit)};rel="prev"']
        if offset + limit < total:
            links.append(f'{url(offset + limit)};rel="next"')
        links.append(f'{url(last)};rel="last"')
        return ",".join(links)

    def _delete(self, table: str, sys_id: str) -> Response:
        if self.tables[table].pop(sys_id, None) is None:
            raise self._not_found()
        return Response(status_code=204)

    def _create(
        self, request: Request, user: Mapping[str, str], table: str, body: Mapping[str, Any]
    ) -> Response:
        requested = str(body.get("sys_id") or "")
        if requested and (not _SYS_ID.fullmatch(requested) or requested in self.tables[table]):
            raise SnError(400, "Operation Failed", f"Invalid sys_id {requested}")
        stamp = self._now()
        row = dict(self.incident_columns)
        row.update(
            {
                "sys_id": requested or self.random_hex(32),
                "number": f"INC{self._next_number:07d}",
                "opened_at": stamp,
                "opened_by": user["sys_id"],
                "sys_created_on": stamp,
                "sys_created_by": user["user_name"],
            }
        )
        self._next_number += 1
        journal = self._apply(row, body, user, inserting=True)
        self._check_policy(row)
        row.update(
            {"sys_updated_on": stamp, "sys_updated_by": user["user_name"], "sys_mod_count": "0"}
        )
        self.tables[table][row["sys_id"]] = row
        entries = self._journal(row, journal, user)
        self._business_rule("insert", row, set(self.watched()), entries)
        response = _json({"result": self._render(request, table, row, self._fields(request))}, 201)
        response.headers["Location"] = (
            f"{str(request.base_url).rstrip('/')}/api/now/table/{table}/{row['sys_id']}"
        )
        return response

    def _update(
        self,
        request: Request,
        user: Mapping[str, str],
        table: str,
        sys_id: str,
        body: Mapping[str, Any],
    ) -> Response:
        current = self.tables[table].get(sys_id)
        if current is None:
            raise self._not_found()
        row = dict(current)
        journal = self._apply(row, body, user, inserting=False)
        changed = {c for c in row if row[c] != current.get(c)}
        if changed or journal:
            self._check_policy(row)
            row["sys_updated_on"] = self._now()
            row["sys_updated_by"] = user["user_name"]
            row["sys_mod_count"] = str(int(current["sys_mod_count"]) + 1)
            self.tables[table][sys_id] = row
            entries = self._journal(row, journal, user)
            self._business_rule("update", row, changed, entries)
        return _json({"result": self._render(request, table, row, self._fields(request))})

    def _apply(
        self,
        row: dict[str, str],
        body: Mapping[str, Any],
        user: Mapping[str, str],
        inserting: bool,
    ) -> dict[str, str]:
        """Write the body's columns into ``row`` as the instance would (unknown and read-only
        columns dropped, strings cut to their column length, the priority lookup, the state's
        side effects); return the journal text to append."""
        before = dict(row)
        journal: dict[str, str] = {}
        for column, raw in body.items():
            value = "" if raw is None else str(raw)
            if column in JOURNALS:
                if value.strip():
                    journal[column] = value
                continue
            if column in READ_ONLY or column == "sys_id" or column not in self.incident_columns:
                continue
            row[column] = value[: MAX_LENGTH.get(column, len(value))]
        row["priority"] = PRIORITY_MATRIX.get((row["impact"], row["urgency"]), row["priority"])
        state = row["state"]
        if state != before["state"] or inserting:
            row["incident_state"] = state
            stamp = self._now()
            if state in CLOSING_STATES and not row["resolved_at"]:
                row["resolved_at"], row["resolved_by"] = stamp, user["sys_id"]
            if state == "7":
                row["closed_at"], row["closed_by"] = stamp, user["sys_id"]
            if before["state"] in CLOSING_STATES and state not in CLOSING_STATES | {"8"}:
                row["resolved_at"] = row["resolved_by"] = ""
                row["reopen_count"] = str(int(row["reopen_count"] or "0") + 1)
            row["active"] = "false" if state in INACTIVE_STATES else "true"
        if row["assigned_to"] != before["assigned_to"] and not inserting:
            row["reassignment_count"] = str(int(row["reassignment_count"] or "0") + 1)
        return journal

    def _check_policy(self, row: Mapping[str, str]) -> None:
        """The resolution data policy: resolving or closing needs a code and notes."""
        if not self.close_fields_mandatory or row["state"] not in CLOSING_STATES:
            return
        missing = [
            label
            for column, label in (
                ("close_code", "Resolution code"),
                ("close_notes", "Resolution notes"),
            )
            if not row[column].strip()
        ]
        if missing:
            raise SnError(
                403,
                "Operation Failed",
                f"Data Policy Exception: The following fields are mandatory: {', '.join(missing)}",
            )

    def _journal(
        self, row: Mapping[str, str], journal: Mapping[str, str], user: Mapping[str, str]
    ) -> list[dict[str, str]]:
        entries = []
        for column, text in sorted(journal.items(), key=lambda item: JOURNALS.index(item[0])):
            entry_id = self._insert_row(
                "sys_journal_field",
                {
                    "element": column,
                    "element_id": row["sys_id"],
                    "name": "incident",
                    "value": text,
                    "sys_created_by": user["user_name"],
                    "sys_updated_by": user["user_name"],
                    "sys_tags": "",
                },
            )
            entries.append(self.tables["sys_journal_field"][entry_id])
        return entries

    # -- the Business Rule ------------------------------------------------------------------

    def watched(self) -> list[str]:
        return list(dict.fromkeys([*WATCHED_COLUMNS, self.correlation_field]))

    def _business_rule(
        self,
        operation: str,
        row: Mapping[str, str],
        changed: set[str],
        entries: list[dict[str, str]],
    ) -> None:
        """Send what the rule printed by ``webhook-setup`` sends for this save."""
        scope = EncodedQuery.parse(self.webhook_query)
        if self.webhook_query and not self._matches("incident", row, scope):
            return
        changes = {c: row.get(c, "") for c in self.watched() if c in changed}
        if not changes and not entries:
            return
        assignee = self.tables["sys_user"].get(row["assigned_to"], {})
        payload = {
            "type": "incident.created" if operation == "insert" else "incident.updated",
            "operation": operation,
            "table": "incident",
            "sys_id": row["sys_id"],
            "number": row["number"],
            "sys_mod_count": row["sys_mod_count"],
            "sys_updated_on": row["sys_updated_on"],
            "sys_updated_by": row["sys_updated_by"],
            "correlation": {
                "field": self.correlation_field,
                "value": row.get(self.correlation_field, ""),
            },
            "assigned_to": {"sys_id": row["assigned_to"], "email": assignee.get("email", "")},
            "changes": changes,
            "journal": [
                {
                    "sys_id": e["sys_id"],
                    "element": e["element"],
                    "value": e["value"],
                    "sys_created_on": e["sys_created_on"],
                    "sys_created_by": e["sys_created_by"],
                }
                for e in entries
            ],
        }
        self.webhooks.emit(row["sys_id"], payload, "msg_" + self.random_hex(32))
