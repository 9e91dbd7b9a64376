"""A Jira Cloud / Jira Service Management simulator: REST v3 (and the v2 and ``latest`` routes
the python ``jira`` client calls), the JSM comment API, JQL search with its index lag, the
workflow's transitions, Atlassian's error bodies and rate-limit headers, and webhooks
(``jira:issue_created``, ``jira:issue_updated``, ``comment_created`` in the REST v2
representation) signed as a Connect app (JWT) or as an admin webhook (X-Hub-Signature).

Defaults (SPEC §12): Basic auth ``im-integration@example.com`` / ``im-integration-token`` (an
``app`` account) and ``agent@example.com`` / ``agent-token`` (a person); users alice and bob;
project ``OPS`` (a service desk) with issue type ``Incident``; priorities Highest…Lowest (ids
1–5); statuses Open, In Progress, Resolved, Closed where Open → Resolved takes two steps and
Closed is reachable only from Resolved; a ``Severity`` select field ``customfield_10050``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from im.security.signatures import connect_jwt, hub_signature
from im.sim.core import RetryPolicy, Simulator, basic_credentials

API_VERSIONS = ("2", "3", "latest")
PASSWORD_AUTH_TEXT = (
    "Basic authentication with passwords is deprecated. For more information, see: "
    "https://developer.atlassian.com/cloud/confluence/deprecation-notice-basic-auth/"
)
NOT_AUTHENTICATED = "You are not authenticated. Authentication required to perform this operation."
ISSUE_NOT_FOUND = "Issue does not exist or you do not have permission to see it."
UNBOUNDED_JQL = (
    "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
)
SEARCH_REMOVED = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)
MAX_COMMENT = 32_767
MAX_SUMMARY = 255
SEARCH_MAX_WITH_FIELDS = 100
SEARCH_MAX_IDS = 5000
RECONCILE_MAX = 50
PERMISSIONS: dict[str, str] = {
    "BROWSE_PROJECTS": "Ability to browse projects and the issues within them.",
    "CREATE_ISSUES": "Ability to create issues.",
    "EDIT_ISSUES": "Ability to edit issues.",
    "TRANSITION_ISSUES": "Ability to transition issues.",
    "ASSIGN_ISSUES": "Ability to assign issues to other people.",
    "ASSIGNABLE_USER": "Users with this permission may be assigned to issues.",
    "ADD_COMMENTS": "Ability to comment on issues.",
    "RESOLVE_ISSUES": "Ability to resolve and reopen issues.",
    "CLOSE_ISSUES": "Ability to close issues.",
    "DELETE_ISSUES": "Ability to delete issues.",
    "SERVICEDESK_AGENT": "Ability to act as an agent of the service project.",
}
CATEGORIES: dict[str, dict[str, Any]] = {
    "new": {"id": 2, "key": "new", "colorName": "blue-gray", "name": "To Do"},
    "indeterminate": {
        "id": 4,
        "key": "indeterminate",
        "colorName": "yellow",
        "name": "In Progress",
    },
    "done": {"id": 3, "key": "done", "colorName": "green", "name": "Done"},
}
AVATARS = "https://avatar-management--avatars.us-west-2.prod.public.atl-paas.net"
ISSUE_EXPAND = "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations"
RESOLUTION_DONE = {"id": "10000", "name": "Done", "description": "Work has been completed."}


@dataclass(frozen=True)
class JiraUser:
    """A site user; ``api_token`` None means the user cannot sign in (a plain assignee)."""

    email: str
    display_name: str
    account_type: str = "atlassian"  # "atlassian" (a person) | "app" (a service account)
    api_token: str | None = None
    time_zone: str | None = None  # None: the site's
    account_id: str = ""
    email_visible: bool = True  # the profile shows the email to other users (and apps)

    def __post_init__(self) -> None:
        if not self.account_id:
            digest = hashlib.sha1(self.email.lower().encode()).hexdigest()[:24]
            object.__setattr__(self, "account_id", digest)


@dataclass(frozen=True)
class JiraStatus:
    id: str
    name: str
    category: str  # new | indeterminate | done


@dataclass(frozen=True)
class WorkflowTransition:
    id: str
    name: str
    source: str  # status name
    target: str  # status name


DEFAULT_USERS: tuple[JiraUser, ...] = (
    JiraUser("im-integration@example.com", "im integration", "app", "im-integration-token"),
    JiraUser("agent@example.com", "Agent Smith", "atlassian", "agent-token"),
    JiraUser("alice@example.com", "Alice Example"),
    JiraUser("bob@example.com", "Bob Example"),
)
DEFAULT_STATUSES: tuple[JiraStatus, ...] = (
    JiraStatus("1", "Open", "new"),
    JiraStatus("3", "In Progress", "indeterminate"),
    JiraStatus("5", "Resolved", "done"),
    JiraStatus("6", "Closed", "done"),
)
DEFAULT_WORKFLOW: tuple[WorkflowTransition, ...] = (
    WorkflowTransition("11", "Start progress", "Open", "In Progress"),
    WorkflowTransition("21", "Stop progress", "In Progress", "Open"),
    WorkflowTransition("31", "Resolve issue", "In Progress", "Resolved"),
    WorkflowTransition("41", "Close issue", "Resolved", "Closed"),
    WorkflowTransition("51", "Reopen issue", "Resolved", "Open"),
)
PRIORITIES: tuple[tuple[str, str, str], ...] = (
    ("1", "Highest", "#d04437"),
    ("2", "High", "#f15C75"),
    ("3", "Medium", "#f79232"),
    ("4", "Low", "#707070"),
    ("5", "Lowest", "#999999"),
)
DEFAULT_PRIORITY = "3"
SEVERITIES: tuple[str, ...] = ("Sev-1", "Sev-2", "Sev-3", "Sev-4", "Sev-5")


@dataclass
class SimComment:
    id: int
    author: str  # accountId
    body: dict[str, Any]  # ADF
    public: bool
    created: datetime


@dataclass
class SimIssue:
    id: int
    key: str
    issuetype: str
    summary: str
    description: dict[str, Any] | None
    priority: str
    status: str
    assignee: str | None
    reporter: str
    labels: list[str]
    severity: str | None
    resolution: dict[str, str] | None
    created: datetime
    updated: datetime
    resolutiondate: datetime | None = None
    status_changed: datetime | None = None
    comments: list[SimComment] = field(default_factory=list)


class Refusal(Exception):
    """A request Jira refuses: the status and its ErrorCollection."""

    def __init__(
        self, status: int, messages: Sequence[str] = (), errors: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.messages = list(messages)
        self.errors = dict(errors or {})


class JqlError(Exception):
    """A query Jira refuses; ``messages`` are its errorMessages (Jira names every bad value
    of a list at once)."""

    def __init__(self, *messages: str) -> None:
        super().__init__(*messages)
        self.messages = list(messages)


# -- ADF <-> text, as Jira renders the REST v2 representation ------------------------------------


def text_to_adf(text: str) -> dict[str, Any]:
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip()) if p]
    content = []
    for paragraph in paragraphs:
        nodes: list[dict[str, Any]] = []
        for number, line in enumerate(paragraph.split("\n")):
            if number:
                nodes.append({"type": "hardBreak"})
            if line:
                nodes.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


def adf_to_text(document: Mapping[str, Any] | None) -> str:
    if not document:
        return ""

    def inline(node: Mapping[str, Any]) -> str:
        if node.get("type") == "text":
            return str(node.get("text", ""))
        if node.get("type") == "hardBreak":
            return "\n"
        attrs = node.get("attrs") or {}
        if "text" in attrs:
            return str(attrs["text"])
        return "".join(inline(c) for c in node.get("content") or [])

    def blocks(node: Mapping[str, Any]) -> list[str]:
        if node.get("type") in ("paragraph", "heading", "codeBlock"):
            return ["".join(inline(c) for c in node.get("content") or [])]
        if node.get("type") == "listItem":
            return ["- " + "\n".join(b for c in node.get("content") or [] for b in blocks(c))]
        if node.get("type") in ("bulletList", "orderedList"):
            return ["\n".join(b for c in node.get("content") or [] for b in blocks(c))]
        return [b for c in node.get("content") or [] for b in blocks(c)]

    return "\n\n".join(blocks(document)).strip()


def _cannot_set(name: str) -> str:
    return f"Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."


def _is_adf(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") == "doc"
        and value.get("version") == 1
        and isinstance(value.get("content"), list)
    )


# -- JQL -----------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>!=|>=|<=|!~|=|>|<|~)
      | (?P<punct>[(),])
      | (?P<word>[^\s"'(),=!<>~]+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "empty", "null", "order", "by", "asc", "desc"}
_RELATIVE = re.compile(r"([+-]?)\s*(\d+)\s*([wdhm])")
_DATE_FORMATS = ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d")
_DATE_FIELDS = {"created", "createddate", "updated", "updateddate", "resolved", "resolutiondate"}
# names of one clause: an issue by its id or its key
_ISSUE_FIELDS = {"id", "key", "issuekey"}
_TEXT_FIELDS = {"summary", "description", "comment", "text"}


@dataclass(frozen=True)
class Token:
    kind: str  # string | op | punct | word
    text: str
    position: int

    @property
    def keyword(self) -> str:
        return self.text.lower() if self.kind == "word" else ""


@dataclass
class JqlContext:
    sim: JiraSimulator
    user: JiraUser
    now: datetime
    zone: ZoneInfo


Predicate = Callable[[SimIssue, JqlContext], bool]


def _tokens(jql: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(jql):
        if not jql[position:].strip():
            break
        match = _TOKEN.match(jql, position)
        if match is None or match.end() == position:
            raise JqlError(
                f"Error in the JQL Query: The character '{jql[position]}' is a reserved JQL "
                f"character. (line 1, character {position + 1})"
            )
        kind = match.lastgroup or "word"
        text = match.group(kind)
        if kind == "string":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        tokens.append(Token(kind, text, match.start(kind)))
        position = match.end()
    return tokens


class JqlParser:
    """A JQL subset: clauses joined by AND / OR / NOT and parentheses; =, !=, IN, NOT IN,
    IS [NOT] EMPTY, ~, !~, and >, >=, <, <= on dates; ORDER BY."""

    def __init__(
        self,
        jql: str,
        known: Callable[[str], bool] = lambda name: True,
        validate: Callable[[str, Any], None] = lambda name, value: None,
    ) -> None:
        self.tokens = _tokens(jql)
        self.index = 0
        self.known = known
        self.validate = validate

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise JqlError("Error in the JQL Query: The query ended unexpectedly.")
        self.index += 1
        return token

    def parse(self) -> tuple[Predicate | None, list[tuple[str, bool]]]:
        predicate: Predicate | None = None
        token = self.peek()
        if token is not None and token.keyword != "order":
            predicate = self.or_expr()
        order: list[tuple[str, bool]] = []
        token = self.peek()
        if token is not None:
            if token.keyword != "order":
                raise self.unexpected(token)
            self.take()
            if self.take().keyword != "by":
                raise JqlError("Error in the JQL Query: Expecting 'by' after 'order'.")
            while True:
                name = self.take()
                if name.kind not in ("word", "string") or not self.known(name.text):
                    raise JqlError(
                        f"Field '{name.text}' does not exist or you do not have permission "
                        "to view it."
                    )
                descending = False
                following = self.peek()
                if following is not None and following.keyword in ("asc", "desc"):
                    descending = self.take().keyword == "desc"
                order.append((name.text.lower(), descending))
                following = self.peek()
                if following is None:
                    break
                if following.text != ",":
                    raise self.unexpected(following)
                self.take()
        return predicate, order

    def unexpected(self, token: Token) -> JqlError:
        return JqlError(
            f"Error in the JQL Query: Expecting either 'OR' or 'AND' but got '{token.text}'. "
            f"(line 1, character {token.position + 1})"
        )

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while (token := self.peek()) is not None and token.keyword == "or":
            self.take()
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda issue, ctx: any(p(issue, ctx) for p in parts)

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while (token := self.peek()) is not None and token.keyword == "and":
            self.take()
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda issue, ctx: all(p(issue, ctx) for p in parts)

    def not_expr(self) -> Predicate:
        token = self.peek()
        if token is not None and token.keyword == "not":
            self.take()
            inner = self.not_expr()
            return lambda issue, ctx: not inner(issue, ctx)
        if token is not None and token.text == "(" and token.kind == "punct":
            self.take()
            inner = self.or_expr()
            if self.take().text != ")":
                raise JqlError("Error in the JQL Query: Expecting ')'.")
            return inner
        return self.clause()

    def value(self) -> Any:
        token = self.take()
        if token.kind == "string":
            return token.text
        if token.kind != "word":
            raise JqlError(
                f"Error in the JQL Query: Expecting a value but got '{token.text}'. "
                f"(line 1, character {token.position + 1})"
            )
        following = self.peek()
        if following is not None and following.text == "(" and following.kind == "punct":
            self.take()
            while self.take().text != ")":
                pass
            return ("function", token.text.lower())
        if token.keyword in ("empty", "null"):
            return ("empty",)
        return token.text

    def clause(self) -> Predicate:
        name_token = self.take()
        if name_token.kind not in ("word", "string"):
            raise self.unexpected(name_token)
        name = name_token.text
        if not self.known(name):
            raise JqlError(
                f"Field '{name}' does not exist or you do not have permission to view it."
            )
        operator = self.take()
        op = operator.text.lower() if operator.kind in ("op", "word") else ""
        if op == "not":
            if self.take().keyword != "in":
                raise JqlError("Error in the JQL Query: Expecting 'in' after 'not'.")
            op = "not in"
        if op == "is":
            following = self.peek()
            negated = following is not None and following.keyword == "not"
            if negated:
                self.take()
            if self.take().keyword not in ("empty", "null"):
                raise JqlError("Error in the JQL Query: Expecting EMPTY after IS.")
            op = "is not empty" if negated else "is empty"
            return _clause(name, op, None)
        if op in ("in", "not in"):
            if self.take().text != "(":
                raise JqlError("Error in the JQL Query: Expecting '(' after IN.")
            values = [self.value()]
            while (token := self.take()).text == ",":
                values.append(self.value())
            if token.text != ")":
                raise JqlError("Error in the JQL Query: Expecting ')' after a list.")
            refused: list[str] = []
            for value in values:
                try:
                    self.validate(name, value)
                except JqlError as exc:
                    refused += exc.messages
            if refused:
                raise JqlError(*refused)
            return _clause(name, op, values)
        if op not in ("=", "!=", "~", "!~", ">", ">=", "<", "<="):
            raise JqlError(
                f"Error in the JQL Query: Expecting operator but got '{operator.text}'. "
                f"(line 1, character {operator.position + 1})"
            )
        value = self.value()
        self.validate(name, value)
        return _clause(name, op, value)


def _clause(name: str, op: str, value: Any) -> Predicate:
    field_name = name.lower()
    if op in (">", ">=", "<", "<=") and field_name not in _DATE_FIELDS:
        raise JqlError(f"The operator '{op}' is not supported by the '{name}' field.")
    if op in ("~", "!~") and field_name not in _TEXT_FIELDS:
        raise JqlError(f"The operator '{op}' is not supported by the '{name}' field.")

    def evaluate(issue: SimIssue, ctx: JqlContext) -> bool:
        values = ctx.sim.field_values(issue, name, ctx)
        if op == "is empty":
            return not values
        if op == "is not empty":
            return bool(values)
        if field_name in _DATE_FIELDS:
            moment = values[0] if values else None
            bound = ctx.sim.jql_date(value, name, ctx)
            if moment is None or bound is None:
                return False
            outcome: dict[str, bool] = {
                "=": moment == bound,
                "!=": moment != bound,
                ">": moment > bound,
                ">=": moment >= bound,
                "<": moment < bound,
                "<=": moment <= bound,
            }
            return outcome.get(op, False)
        if op in ("~", "!~"):
            needle = str(value).strip("*").casefold()
            found = any(needle in str(v).casefold() for v in values)
            return found if op == "~" else not found
        wanted = value if op in ("in", "not in") else [value]
        resolved = [ctx.sim.jql_value(w, name, ctx) for w in wanted]
        keys = {str(v).casefold() for v in values}
        hit = any(
            (r == ("empty",) and not values) or (r != ("empty",) and str(r).casefold() in keys)
            for r in resolved
        )
        return hit if op in ("=", "in") else not hit

    return evaluate


# the fields ORDER BY takes (the sort keys of JiraSimulator._sort_key)
_SORTABLE = frozenset(
    {"key", "issuekey", "id", "created", "updated", "resolved", "resolutiondate"}
    | {"priority", "status", "summary"}
)
_FIELD_NAMES = {
    "project",
    "issuetype",
    "type",
    "status",
    "statuscategory",
    "priority",
    "labels",
    "summary",
    "description",
    "comment",
    "text",
    "assignee",
    "reporter",
    "key",
    "issuekey",
    "id",
    "resolution",
    *_DATE_FIELDS,
}


# -- the simulator -------------------------------------------------------------------------------


Handler = Callable[[Request, JiraUser | None], Awaitable[Response]]


class JiraSimulator(Simulator):
    """Jira Cloud with one service-desk project. Options (all overridable): ``users``,
    ``project_key``, ``project_type`` (``software``: no JSM comment API), ``issue_type``,
    ``statuses``, ``workflow``, ``severity_field``, ``search_lag`` (seconds before a write is
    visible to JQL search), ``client_key`` and ``signing`` ("connect" | "hub") of the
    webhooks, ``time_zone`` of the site, ``denied_permissions`` (email -> permission keys the
    user lacks)."""

    kind = "jira"
    user_agent = "Atlassian Webhook HTTP Client"
    # Jira retries 408, 409, 425, 429, 5xx and connection failures for about 30 minutes
    retry = RetryPolicy(
        frozenset({408, 409, 425, 429, *range(500, 600)}),
        (10.0, 60.0, 180.0, 480.0, 1080.0),
    )

    def __init__(
        self,
        *,
        users: Sequence[JiraUser] | None = None,
        project_key: str = "OPS",
        project_name: str = "Operations",
        project_type: str = "service_desk",
        issue_type: str = "Incident",
        statuses: Sequence[JiraStatus] | None = None,
        workflow: Sequence[WorkflowTransition] | None = None,
        severity_field: str = "customfield_10050",
        search_lag: float = 1.0,
        client_key: str = "im-sim-jira",
        signing: str = "connect",
        time_zone: str = "Etc/UTC",
        denied_permissions: Mapping[str, Collection[str]] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if signing not in ("connect", "hub"):
            raise ValueError("signing must be 'connect' or 'hub'")
        if not re.fullmatch(r"customfield_\d+", severity_field):
            raise ValueError("severity_field must be customfield_<number>")
        self.users = list(users if users is not None else DEFAULT_USERS)
        self.project_key = project_key
        self.project_id = "10000"
        self.project_name = project_name
        self.project_type = project_type
        self.issue_types = {"10005": issue_type, "10006": "Service request"}
        self.incident_type = "10005"
        self.statuses = list(statuses if statuses is not None else DEFAULT_STATUSES)
        self.workflow = list(workflow if workflow is not None else DEFAULT_WORKFLOW)
        self.initial_status = self.statuses[0].name
        self.severity_field = severity_field
        self.severity_options = {str(10100 + n): value for n, value in enumerate(SEVERITIES)}
        self.search_lag = search_lag
        self.client_key = client_key
        self.signing = signing
        self.time_zone = time_zone
        self.denied = {k.lower(): set(v) for k, v in (denied_permissions or {}).items()}
        self.issues: dict[int, SimIssue] = {}
        self._keys: dict[str, int] = {}  # issue key -> id
        # matches of a search, kept while nothing was written and the clock stood still (so a
        # walk through pages on a frozen clock sorts once)
        self._matches: dict[tuple[Any, ...], list[SimIssue]] = {}
        self._writes = 0
        self._last_indexed: datetime | None = None  # when the index last took a write
        # what JQL search sees: per issue, (written at, snapshot) oldest first
        self._index: dict[int, list[tuple[datetime, SimIssue]]] = {}
        self._next_issue = 10000
        self._next_number = 1
        self._next_comment = 10000
        self._next_changelog = 10000
        self.base_url = "https://im-sim.atlassian.net"

    # -- the Simulator protocol ------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "auth": "Authorization: Basic <email:api_token> (REST v3, v2 and latest)",
            "accounts": [
                {"email": u.email, "api_token": u.api_token, "accountType": u.account_type}
                for u in self.users
                if u.api_token
            ],
            "users": [u.email for u in self.users],
            "project": f"{self.project_key} ({self.project_type})",
            "issue_type": self.issue_types[self.incident_type],
            "statuses": [s.name for s in self.statuses],
            "transitions": [f"{t.source} -> {t.target} ({t.name})" for t in self.workflow],
            "priorities": [name for _, name, _ in PRIORITIES],
            "severity_field": f"{self.severity_field} (Severity: {', '.join(SEVERITIES)})",
            "webhook signing": (
                f"Connect JWT, client key {self.client_key}"
                if self.signing == "connect"
                else "admin webhook, X-Hub-Signature"
            ),
            "search_lag": f"{self.search_lag:g} s",
        }

    def record_count(self) -> int:
        return len(self.issues)

    def sign(self, delivery_id: str, body: bytes, attempt: int) -> dict[str, str]:
        headers = {"X-Atlassian-Webhook-Identifier": delivery_id}
        if attempt > 1:
            headers["X-Atlassian-Webhook-Retry"] = str(attempt - 1)
        if not self.webhook_secret:
            return headers
        if self.signing == "hub":
            headers["X-Hub-Signature"] = hub_signature(self.webhook_secret, body)
        else:
            url = httpx.URL(self.webhook_url)
            token = connect_jwt(
                self.webhook_secret,
                self.client_key,
                "POST",
                url.path,
                url.query.decode(),
                self.clock.now(),
            )
            headers["Authorization"] = f"JWT {token}"
        return headers

    def error(self, status: int, message: str) -> Response:
        return JSONResponse({"errorMessages": [message], "errors": {}}, status_code=status)

    def rate_limited(self, retry_after: int) -> Response:
        reset = self.clock.now().astimezone(UTC) + timedelta(seconds=retry_after)
        return JSONResponse(
            {"errorMessages": ["Rate limit exceeded."], "errors": {}},
            status_code=429,
            headers={
                "Retry-After": str(retry_after),
                "X-RateLimit-Limit": "350",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": reset.strftime("%Y-%m-%dT%H:%MZ"),
                "X-RateLimit-NearLimit": "true",
                "RateLimit-Reason": "jira-cost-based",
            },
        )

    # -- lookups ---------------------------------------------------------------------------------

    def user_by_id(self, account_id: str) -> JiraUser | None:
        return next((u for u in self.users if u.account_id == account_id), None)

    def user_by_email(self, email: str) -> JiraUser | None:
        return next((u for u in self.users if u.email.lower() == email.lower()), None)

    def _zone(self, user: JiraUser | None) -> ZoneInfo:
        name = (user.time_zone if user else None) or self.time_zone
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo("UTC")

    def _status(self, name: str) -> JiraStatus:
        return next(s for s in self.statuses if s.name == name)

    def _can(self, user: JiraUser, permission: str) -> bool:
        return permission not in self.denied.get(user.email.lower(), set())

    def _issue(self, ref: str, user: JiraUser) -> SimIssue:
        issue = self._visible(ref, user)
        if issue is None:
            raise Refusal(404, [ISSUE_NOT_FOUND])
        return issue

    def _visible(self, ref: str, user: JiraUser) -> SimIssue | None:
        """The issue with that id or key, if it exists and ``user`` may see it."""
        issue: SimIssue | None = None
        if ref.isdigit():
            issue = self.issues.get(int(ref))
        elif (number := self._keys.get(ref.upper())) is not None:
            issue = self.issues.get(number)
        return issue if issue is not None and self._can(user, "BROWSE_PROJECTS") else None

    def _now(self) -> datetime:
        now = self.clock.now().astimezone(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    def _time(self, moment: datetime | None, user: JiraUser | None) -> str | None:
        if moment is None:
            return None
        local = moment.astimezone(self._zone(user))
        return (
            local.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{local.microsecond // 1000:03d}"
            + (local.strftime("%z"))
        )

    # -- representations -------------------------------------------------------------------------

    def _api(self, version: str) -> str:
        return f"{self.base_url}/rest/api/{version}"

    def user_json(self, user: JiraUser | None, version: str, viewer: JiraUser | None) -> Any:
        if user is None:
            return None
        initials = "".join(w[0] for w in user.display_name.split()[:2]).upper()
        avatar = f"{AVATARS}/initials/{initials}-5.png"
        shown = user.email_visible or (viewer is not None and viewer.email == user.email)
        return {
            "self": f"{self._api(version)}/user?accountId={user.account_id}",
            "accountId": user.account_id,
            **({"emailAddress": user.email} if shown else {}),
            "avatarUrls": {
                size: f"{avatar}?size={size[:2]}&s={size[:2]}"
                for size in ("48x48", "24x24", "16x16", "32x32")
            },
            "displayName": user.display_name,
            "active": True,
            "timeZone": (user.time_zone or self.time_zone),
            "accountType": user.account_type,
        }

    def status_json(self, status: JiraStatus, version: str) -> dict[str, Any]:
        category = CATEGORIES[status.category]
        return {
            "self": f"{self._api(version)}/status/{status.id}",
            "description": "",
            "iconUrl": f"{self.base_url}/images/icons/statuses/generic.png",
            "name": status.name,
            "id": status.id,
            "statusCategory": {
                "self": f"{self._api(version)}/statuscategory/{category['id']}",
                **category,
            },
        }

    def priority_json(self, priority_id: str, version: str) -> dict[str, Any]:
        _, name, color = next(p for p in PRIORITIES if p[0] == priority_id)
        return {
            "self": f"{self._api(version)}/priority/{priority_id}",
            "iconUrl": f"{self.base_url}/images/icons/priorities/{name.lower()}.svg",
            "name": name,
            "id": priority_id,
            "statusColor": color,
            "description": f"{name} priority",
            "isDefault": priority_id == DEFAULT_PRIORITY,
        }

    def issuetype_json(self, type_id: str, version: str) -> dict[str, Any]:
        return {
            "self": f"{self._api(version)}/issuetype/{type_id}",
            "id": type_id,
            "description": "",
            "iconUrl": f"{self.base_url}/images/icons/issuetypes/incident.svg",
            "name": self.issue_types[type_id],
            "subtask": False,
            "hierarchyLevel": 0,
        }

    def project_json(self, version: str, full: bool = False) -> dict[str, Any]:
        project: dict[str, Any] = {
            "self": f"{self._api(version)}/project/{self.project_id}",
            "id": self.project_id,
            "key": self.project_key,
            "name": self.project_name,
            "projectTypeKey": self.project_type,
            "simplified": False,
        }
        if full:
            project.update(
                {
                    "expand": "description,lead,issueTypes,url,projectKeys,permissions,insight",
                    "description": "Incidents of the operations team",
                    "style": "classic",
                    "isPrivate": False,
                    "issueTypes": [self.issuetype_json(t, version) for t in self.issue_types],
                    "assigneeType": "UNASSIGNED",
                    "lead": self.user_json(self.users[0], version, None),
                }
            )
        return project

    def severity_json(self, option_id: str | None, version: str) -> dict[str, Any] | None:
        if option_id is None:
            return None
        return {
            "self": f"{self._api(version)}/customFieldOption/{option_id}",
            "value": self.severity_options[option_id],
            "id": option_id,
        }

    def comment_json(
        self, issue: SimIssue, comment: SimComment, version: str, viewer: JiraUser | None
    ) -> dict[str, Any]:
        author = self.user_json(self.user_by_id(comment.author), version, viewer)
        body: Any = comment.body if version == "3" else adf_to_text(comment.body)
        return {
            "self": f"{self._api(version)}/issue/{issue.id}/comment/{comment.id}",
            "id": str(comment.id),
            "author": author,
            "body": body,
            "updateAuthor": author,
            "created": self._time(comment.created, viewer),
            "updated": self._time(comment.created, viewer),
            "jsdPublic": comment.public,
        }

    def issue_fields(
        self, issue: SimIssue, version: str, viewer: JiraUser | None
    ) -> dict[str, Any]:
        description: Any = issue.description
        if version != "3":
            description = adf_to_text(issue.description) or None
        comments = [self.comment_json(issue, c, version, viewer) for c in issue.comments]
        return {
            "summary": issue.summary,
            "description": description,
            "issuetype": self.issuetype_json(issue.issuetype, version),
            "project": self.project_json(version),
            "priority": self.priority_json(issue.priority, version),
            "status": self.status_json(self._status(issue.status), version),
            "assignee": self.user_json(
                self.user_by_id(issue.assignee) if issue.assignee else None, version, viewer
            ),
            "reporter": self.user_json(self.user_by_id(issue.reporter), version, viewer),
            "creator": self.user_json(self.user_by_id(issue.reporter), version, viewer),
            "labels": list(issue.labels),
            "created": self._time(issue.created, viewer),
            "updated": self._time(issue.updated, viewer),
            "statuscategorychangedate": self._time(issue.status_changed or issue.created, viewer),
            "resolution": (
                {
                    "self": f"{self._api(version)}/resolution/{issue.resolution['id']}",
                    **issue.resolution,
                }
                if issue.resolution
                else None
            ),
            "resolutiondate": self._time(issue.resolutiondate, viewer),
            "comment": {
                "comments": comments,
                "self": f"{self._api(version)}/issue/{issue.id}/comment",
                "maxResults": len(comments),
                "total": len(comments),
                "startAt": 0,
            },
            self.severity_field: self.severity_json(issue.severity, version),
        }

    def issue_json(
        self,
        issue: SimIssue,
        version: str,
        viewer: JiraUser | None,
        selected: set[str] | None = None,
    ) -> dict[str, Any]:
        fields = self.issue_fields(issue, version, viewer)
        if selected is not None:
            fields = {k: v for k, v in fields.items() if k in selected}
        return {
            "expand": ISSUE_EXPAND,
            "id": str(issue.id),
            "self": f"{self._api(version)}/issue/{issue.id}",
            "key": issue.key,
            "fields": fields,
        }

    def _selected(self, requested: Sequence[str], default: set[str] | None) -> set[str] | None:
        """The fields a ``fields`` parameter asks for (None: all of them): names, ``*all``,
        ``*navigable``, and ``-name`` to leave one out (alone: the navigable ones but it)."""
        names = [n.strip() for value in requested for n in value.split(",") if n.strip()]
        if not names:
            return default
        every = set(self.issue_fields_names())
        navigable = every - {"comment"}
        wanted = [n for n in names if not n.startswith("-")]
        chosen: set[str] = set() if wanted else set(navigable)
        for name in wanted:
            if name == "*all":
                chosen |= every
            elif name == "*navigable":
                chosen |= navigable
            elif name in every:
                chosen.add(name)
        return chosen - {n[1:] for n in names if n.startswith("-")}

    def issue_fields_names(self) -> list[str]:
        return [
            "summary",
            "description",
            "issuetype",
            "project",
            "priority",
            "status",
            "assignee",
            "reporter",
            "creator",
            "labels",
            "created",
            "updated",
            "statuscategorychangedate",
            "resolution",
            "resolutiondate",
            "comment",
            self.severity_field,
        ]

    # -- JQL evaluation --------------------------------------------------------------------------

    def field_values(self, issue: SimIssue, name: str, ctx: JqlContext) -> list[Any]:
        field_name = name.lower()
        status = self._status(issue.status)
        if field_name == "project":
            return [self.project_key, self.project_id, self.project_name]
        if field_name in ("issuetype", "type"):
            return [issue.issuetype, self.issue_types[issue.issuetype]]
        if field_name == "status":
            return [status.name, status.id]
        if field_name == "statuscategory":
            return [status.category, CATEGORIES[status.category]["name"]]
        if field_name == "priority":
            return [issue.priority, self.priority_json(issue.priority, "3")["name"]]
        if field_name == "labels":
            return list(issue.labels)
        if field_name == "summary":
            return [issue.summary]
        if field_name == "description":
            return [adf_to_text(issue.description)] if issue.description else []
        if field_name == "comment":
            return [adf_to_text(c.body) for c in issue.comments]
        if field_name == "text":
            texts = [issue.summary, adf_to_text(issue.description)]
            return texts + [adf_to_text(c.body) for c in issue.comments]
        if field_name in ("assignee", "reporter"):
            account = issue.assignee if field_name == "assignee" else issue.reporter
            user = self.user_by_id(account) if account else None
            return [user.account_id, user.email] if user else []
        if field_name in _ISSUE_FIELDS:
            return [str(issue.id), issue.key]
        if field_name == "resolution":
            return [issue.resolution["name"], issue.resolution["id"]] if issue.resolution else []
        if field_name in ("created", "createddate"):
            return [issue.created]
        if field_name in ("updated", "updateddate"):
            return [issue.updated]
        if field_name in ("resolved", "resolutiondate"):
            return [issue.resolutiondate] if issue.resolutiondate else []
        number = self.severity_field.split("_")[1]
        if field_name in (f"cf[{number}]", self.severity_field, "severity"):
            if issue.severity is None:
                return []
            return [issue.severity, self.severity_options[issue.severity]]
        raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")

    def known_field(self, name: str) -> bool:
        number = self.severity_field.split("_")[1]
        return name.lower() in _FIELD_NAMES or name.lower() in (
            f"cf[{number}]",
            self.severity_field,
            "severity",
        )

    def validate_jql(self, name: str, value: Any, user: JiraUser | None = None) -> None:
        """Refuse a literal Jira would refuse before searching: unknown projects and
        functions, dates it cannot read, issues (by id or key) that do not exist or that
        ``user`` cannot see. Raises JqlError."""
        probe = JqlContext(self, user or self.users[0], self.clock.now(), ZoneInfo("UTC"))
        if name.lower() in _DATE_FIELDS:
            self.jql_date(value, name, probe)
            return
        resolved = self.jql_value(value, name, probe)
        if name.lower() in _ISSUE_FIELDS and isinstance(resolved, str):
            ref = resolved.strip()
            if self._visible(ref, probe.user) is None:
                raise JqlError(
                    f"A value with ID '{ref}' does not exist for the field '{name}'."
                    if ref.isdigit()
                    else f"An issue with key '{ref}' does not exist for field '{name}'."
                )

    def jql_value(self, value: Any, name: str, ctx: JqlContext) -> Any:
        if isinstance(value, tuple) and value[:1] == ("function",):
            if value[1] == "currentuser":
                return ctx.user.account_id
            raise JqlError(f"Unable to find JQL function '{value[1]}()'.")
        project_names = {self.project_key.casefold(), self.project_id, self.project_name.casefold()}
        if (
            name.lower() == "project"
            and isinstance(value, str)
            and value.casefold() not in project_names
        ):
            raise JqlError(f"The value '{value}' does not exist for the field '{name}'.")
        return value

    def jql_date(self, value: Any, name: str, ctx: JqlContext) -> datetime | None:
        if isinstance(value, tuple):
            if value[:2] == ("function", "now"):
                return ctx.now
            if value == ("empty",):
                return None
            raise JqlError(f"Unable to find JQL function '{value[1]}()'.")
        text = str(value).strip()
        relative = _RELATIVE.findall(text)
        if relative and _RELATIVE.sub("", text).strip() == "":
            total = timedelta()
            for sign, amount, unit in relative:
                step = {"w": timedelta(weeks=1), "d": timedelta(days=1)}.get(
                    unit, timedelta(hours=1) if unit == "h" else timedelta(minutes=1)
                )
                total += step * int(amount) * (-1 if sign == "-" else 1)
            return ctx.now + total
        for form in _DATE_FORMATS:
            try:
                local = datetime.strptime(text, form)
            except ValueError:
                continue
            return local.replace(tzinfo=ctx.zone).astimezone(UTC)
        raise JqlError(
            f"Date value '{text}' for field '{name}' is invalid. Valid formats include: "
            "'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period "
            "format e.g. '-5d', '4w 2d'."
        )

    def _indexed(self, issue: SimIssue) -> None:
        """Record what the search index will show once ``search_lag`` has passed."""
        self._writes += 1
        now = self.clock.now()
        self._last_indexed = now
        copy = dataclasses.replace(issue, labels=list(issue.labels), comments=list(issue.comments))
        history = self._index.setdefault(issue.id, [])
        history.append((now, copy))
        cutoff = now - timedelta(seconds=self.search_lag)
        # keep one snapshot older than the lag (what is visible now) and everything newer
        while len(history) > 1 and history[1][0] <= cutoff:
            history.pop(0)

    def _searchable(self, reconcile: set[int]) -> list[SimIssue]:
        cutoff = self.clock.now() - timedelta(seconds=self.search_lag)
        found = []
        for issue_id, issue in self.issues.items():
            if issue_id in reconcile:
                found.append(issue)
                continue
            visible = [snapshot for at, snapshot in self._index.get(issue_id, []) if at <= cutoff]
            if visible:
                found.append(visible[-1])
        return found

    # -- writes ----------------------------------------------------------------------------------

    def _stamp(self, issue: SimIssue) -> None:
        """Set ``updated`` to now, strictly after the previous value (ms precision)."""
        now = self._now()
        if now <= issue.updated:
            now = issue.updated + timedelta(milliseconds=1)
        issue.updated = now

    def _copy(self, issue: SimIssue) -> SimIssue:
        return dataclasses.replace(issue, labels=list(issue.labels), comments=list(issue.comments))

    def _changelog(self, before: SimIssue, after: SimIssue) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []

        def item(name: str, old: Any, old_text: Any, new: Any, new_text: Any, **extra: Any) -> None:
            custom = name == self.severity_field
            items.append(
                {
                    "field": "Severity" if custom else name,
                    "fieldtype": "custom" if custom else "jira",
                    "fieldId": name,
                    "from": old,
                    "fromString": old_text,
                    "to": new,
                    "toString": new_text,
                    **extra,
                }
            )

        if before.summary != after.summary:
            item("summary", None, before.summary, None, after.summary)
        if before.description != after.description:
            item(
                "description",
                None,
                adf_to_text(before.description) or None,
                None,
                adf_to_text(after.description) or None,
            )
        if before.priority != after.priority:
            old = self.priority_json(before.priority, "2")["name"]
            new = self.priority_json(after.priority, "2")["name"]
            item("priority", before.priority, old, after.priority, new)
        if before.status != after.status:
            old_status, new_status = self._status(before.status), self._status(after.status)
            item("status", old_status.id, old_status.name, new_status.id, new_status.name)
        if before.resolution != after.resolution:
            item(
                "resolution",
                (before.resolution or {}).get("id"),
                (before.resolution or {}).get("name"),
                (after.resolution or {}).get("id"),
                (after.resolution or {}).get("name"),
            )
        if before.assignee != after.assignee:
            old_user = self.user_by_id(before.assignee) if before.assignee else None
            new_user = self.user_by_id(after.assignee) if after.assignee else None
            item(
                "assignee",
                before.assignee,
                old_user.display_name if old_user else None,
                after.assignee,
                new_user.display_name if new_user else None,
                tmpFromAccountId=before.assignee,
                tmpToAccountId=after.assignee,
            )
        if before.labels != after.labels:
            item("labels", None, " ".join(before.labels), None, " ".join(after.labels))
        if before.severity != after.severity:
            item(
                self.severity_field,
                before.severity,
                self.severity_options.get(before.severity or ""),
                after.severity,
                self.severity_options.get(after.severity or ""),
            )
        return items

    def _event(
        self,
        event: str,
        issue: SimIssue,
        actor: JiraUser,
        items: list[dict[str, Any]] | None,
        type_name: str,
    ) -> None:
        payload: dict[str, Any] = {
            "timestamp": int(issue.updated.timestamp() * 1000),
            "webhookEvent": event,
            "issue_event_type_name": type_name,
            "user": self.user_json(actor, "2", None),
            "issue": self.issue_json(issue, "2", None),
        }
        if items is not None:
            self._next_changelog += 1
            payload["changelog"] = {"id": str(self._next_changelog), "items": items}
        self.webhooks.emit(str(issue.id), payload, self.next_delivery_id())

    def _comment_event(self, issue: SimIssue, comment: SimComment) -> None:
        issue_summary = {
            "id": str(issue.id),
            "self": f"{self._api('2')}/issue/{issue.id}",
            "key": issue.key,
            "fields": {
                k: v
                for k, v in self.issue_fields(issue, "2", None).items()
                if k in ("summary", "issuetype", "project", "assignee", "priority", "status")
            },
        }
        payload = {
            "timestamp": int(comment.created.timestamp() * 1000),
            "webhookEvent": "comment_created",
            "comment": self.comment_json(issue, comment, "2", None),
            "issue": issue_summary,
        }
        self.webhooks.emit(str(issue.id), payload, self.next_delivery_id())

    def _committed(
        self, before: SimIssue, issue: SimIssue, actor: JiraUser, type_name: str
    ) -> bool:
        """Stamp, index and announce a change; False when nothing changed."""
        items = self._changelog(before, issue)
        if not items:
            return False
        self._stamp(issue)
        self._indexed(issue)
        self._event("jira:issue_updated", issue, actor, items, type_name)
        return True

    def _read_user(self, value: Any, name: str, errors: dict[str, str]) -> str | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            errors[name] = f"Specify a valid value for {name}"
            return None
        account = value.get("accountId") or value.get("id")
        if "name" in value or "key" in value:
            errors[name] = (
                "'accountId' must be the only user identifying query parameter in GDPR strict mode."
            )
            return None
        if account in (None, ""):
            return None
        user = self.user_by_id(str(account))
        if user is None:
            errors[name] = f"User '{account}' cannot be assigned issues."
            return None
        return user.account_id

    def _read_fields(
        self,
        fields: Mapping[str, Any],
        update: Mapping[str, Any],
        version: str,
        issue: SimIssue | None,
    ) -> tuple[dict[str, Any], list[Any]]:
        """Validated changes (attribute -> value) and comment bodies to add; raises Refusal."""
        errors: dict[str, str] = {}
        changes: dict[str, Any] = {}
        comments: list[Any] = []
        merged = dict(fields)
        for name, operations in update.items():
            if not isinstance(operations, list):
                errors[name] = "Operations must be a list"
                continue
            for operation in operations:
                if not isinstance(operation, dict) or len(operation) != 1:
                    errors[name] = "An operation is an object with one of set, add, remove"
                    continue
                verb, value = next(iter(operation.items()))
                if name == "comment" and verb == "add":
                    comments.append((value or {}).get("body") if isinstance(value, dict) else None)
                elif name == "labels":
                    labels = list(merged.get("labels", issue.labels if issue else []))
                    if verb == "add" and value not in labels:
                        labels.append(value)
                    elif verb == "remove" and value in labels:
                        labels.remove(value)
                    elif verb == "set":
                        labels = list(value or [])
                    merged["labels"] = labels
                elif verb == "set":
                    merged[name] = value
                else:
                    errors[name] = f"Operation '{verb}' is not supported for {name}"
        for name, value in merged.items():
            if name in ("project", "issuetype") and issue is not None:
                errors[name] = _cannot_set(name)
            elif name == "project":
                if not isinstance(value, dict) or (
                    str(value.get("key", "")).upper() != self.project_key
                    and str(value.get("id", "")) != self.project_id
                ):
                    errors[name] = "Specify a valid project ID or key"
            elif name == "issuetype":
                wanted = value if isinstance(value, dict) else {}
                type_id = next(
                    (
                        t
                        for t, label in self.issue_types.items()
                        if str(wanted.get("id")) == t or wanted.get("name") == label
                    ),
                    None,
                )
                if type_id is None:
                    errors[name] = "Specify an issue type"
                else:
                    changes["issuetype"] = type_id
            elif name == "summary":
                if not isinstance(value, str) or not value.strip():
                    errors[name] = "You must specify a summary of the issue."
                elif "\n" in value or "\r" in value:
                    errors[name] = "The summary is invalid because it contains newline characters."
                elif len(value) > MAX_SUMMARY:
                    errors[name] = "Summary must be less than 255 characters."
                else:
                    changes["summary"] = value
            elif name == "description":
                if value is None:
                    changes["description"] = None
                elif version == "3":
                    if not _is_adf(value):
                        errors[name] = (
                            "Operation value must be an Atlassian Document (see the Atlassian "
                            "Document Format)"
                        )
                    else:
                        changes["description"] = value if value.get("content") else None
                elif isinstance(value, str):
                    changes["description"] = text_to_adf(value) if value.strip() else None
                else:
                    errors[name] = "Operation value must be a string"
            elif name == "priority":
                wanted = value if isinstance(value, dict) else {}
                priority = next(
                    (
                        p[0]
                        for p in PRIORITIES
                        if str(wanted.get("id")) == p[0] or wanted.get("name") == p[1]
                    ),
                    None,
                )
                if priority is None:
                    errors[name] = "The priority selected is invalid."
                else:
                    changes["priority"] = priority
            elif name == "assignee":
                account = self._read_user(value, name, errors)
                if name not in errors:
                    changes["assignee"] = account
            elif name == "reporter":
                account = self._read_user(value, name, errors)
                if name not in errors and account:
                    changes["reporter"] = account
            elif name == "labels":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    errors[name] = "Labels must be a list of strings"
                elif any(" " in v or not v or len(v) > 255 for v in value):
                    bad = next(v for v in value if " " in v or not v or len(v) > 255)
                    errors[name] = f"The label '{bad}' contains spaces which is invalid."
                else:
                    changes["labels"] = list(dict.fromkeys(value))
            elif name == self.severity_field:
                if value is None:
                    changes["severity"] = None
                    continue
                wanted = value if isinstance(value, dict) else {}
                option = next(
                    (
                        o
                        for o, label in self.severity_options.items()
                        if str(wanted.get("id")) == o or wanted.get("value") == label
                    ),
                    None,
                )
                if option is None:
                    errors[name] = (
                        f"Option value '{wanted.get('value') or wanted.get('id')}' is not valid"
                    )
                else:
                    changes["severity"] = option
            elif name == "resolution":
                if value is None:
                    changes["resolution"] = None
                elif isinstance(value, dict) and (
                    value.get("name") == RESOLUTION_DONE["name"]
                    or str(value.get("id")) == RESOLUTION_DONE["id"]
                ):
                    changes["resolution"] = dict(RESOLUTION_DONE)
                else:
                    errors[name] = "The resolution selected is invalid."
            else:
                errors[name] = _cannot_set(name)
        if errors:
            raise Refusal(400, [], errors)
        return changes, comments

    def _add_comment(
        self, issue: SimIssue, author: JiraUser, body: dict[str, Any], public: bool
    ) -> SimComment:
        self._next_comment += 1
        comment = SimComment(self._next_comment, author.account_id, body, public, self._now())
        issue.comments.append(comment)
        self._stamp(issue)
        comment.created = issue.updated
        self._indexed(issue)
        self._comment_event(issue, comment)
        return comment

    def _comment_body(self, value: Any, version: str) -> dict[str, Any]:
        if version == "3":
            if not _is_adf(value):
                raise Refusal(
                    400,
                    [],
                    {
                        "comment": "Comment body is not a valid Atlassian Document (see the "
                        "Atlassian Document Format)"
                    },
                )
            text = adf_to_text(value)
            document: dict[str, Any] = value
        else:
            if not isinstance(value, str):
                raise Refusal(400, [], {"comment": "Comment body must be a string"})
            text = value
            document = text_to_adf(value)
        if not text.strip():
            raise Refusal(400, [], {"comment": "Comment body can not be empty!"})
        if len(text) > MAX_COMMENT:
            raise Refusal(
                400,
                [],
                {
                    "comment": "The entered text is too long. It exceeds the allowed limit of "
                    "32,767 characters."
                },
            )
        return document

    def transitions_from(self, issue: SimIssue, user: JiraUser) -> list[WorkflowTransition]:
        if not self._can(user, "TRANSITION_ISSUES"):
            return []
        return [t for t in self.workflow if t.source == issue.status]

    def transition_json(self, transition: WorkflowTransition, version: str) -> dict[str, Any]:
        return {
            "id": transition.id,
            "name": transition.name,
            "to": self.status_json(self._status(transition.target), version),
            "hasScreen": False,
            "isGlobal": False,
            "isInitial": False,
            "isAvailable": True,
            "isConditional": False,
            "isLooped": False,
        }

    # -- routes ----------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        api = "/rest/api/{v}"
        table: list[tuple[str, Handler, list[str], bool]] = [
            (f"{api}/serverInfo", self._server_info, ["GET"], True),
            (f"{api}/myself", self._myself, ["GET"], False),
            (f"{api}/user", self._user, ["GET"], False),
            (f"{api}/user/search", self._user_search, ["GET"], False),
            (f"{api}/project", self._projects, ["GET"], False),
            (f"{api}/project/{{project}}", self._project, ["GET"], False),
            (f"{api}/project/{{project}}/statuses", self._project_statuses, ["GET"], False),
            (f"{api}/priority", self._priorities, ["GET"], False),
            (f"{api}/priority/search", self._priority_search, ["GET"], False),
            (f"{api}/field", self._fields, ["GET"], False),
            (f"{api}/mypermissions", self._my_permissions, ["GET"], False),
            (f"{api}/issue", self._create, ["POST"], False),
            (f"{api}/issue/{{issue}}", self._issue_route, ["GET", "PUT", "DELETE"], False),
            (f"{api}/issue/{{issue}}/assignee", self._assign, ["PUT"], False),
            (f"{api}/issue/{{issue}}/transitions", self._transitions, ["GET", "POST"], False),
            (f"{api}/issue/{{issue}}/comment", self._comments, ["GET", "POST"], False),
            (f"{api}/search/jql", self._search, ["GET", "POST"], False),
            (f"{api}/search", self._legacy_search, ["GET", "POST"], False),
            ("/rest/servicedeskapi/request/{issue}/comment", self._jsm_comment, ["POST"], False),
        ]
        return [
            Route(path, self._endpoint(handler, anonymous), methods=methods)
            for path, handler, methods, anonymous in table
        ]

    def _endpoint(
        self, handler: Handler, anonymous: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self.base_url = str(request.base_url).rstrip("/")
            version = request.path_params.get("v")
            if version is not None and version not in API_VERSIONS:
                return PlainTextResponse("Not Found", status_code=404)
            user = self._authenticate(request)
            if isinstance(user, Response):
                return user
            if user is None and not anonymous:
                return JSONResponse(
                    {"errorMessages": [NOT_AUTHENTICATED], "errors": {}},
                    status_code=401,
                    headers={"WWW-Authenticate": self._realm()},
                )
            try:
                return await handler(request, user)
            except Refusal as refusal:
                return JSONResponse(
                    {"errorMessages": refusal.messages, "errors": refusal.errors},
                    status_code=refusal.status,
                )

        return endpoint

    def _realm(self) -> str:
        return 'OAuth realm="' + self.base_url.replace(":", "%3A").replace("/", "%2F") + '"'

    def _authenticate(self, request: Request) -> JiraUser | Response | None:
        if not request.headers.get("authorization"):
            return None
        credentials = basic_credentials(request)
        if credentials is not None:
            email, token = credentials
            user = self.user_by_email(email)
            if (
                user is not None
                and user.api_token
                and hmac.compare_digest(user.api_token.encode(), token.encode())
            ):
                return user
        return PlainTextResponse(
            PASSWORD_AUTH_TEXT,
            status_code=401,
            headers={
                "WWW-Authenticate": self._realm(),
                "X-Seraph-LoginReason": "AUTHENTICATED_FAILED",
            },
        )

    @staticmethod
    def _version(request: Request) -> str:
        version = str(request.path_params.get("v", "3"))
        return "2" if version == "latest" else version

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise Refusal(
                400, ["Unexpected character: the request body is not valid JSON."]
            ) from None
        if not isinstance(body, dict):
            raise Refusal(400, ["The request body must be a JSON object."])
        return body

    @staticmethod
    def _int(value: str | None, default: int, name: str) -> int:
        if value in (None, ""):
            return default
        try:
            return int(str(value))
        except ValueError:
            raise Refusal(400, [f"The '{name}' parameter must be a number."]) from None

    async def _server_info(self, request: Request, user: JiraUser | None) -> Response:
        return JSONResponse(
            {
                "baseUrl": self.base_url,
                "displayUrl": self.base_url,
                "version": "1001.0.0-SNAPSHOT",
                "versionNumbers": [1001, 0, 0],
                "deploymentType": "Cloud",
                "buildNumber": 100289,
                "buildDate": "2026-11-20T00:00:00.000+0000",
                "serverTime": self._time(self._now(), user),
                "scmInfo": "im-simulator",
                "serverTitle": "Jira (im simulator)",
                "defaultLocale": {"locale": "en_US"},
                "serverTimeZone": self.time_zone,
            }
        )

    async def _myself(self, request: Request, user: JiraUser | None) -> Response:
        assert user is not None
        body = self.user_json(user, self._version(request), user)
        body.update(
            {
                "locale": "en_US",
                "groups": {"size": 1, "items": []},
                "applicationRoles": {"size": 1, "items": []},
                "expand": "groups,applicationRoles",
            }
        )
        return JSONResponse(body)

    async def _user(self, request: Request, user: JiraUser | None) -> Response:
        account = request.query_params.get("accountId")
        if not account:
            raise Refusal(400, ["The 'accountId' query parameter needs to be provided."])
        found = self.user_by_id(account)
        if found is None:
            raise Refusal(
                404, ["Specified user does not exist or you do not have required permissions"]
            )
        return JSONResponse(self.user_json(found, self._version(request), user))

    async def _user_search(self, request: Request, user: JiraUser | None) -> Response:
        query = (request.query_params.get("query") or "").strip().casefold()
        account = request.query_params.get("accountId")
        if not query and not account:
            raise Refusal(400, ["One of 'query' or 'accountId' query parameters must be provided."])
        start = self._int(request.query_params.get("startAt"), 0, "startAt")
        size = min(self._int(request.query_params.get("maxResults"), 50, "maxResults"), 1000)
        found = [
            u
            for u in self.users
            if (account and u.account_id == account)
            or (
                query
                and (
                    u.email.casefold().startswith(query)
                    or any(w.casefold().startswith(query) for w in u.display_name.split())
                    or u.display_name.casefold().startswith(query)
                )
            )
        ]
        version = self._version(request)
        return JSONResponse([self.user_json(u, version, user) for u in found[start : start + size]])

    def _check_project(self, ref: str) -> None:
        if ref.upper() != self.project_key and ref != self.project_id:
            raise Refusal(404, [f"No project could be found with key '{ref}'."])

    async def _projects(self, request: Request, user: JiraUser | None) -> Response:
        return JSONResponse([self.project_json(self._version(request), full=True)])

    async def _project(self, request: Request, user: JiraUser | None) -> Response:
        self._check_project(request.path_params["project"])
        return JSONResponse(self.project_json(self._version(request), full=True))

    async def _project_statuses(self, request: Request, user: JiraUser | None) -> Response:
        self._check_project(request.path_params["project"])
        version = self._version(request)
        statuses = [self.status_json(s, version) for s in self.statuses]
        return JSONResponse(
            [
                {
                    "self": f"{self._api(version)}/issueType/{type_id}",
                    "id": type_id,
                    "name": name,
                    "subtask": False,
                    "statuses": statuses,
                }
                for type_id, name in self.issue_types.items()
            ]
        )

    async def _priorities(self, request: Request, user: JiraUser | None) -> Response:
        version = self._version(request)
        return JSONResponse([self.priority_json(p[0], version) for p in PRIORITIES])

    async def _priority_search(self, request: Request, user: JiraUser | None) -> Response:
        version = self._version(request)
        start = self._int(request.query_params.get("startAt"), 0, "startAt")
        size = self._int(request.query_params.get("maxResults"), 50, "maxResults")
        ids = set(request.query_params.getlist("id"))
        name = (request.query_params.get("priorityName") or "").casefold()
        values = [
            self.priority_json(p[0], version)
            for p in PRIORITIES
            if (not ids or p[0] in ids) and name in p[1].casefold()
        ]
        page = values[start : start + size]
        return JSONResponse(
            {
                "self": f"{self._api(version)}/priority/search?maxResults={size}&startAt={start}",
                "maxResults": size,
                "startAt": start,
                "total": len(values),
                "isLast": start + len(page) >= len(values),
                "values": page,
            }
        )

    async def _fields(self, request: Request, user: JiraUser | None) -> Response:
        def system(field_id: str, name: str, kind: str) -> dict[str, Any]:
            return {
                "id": field_id,
                "key": field_id,
                "name": name,
                "custom": False,
                "orderable": True,
                "navigable": True,
                "searchable": True,
                "clauseNames": [field_id],
                "schema": {"type": kind, "system": field_id},
            }

        number = int(self.severity_field.split("_")[1])
        fields = [
            system("summary", "Summary", "string"),
            system("description", "Description", "string"),
            system("issuetype", "Issue Type", "issuetype"),
            system("project", "Project", "project"),
            system("priority", "Priority", "priority"),
            system("status", "Status", "status"),
            system("assignee", "Assignee", "user"),
            system("reporter", "Reporter", "user"),
            system("labels", "Labels", "array"),
            system("created", "Created", "datetime"),
            system("updated", "Updated", "datetime"),
            system("resolution", "Resolution", "resolution"),
            system("comment", "Comment", "comments-page"),
            {
                "id": self.severity_field,
                "key": self.severity_field,
                "name": "Severity",
                "untranslatedName": "Severity",
                "custom": True,
                "orderable": True,
                "navigable": True,
                "searchable": True,
                "clauseNames": [f"cf[{number}]", "Severity", "Severity[Dropdown]"],
                "schema": {
                    "type": "option",
                    "custom": "com.atlassian.jira.plugin.system.customfieldtypes:select",
                    "customId": number,
                },
            },
        ]
        return JSONResponse(fields)

    async def _my_permissions(self, request: Request, user: JiraUser | None) -> Response:
        assert user is not None
        wanted = [
            p.strip()
            for value in request.query_params.getlist("permissions")
            for p in value.split(",")
            if p.strip()
        ]
        if not wanted:
            raise Refusal(400, ["The 'permissions' query parameter is required."])
        unknown = [p for p in wanted if p not in PERMISSIONS]
        if unknown:
            raise Refusal(400, [f"Invalid permission key(s): {', '.join(unknown)}"])
        project = request.query_params.get("projectKey") or request.query_params.get("projectId")
        if project:
            self._check_project(project)
        return JSONResponse(
            {
                "permissions": {
                    key: {
                        "id": str(10 + n),
                        "key": key,
                        "name": key.replace("_", " ").title(),
                        "type": "PROJECT",
                        "description": PERMISSIONS[key],
                        "havePermission": self._can(user, key),
                    }
                    for n, key in enumerate(wanted)
                }
            }
        )

    async def _create(self, request: Request, user: JiraUser | None) -> Response:
        assert user is not None
        version = self._version(request)
        body = await self._body(request)
        fields = body.get("fields") or {}
        update = body.get("update") or {}
        if not isinstance(fields, dict) or not isinstance(update, dict):
            raise Refusal(400, ["'fields' and 'update' must be objects."])
        errors = {}
        if "project" not in fields:
            errors["project"] = "Specify a valid project ID or key"
        if "issuetype" not in fields:
            errors["issuetype"] = "Specify an issue type"
        if "summary" not in fields and "summary" not in update:
            errors["summary"] = "You must specify a summary of the issue."
        if errors:
            raise Refusal(400, [], errors)
        changes, comments = self._read_fields(fields, update, version, None)
        if not self._can(user, "CREATE_ISSUES"):
            raise Refusal(
                400, [], {"project": "You do not have permission to create issues in this project."}
            )
        self._next_issue += 1
        number = self._next_number
        self._next_number += 1
        now = self._now()
        issue = SimIssue(
            id=self._next_issue,
            key=f"{self.project_key}-{number}",
            issuetype=changes["issuetype"],
            summary=changes["summary"],
            description=changes.get("description"),
            priority=changes.get("priority", DEFAULT_PRIORITY),
            status=self.initial_status,
            assignee=changes.get("assignee"),
            reporter=changes.get("reporter", user.account_id),
            labels=changes.get("labels", []),
            severity=changes.get("severity"),
            resolution=None,
            created=now,
            updated=now,
            status_changed=now,
        )
        self.issues[issue.id] = issue
        self._keys[issue.key] = issue.id
        self._indexed(issue)
        self._event("jira:issue_created", issue, user, None, "issue_created")
        for comment in comments:
            self._add_comment(issue, user, self._comment_body(comment, version), True)
        return JSONResponse(
            {
                "id": str(issue.id),
                "key": issue.key,
                "self": f"{self._api(version)}/issue/{issue.id}",
            },
            status_code=201,
        )

    async def _issue_route(self, request: Request, user: JiraUser | None) -> Response:
        assert user is not None
        version = self._version(request)
        issue = self._issue(request.path_params["issue"], user)
        if request.method == "GET":
            selected = self._selected(request.query_params.getlist("fields"), None)
            body = self.issue_json(issue, version, user, selected)
            expand = request.query_params.get("expand") or ""
            if "transitions" in expand.split(","):
                body["transitions"] = [
                    self.transition_json(t, version) for t in self.transitions_from(issue, user)
                ]
            return JSONResponse(body)
        if request.method == "DELETE":
            if not self._can(user, "DELETE_ISSUES"):
                raise Refusal(403, ["You do not have permission to delete issues in this project."])
            del self.issues[issue.id]
            self._keys.pop(issue.key, None)
            self._index.pop(issue.id, None)
            self._writes += 1
            self._event("jira:issue_deleted", issue, user, None, "issue_deleted")
            return Response(status_code=204)
        body = await self._body(request)
        fields = body.get("fields") or {}
        update = body.get("update") or {}
        if not isinstance(fields, dict) or not isinstance(update, dict):
            raise Refusal(400, ["'fields' and 'update' must be objects."])
        if "status" in fields or "status" in update:
            raise Refusal(
                400,
                [],
                {"status": _cannot_set("status")},
            )
        changes, comments = self._read_fields(fields, update, version, issue)
        if not self._can(user, "EDIT_ISSUES"):
            raise Refusal(403, ["You do not have permission to edit issues in this project."])
        before = self._copy(issue)
        for name, value in changes.items():
            setattr(issue, name, value)
        assigned_only = set(changes) == {"assignee"}
        self._committed(before, issue, user, "issue_assigned" if assigned_only else "issue_updated")
        for comment in comments:
            self._add_comment(issue, user, self._comment_body(comment, version), True)
        if request.query_params.get("returnIssue") == "true":
            return JSONResponse(self.issue_json(issue, version, user))
        return Response(status_code=204)

    async def _assign(self, request: Request, user: JiraUser | None) -> Response:
        assert user is not None
        issue = self._issue(request.path_params["issue"], user)
        body = await self._body(request)
        errors: dict[str, str] = {}
        account = self._read_user(body, "assignee", errors)
        if errors:
            raise Refusal(400, [], errors)
        if not self._can(user, "ASSIGN_ISSUES"):
            raise Refusal(403, ["You do not have permission to assign issues."])
        before = self._copy(issue)
        issue.assignee = account
        self._committed(before, issue, user, "issue_assigned")
        return Response(status_code=204)

    async def _transitions(self, request: Request, user: JiraUser | None) -> Response:
        assert user is not None
        version = self._version(request)
        issue = self._issue(request.path_params["issue"], user)
        offered = self.transitions_from(issue, user)
        if request.method == "GET":
            wanted = request.query_params.get("transitionId")
            shown = [t for t in offered if wanted in (None, t.id)]
            return JSONResponse(
                {
                    "expand": "transitions",
                    "transitions": [self.transition_json(t, version) for t in shown],
                }
            )
        body = await self._body(request)
        transition = body.get("transition")
        wanted_id = str(transition.get("id", "")) if isinstance(transition, dict) else ""
        chosen = next((t for t in offered if t.id == wanted_id), None)
        if chosen is None:
            raise Refusal(400, [f"Transition id '{wanted_id}' is not valid for this issue."])
        fields = body.get("fields") or {}
        update = body.get("update") or {}
        if not isinstance(fields, dict) or not isinstance(update, dict):
            raise Refusal(400, ["'fields' and 'update' must be objects."])
        changes, comments = self._read_fields(fields, update, version, issue)
        before = self._copy(issue)
        for name, value in changes.items():
            setattr(issue, name, value)
        target = self._status(chosen.target)
        issue.status = target.name
        issue.status_changed = self._now()
        if target.category == "done":
            if issue.resolution is None:
                issue.resolution = dict(RESOLUTION_DONE)
            issue.resolutiondate = issue.resolutiondate or self._now()
        else:
            issue.resolution = None
            issue.resolutiondate = None
        self._committed(before, issue, user, "issue_generic")
        for comment in comments:
            self._add_comment(issue, user, self._comment_body(comment, version), True)
        return Response(status_code=204)

    async def _comments(self, request: Request, user: JiraUser | None) -> Response:
        assert user is not None
        version = self._version(request)
        issue = self._issue(request.path_params["issue"], user)
        if request.method == "GET":
            start = self._int(request.query_params.get("startAt"), 0, "startAt")
            size = min(self._int(request.query_params.get("maxResults"), 100, "maxResults"), 5000)
            ordered = list(issue.comments)
            if (request.query_params.get("orderBy") or "").startswith("-"):
                ordered.reverse()
            page = ordered[start : start + size]
            return JSONResponse(
                {
                    "comments": [self.comment_json(issue, c, version, user) for c in page],
                    "maxResults": size,
                    "total": len(ordered),
                    "startAt": start,
                }
            )
        if not self._can(user, "ADD_COMMENTS"):
            raise Refusal(403, ["You do not have the permission to comment on this issue."])
        body = await self._body(request)
        document = self._comment_body(body.get("body"), version)
        internal = any(
            isinstance(p, dict)
            and p.get("key") == "sd.public.comment"
            and isinstance(p.get("value"), dict)
            and p["value"].get("internal") is True
            for p in body.get("properties") or []
        )
        comment = self._add_comment(issue, user, document, not internal)
        return JSONResponse(self.comment_json(issue, comment, version, user), status_code=201)

    async def _jsm_comment(self, request: Request, user: JiraUser | None) -> Response:
        """JSM's comment API; its errors have JSM's own shape (``errorMessage``)."""
        assert user is not None
        try:
            return await self._jsm_add_comment(request, user)
        except Refusal as refusal:
            message = "; ".join([*refusal.messages, *refusal.errors.values()])
            return JSONResponse(
                {"errorMessage": message, "i18nErrorMessage": {"i18nKey": "", "parameters": []}},
                status_code=refusal.status,
            )

    async def _jsm_add_comment(self, request: Request, user: JiraUser) -> Response:
        ref = request.path_params["issue"]
        try:
            issue = self._issue(ref, user)
        except Refusal:
            issue = None
        if issue is None or self.project_type != "service_desk":
            raise Refusal(404, [f"The request '{ref}' could not be found."])
        body = await self._body(request)
        text = body.get("body")
        public = body.get("public", True)
        if not isinstance(text, str) or not text.strip():
            raise Refusal(400, ["The comment body must not be empty."])
        if not isinstance(public, bool):
            raise Refusal(400, ["'public' must be true or false."])
        if not self._can(user, "ADD_COMMENTS") or (
            not public and not self._can(user, "SERVICEDESK_AGENT")
        ):
            raise Refusal(403, ["You do not have permission to comment on this request."])
        comment = self._add_comment(issue, user, text_to_adf(text), public)
        author = self.user_by_id(comment.author)
        assert author is not None
        created = self._time(comment.created, user) or ""
        return JSONResponse(
            {
                "_expands": ["attachment", "renderedBody"],
                "id": str(comment.id),
                "body": text,
                "public": public,
                "author": {
                    "accountId": author.account_id,
                    **({"emailAddress": author.email} if author.email_visible else {}),
                    "displayName": author.display_name,
                    "active": True,
                    "timeZone": author.time_zone or self.time_zone,
                    "_links": {
                        "jiraRest": f"{self._api('2')}/user?accountId={author.account_id}",
                        "self": f"{self._api('2')}/user?accountId={author.account_id}",
                    },
                },
                "created": {
                    "iso8601": created[:19] + created[23:],
                    "jira": created,
                    "friendly": "Today " + comment.created.strftime("%-I:%M %p"),
                    "epochMillis": int(comment.created.timestamp() * 1000),
                },
                "_links": {
                    "self": f"{self.base_url}/rest/servicedeskapi/request/{issue.id}"
                    f"/comment/{comment.id}"
                },
            },
            status_code=201,
        )

    async def _legacy_search(self, request: Request, user: JiraUser | None) -> Response:
        raise Refusal(410, [SEARCH_REMOVED])

    async def _search(self, request: Request, user: JiraUser | None) -> Response:
        assert user is not None
        version = self._version(request)
        if request.method == "POST":
            body = await self._body(request)
            jql = str(body.get("jql") or "")
            token = body.get("nextPageToken")
            size_value: Any = body.get("maxResults")
            raw_fields = body.get("fields") or []
            fields = [raw_fields] if isinstance(raw_fields, str) else [str(f) for f in raw_fields]
            reconcile_raw: list[Any] = list(body.get("reconcileIssues") or [])
        else:
            params = request.query_params
            jql = params.get("jql") or ""
            token = params.get("nextPageToken")
            size_value = params.get("maxResults")
            fields = params.getlist("fields")
            reconcile_raw = [
                r for value in params.getlist("reconcileIssues") for r in value.split(",") if r
            ]
        try:
            reconcile = {int(r) for r in reconcile_raw}
        except (TypeError, ValueError):
            raise Refusal(400, ["reconcileIssues takes issue ids (numbers)."]) from None
        if len(reconcile) > RECONCILE_MAX:
            raise Refusal(400, [f"reconcileIssues accepts at most {RECONCILE_MAX} issue ids."])
        try:
            predicate, order = JqlParser(
                jql, self.known_field, lambda name, value: self.validate_jql(name, value, user)
            ).parse()
        except JqlError as exc:
            raise Refusal(400, exc.messages) from None
        if predicate is None:
            raise Refusal(400, [UNBOUNDED_JQL])
        unsortable = [name for name, _ in order if name not in _SORTABLE]
        if unsortable:  # refused even when nothing matches
            raise Refusal(400, [f"Not able to sort using field '{unsortable[0]}'."])
        selected = self._selected(fields, set())
        id_only = not selected
        limit = SEARCH_MAX_IDS if id_only else SEARCH_MAX_WITH_FIELDS
        requested = self._int(None if size_value is None else str(size_value), 50, "maxResults")
        size = max(0, min(requested, limit))
        ctx = JqlContext(self, user, self.clock.now().astimezone(UTC), self._zone(user))
        # The result depends on the time only through relative dates in the JQL and through
        # writes not yet visible to search; otherwise every page of a listing reuses it.
        settled = self._last_indexed is None or ctx.now - self._last_indexed > timedelta(
            seconds=self.search_lag
        )
        timeless = settled and "now(" not in jql.lower() and not _RELATIVE.search(jql)
        cache_key = (
            jql,
            frozenset(reconcile),
            user.account_id,
            self._writes,
            None if timeless else ctx.now,
            self.search_lag,
        )
        matched = self._matches.get(cache_key)
        if matched is None:
            allowed = self._can(user, "BROWSE_PROJECTS")
            candidates = self._searchable(reconcile) if allowed else []
            try:
                matched = [issue for issue in candidates if predicate(issue, ctx)]
                for name, descending in reversed(order or [("key", True)]):
                    matched.sort(key=lambda i: self._sort_key(i, name, ctx), reverse=descending)
            except JqlError as exc:
                raise Refusal(400, exc.messages) from None
            self._matches = {cache_key: matched}
        fingerprint = hashlib.sha1(jql.encode()).hexdigest()[:16]
        offset = 0
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(str(token).encode()))
                if state["q"] != fingerprint:
                    raise ValueError
                offset = int(state["o"])
            except (ValueError, KeyError, TypeError):
                raise Refusal(400, ["The nextPageToken is invalid or has expired."]) from None
        page = matched[offset : offset + size]
        issues: list[dict[str, Any]] = []
        for issue in page:
            if id_only:
                issues.append({"id": str(issue.id)})
            else:
                issues.append(self.issue_json(issue, version, user, selected))
        answer: dict[str, Any] = {"issues": issues}
        end = offset + len(page)
        if end < len(matched) and size:
            state = json.dumps({"o": end, "q": fingerprint}).encode()
            answer["nextPageToken"] = base64.urlsafe_b64encode(state).decode()
            answer["isLast"] = False
        else:
            answer["isLast"] = True
        return JSONResponse(answer)

    def _sort_key(self, issue: SimIssue, name: str, ctx: JqlContext) -> Any:
        """What ``ORDER BY name`` sorts on (one of _SORTABLE); ties are left to the next
        ORDER BY field, then to the issue id."""
        if name in ("key", "issuekey", "id"):
            return issue.id
        if name in ("updated", "created", "resolved", "resolutiondate"):
            values = self.field_values(issue, name, ctx)
            return values[0] if values else datetime.min.replace(tzinfo=UTC)
        if name == "priority":
            return int(issue.priority)
        if name == "status":
            return [s.name for s in self.statuses].index(issue.status)
        if name == "summary":
            return issue.summary.casefold()
        raise JqlError(f"Not able to sort using field '{name}'.")
