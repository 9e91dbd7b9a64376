"""Jira Cloud REST v3 / Jira Service Management: field names and value maps (SPEC §3), and the
connector that syncs incidents with issues of one project.

What a user notices:

- Issues are found by a label holding the correlation key. Jira's JQL search is eventually
  consistent, so a look-up of a key is repeated over a few seconds before it answers "none",
  and searches name the issues this connector wrote recently in ``reconcileIssues`` (Jira's
  read-after-write mechanism, at most 50 ids).
- Descriptions and public comments travel as Atlassian Document Format. Text is compared as
  paragraphs separated by a blank line, lines inside a paragraph by a newline, trailing
  whitespace dropped (``normalise_text``): what Jira gives back is what was sent.
- Status changes walk the shortest path of transitions. The workflow graph is learned from the
  transitions Jira offers (``GET …/transitions``) in each status, because reading the workflow
  itself needs the *Administer Jira* global permission, which an integration account should not
  hold, and because the offered transitions already honour the workflow's conditions for this
  account. Until a status has been seen, the walk explores towards the nearest unseen status
  (preferring statuses that are not "done"); once learned, paths are shortest.
- The scope is the project, its incident issue type and the optional JQL of the integration.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from im.clock import format_time
from im.connectors import http
from im.connectors.base import (
    Check,
    ConnectorConfig,
    ExternalRecord,
    JournalEntry,
    WebhookEvent,
    WebhookRequest,
)
from im.errors import SignatureError
from im.security import signatures

if TYPE_CHECKING:
    import httpx

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
# platform field -> its outbound value map (im.config.mapping adds the user's overrides)
VALUE_MAPS: dict[str, dict[str, str]] = {
    "severity": SEVERITY_OUT,
    "priority": PRIORITY_OUT,
    "status": STATUS_OUT,
}
CREATE_ONLY: frozenset[str] = frozenset()

# Inbound only, after the (possibly overridden) outbound maps: names older priority schemes and
# the JSM incident workflows use. Matched case-insensitively.
PRIORITY_IN: dict[str, str] = {
    "Blocker": "p1",
    "Critical": "p1",
    "Major": "p2",
    "Minor": "p4",
    "Trivial": "p5",
}
SEVERITY_IN: dict[str, str] = {
    "Sev1": "sev1",
    "Sev2": "sev2",
    "Sev3": "sev3",
    "Sev4": "sev4",
    "Sev5": "sev5",
}
STATUS_IN: dict[str, str] = {
    "To Do": "triggered",
    "Reopened": "triggered",
    "Work in progress": "acknowledged",
    "Pending": "acknowledged",
    "Done": "resolved",
    "Completed": "resolved",
    "Canceled": "closed",
    "Cancelled": "closed",
}

API = "/rest/api/3"
SERVICE_DESK_API = "/rest/servicedeskapi"
WEBHOOK_EVENTS = (
    "jira:issue_created",
    "jira:issue_updated",
    "jira:issue_deleted",
    "comment_created",
)
# Jira's search index lags behind writes: look a key up again after these waits (seconds)
SEARCH_RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0)
DEFAULT_PAGE_SIZE = 50  # search/jql's default maxResults
COMMENT_PAGE_SIZE = 100  # getComments' default maxResults
RECONCILE_LIMIT = 50  # reconcileIssues accepts at most 50 ids
ID_BATCH = 100  # issue ids per ``id in (…)`` search of in_scope
# JQL date literals have minute precision: list changes from a minute earlier than asked
JQL_OVERLAP = timedelta(minutes=1)
# The full listing's order: creation (which no edit changes) with the key breaking ties, so
# that paging neither skips nor repeats an issue edited meanwhile (by ``updated`` it would).
CREATION_ORDER = "ORDER BY created ASC, key ASC"
MAX_TRANSITION_STEPS = 12
REQUIRED_PERMISSIONS: dict[str, str] = {
    "BROWSE_PROJECTS": "read issues",
    "CREATE_ISSUES": "create issues",
    "EDIT_ISSUES": "edit issues",
    "TRANSITION_ISSUES": "change status",
    "ASSIGN_ISSUES": "assign issues",
    "ADD_COMMENTS": "add comments",
}
SECRET_PLACEHOLDER = "<webhook-secret>"
_CORRELATION_PREFIX = "im:"
# Jira's refusal of an ``id in (…)`` naming an issue that is gone or hidden from the account
_ABSENT_ID = re.compile(r"A value with ID '(\d+)' does not exist for the field")


# -- text and ADF --------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """Text as Jira gives it back: paragraphs separated by one blank line, lines inside a
    paragraph by a newline, trailing whitespace of every line and around the whole dropped."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    paragraphs: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return "\n\n".join("\n".join(p) for p in paragraphs).strip()


def text_to_adf(text: str) -> dict[str, Any] | None:
    """An ADF document of paragraphs (hard breaks between lines); None for empty text."""
    normalised = normalise_text(text)
    if not normalised:
        return None
    content = []
    for paragraph in normalised.split("\n\n"):
        nodes: list[dict[str, Any]] = []
        for number, line in enumerate(paragraph.split("\n")):
            if number:
                nodes.append({"type": "hardBreak"})
            nodes.append({"type": "text", "text": line})
        content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


def adf_to_text(document: Any) -> str:
    """Plain text of an ADF document (or of a v2 string), normalised. Lists become ``- item``
    lines, mentions and emoji their text, cards their URL."""
    if document is None:
        return ""
    if isinstance(document, str):
        return normalise_text(document)
    if not isinstance(document, dict):
        return ""
    return normalise_text("\n\n".join(_blocks(document)))


def _blocks(node: Mapping[str, Any]) -> list[str]:
    kind = node.get("type")
    children = [c for c in node.get("content") or [] if isinstance(c, dict)]
    if kind in ("paragraph", "heading", "codeBlock"):
        return ["".join(_inline(c) for c in children)]
    if kind in ("bulletList", "orderedList"):
        items = []
        for number, item in enumerate(children, start=1):
            marker = f"{number}." if kind == "orderedList" else "-"
            text = "\n".join(b for c in item.get("content") or [] for b in _blocks(c))
            items.append(f"{marker} {text}")
        return ["\n".join(items)]
    if kind == "rule":
        return ["---"]
    if kind in ("text", "hardBreak", "mention", "emoji", "inlineCard", "date", "status"):
        return ["".join(_inline(node))]
    if kind == "tableRow":
        return [" | ".join("\n".join(_blocks(c)) for c in children)]
    if kind == "table":
        return ["\n".join(b for c in children for b in _blocks(c))]
    blocks: list[str] = []
    for child in children:
        blocks.extend(_blocks(child))
    return blocks


def _inline(node: Mapping[str, Any]) -> str:
    kind = node.get("type")
    attrs = _obj(node.get("attrs"))
    if kind == "text":
        return str(node.get("text") or "")
    if kind == "hardBreak":
        return "\n"
    if kind in ("mention", "status"):
        return str(attrs.get("text") or "")
    if kind == "emoji":
        return str(attrs.get("text") or attrs.get("shortName") or "")
    if kind == "inlineCard":
        return str(attrs.get("url") or "")
    if kind == "date":
        return str(attrs.get("timestamp") or "")
    return "".join(_inline(c) for c in node.get("content") or [] if isinstance(c, dict))


# -- times, JQL ----------------------------------------------------------------------------------


def parse_jira_time(text: str) -> datetime:
    """``2024-10-08T16:38:03.790+0800`` (or any ISO-8601 time with an offset) as UTC.
    Raises ValueError."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def jira_version(text: str) -> str:
    """The record version: ``fields.updated`` as UTC ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return format_time(parse_jira_time(text))


def jql_string(value: str) -> str:
    """A JQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def error_text(body: Any) -> str:
    """Jira's error text: ErrorCollection ``errorMessages`` and field ``errors``, JSM's
    ``errorMessage``, or the API gateway's ``message``."""
    if isinstance(body, str):
        return body
    if not isinstance(body, dict):
        return ""
    parts = [str(m) for m in body.get("errorMessages") or []]
    errors = body.get("errors")
    if isinstance(errors, dict):
        parts.extend(f"{name}: {message}" for name, message in errors.items())
    for key in ("errorMessage", "message"):  # JSM's shape; the API gateway's
        if not parts and body.get(key):
            parts.append(str(body[key]))
    return "; ".join(parts)


@dataclass(frozen=True)
class Transition:
    """One transition offered from a status: its id, name and target status."""

    id: str
    name: str
    to: str
    to_category: str = ""


def _key(name: str) -> str:
    return name.strip().casefold()


# -- the connector -------------------------------------------------------------------------------


class JiraConnector:
    """Issues of one Jira project as incidents. Holds per-instance caches (users, the account,
    the learned workflow graph); makes no network call until asked."""

    kind = TYPE
    updates_description = True
    journals = frozenset({"work_notes", "comments"})
    create_steps = frozenset({"assigned_to", "status"})  # an assignee call, then transitions

    def __init__(self, config: ConnectorConfig) -> None:
        self._config = config
        settings = config.settings
        self._email = settings.get("email", "")
        self._project = settings.get("project", "")
        self._issue_type = settings.get("issue_type") or DEFAULT_ISSUE_TYPE
        self._scope_jql = _strip_order_by(settings.get("jql") or "")
        self._client_key = settings.get("client_key") or None
        self._client: httpx.Client = http.make_client(
            config.url,
            auth=(self._email, config.secrets.get("api_token", "")),
            ca_bundle=config.ca_bundle,
            timeout=config.timeout,
            transport=config.transport,
        )
        self._page_size = config.page_size or DEFAULT_PAGE_SIZE
        self._inbound = {
            "priority": _inverse(self._values("priority"), PRIORITY_IN),
            "severity": _inverse(self._values("severity"), SEVERITY_IN),
            "status": _inverse(self._values("status"), STATUS_IN),
        }
        self._account_by_email: dict[str, str | None] = {}
        self._email_by_account: dict[str, str | None] = {}
        self._myself: dict[str, Any] | None = None
        self._statuses: dict[str, str] | None = None  # status name key -> category key
        self._graph: dict[str, list[Transition]] = {}  # status name key -> offered transitions
        self._recent: deque[str] = deque(maxlen=RECONCILE_LIMIT)

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return http.send(self._client, method, path, error_text, **kwargs)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise http.PermanentError(
                f"{method} {path.split('?')[0]}: Jira answered {response.status_code} "
                "with a body that is not JSON"
            ) from None

    def _values(self, field: str) -> Mapping[str, str]:
        mapping = self._config.fields.get(field)
        return mapping.values if mapping is not None else {}

    def _external(self, field: str) -> str | None:
        mapping = self._config.fields.get(field)
        return mapping.external_field if mapping is not None else None

    def _issue_fields(self) -> list[str]:
        names = ["summary", "description", "priority", "status", "assignee", "labels"]
        names += ["updated", "created", "issuetype", "project"]
        for field in ("title", "description", "severity"):
            external = self._external(field)
            if external and external not in names:
                names.append(external)
        return names

    def _issue_path(self, external_id: str) -> str:
        return f"{API}/issue/{quote(external_id, safe='')}"

    def _remember(self, issue_id: str) -> None:
        if issue_id in self._recent:
            self._recent.remove(issue_id)
        if issue_id.isdigit():
            self._recent.append(issue_id)

    def _myself_json(self) -> dict[str, Any]:
        if self._myself is None:
            body = self._json("GET", f"{API}/myself")
            if not isinstance(body, dict) or not body.get("accountId"):
                raise http.PermanentError("GET /rest/api/3/myself: no accountId in the answer")
            self._myself = body
        return self._myself

    def _time_zone(self) -> ZoneInfo:
        name = str(self._myself_json().get("timeZone") or "UTC")
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo("UTC")

    # -- values ----------------------------------------------------------------------------------

    def normalise(self, field: str, value: str) -> str:
        """What a later read of ``value`` returns (see the module docstring)."""
        if field == "title":
            return value.strip()
        if field in ("description", "work_notes", "comments"):
            return normalise_text(value)
        if field in self._inbound:
            external = self._values(field).get(value)
            if external is None:
                return value
            return self._inbound[field].get(_key(external), value)
        if field == "assigned_to":
            return value.strip().lower()
        return value

    def _out(self, field: str, value: str) -> str:
        external = self._values(field).get(value)
        if external is None:
            raise http.PermanentError(
                f"{field} {value!r} has no Jira value: map it with "
                f"`im integration field-mapping set NAME {field} --value {value}=...`"
            )
        return external

    def _in(self, field: str, external: str, warnings: list[str]) -> str | None:
        value = self._inbound[field].get(_key(external))
        if value is None:
            warnings.append(f"{field}: Jira value {external!r} has no platform value")
        return value

    def _outbound(self, values: Mapping[str, str]) -> dict[str, Any]:
        """Jira ``fields`` for a create or an edit (status and journals are not fields)."""
        fields: dict[str, Any] = {}
        for field, value in values.items():
            external = self._external(field)
            if external is None:
                continue
            if field == "title":
                fields[external] = value.strip()
            elif field == "description":
                fields[external] = text_to_adf(value)
            elif field == "priority":
                fields["priority"] = {"name": self._out(field, value)}
            elif field == "severity":
                fields[external] = {"value": self._out(field, value)} if value else None
            elif field == "assigned_to":
                fields["assignee"] = self._assignee(value)
        return fields

    def _assignee(self, email: str) -> dict[str, str] | None:
        if not email.strip():
            return None
        account = self.resolve_user(email)
        if account is None:
            raise http.PermanentError(
                f"no Jira user has the email {email.strip().lower()}: the issue cannot be "
                "assigned to them",
            )
        return {"accountId": account}

    def _record(self, issue: Mapping[str, Any]) -> ExternalRecord:
        """The normalised record of an issue in the REST v3 (or v2) representation."""
        fields = issue.get("fields")
        if not isinstance(fields, dict) or "id" not in issue:
            raise http.PermanentError("Jira answered an issue without its fields")
        values: dict[str, str] = {}
        warnings: list[str] = []
        for field in ("title", "description"):
            external = self._external(field)
            if external is not None:
                raw = fields.get(external)
                values[field] = str(raw or "").strip() if field == "title" else adf_to_text(raw)
        priority = fields.get("priority")
        if self._external("priority") and isinstance(priority, dict) and priority.get("name"):
            mapped = self._in("priority", str(priority["name"]), warnings)
            if mapped is not None:
                values["priority"] = mapped
        status = fields.get("status")
        if self._external("status") and isinstance(status, dict) and status.get("name"):
            mapped = self._in("status", str(status["name"]), warnings)
            if mapped is not None:
                values["status"] = mapped
        severity_field = self._external("severity")
        if severity_field:
            option = fields.get(severity_field)
            if isinstance(option, dict) and option.get("value"):
                mapped = self._in("severity", str(option["value"]), warnings)
                if mapped is not None:
                    values["severity"] = mapped
        if self._external("assigned_to"):
            assignee = fields.get("assignee")
            if not isinstance(assignee, dict) or not assignee.get("accountId"):
                values["assigned_to"] = ""
            else:
                email = self._email_of(assignee)
                if email is None:
                    warnings.append(
                        "assigned_to: the assignee's email is hidden by their Atlassian profile"
                    )
                else:
                    values["assigned_to"] = email
        updated = str(fields.get("updated") or fields.get("created") or "")
        version = jira_version(updated) if updated else ""
        created = str(fields.get("created") or "")
        key = str(issue.get("key") or issue["id"])
        return ExternalRecord(
            id=str(issue["id"]),
            key=key,
            url=f"{self._config.url.rstrip('/')}/browse/{key}",
            version=version,
            updated_at=version,
            fields=values,
            created_at=jira_version(created) if created else "",
            correlation_key=_correlation(fields.get("labels")),
            warnings=tuple(warnings),
        )

    # -- users -----------------------------------------------------------------------------------

    def resolve_user(self, email: str) -> str | None:
        """The accountId of the user with this email (user search, cached), or None."""
        wanted = email.strip().lower()
        if not wanted:
            return None
        if wanted not in self._account_by_email:
            users = self._json(
                "GET", f"{API}/user/search", params={"query": wanted, "maxResults": 20}
            )
            found: str | None = None
            candidates = [u for u in users or [] if isinstance(u, dict) and u.get("accountId")]
            for user in candidates:
                if str(user.get("emailAddress") or "").lower() == wanted:
                    found = str(user["accountId"])
                    break
            else:
                # a hidden email still matches the query; trust a single such answer
                hidden = [u for u in candidates if not u.get("emailAddress")]
                if len(candidates) == 1 and hidden:
                    found = str(hidden[0]["accountId"])
            self._account_by_email[wanted] = found
            if found is not None:
                self._email_by_account.setdefault(found, wanted)
        return self._account_by_email[wanted]

    def _email_of(self, user: Mapping[str, Any]) -> str | None:
        """The email of a user object (as given, else looked up by accountId, cached)."""
        account = str(user.get("accountId") or "")
        if user.get("emailAddress"):
            email = str(user["emailAddress"]).lower()
            self._email_by_account.setdefault(account, email)
            return email
        return self._email_for(account)

    def _email_for(self, account: str) -> str | None:
        if not account:
            return None
        if account not in self._email_by_account:
            try:
                body = self._json("GET", f"{API}/user", params={"accountId": account})
            except http.RecordNotFoundError:
                body = {}
            email = str(body.get("emailAddress") or "").lower() or None
            self._email_by_account[account] = email
            if email is not None:
                self._account_by_email.setdefault(email, account)
        return self._email_by_account[account]

    # -- records ---------------------------------------------------------------------------------

    def get(self, external_id: str) -> ExternalRecord:
        """The issue now. Raises RecordNotFoundError when it is gone (or hidden from us)."""
        body = self._json(
            "GET", self._issue_path(external_id), params={"fields": ",".join(self._issue_fields())}
        )
        return self._record(body)

    def create(self, values: Mapping[str, str], correlation_key: str) -> ExternalRecord:
        """Create the issue (the correlation key as a label), then assign it and move it to the
        mapped status when that is not the workflow's first, and return it as Jira stores it.

        The create is the first request, so a failure before it created nothing and a lost
        answer is found again by ``find_by_correlation``. The assignee needs a user search, so
        it follows the create; what cannot be applied after the issue exists (an unknown user,
        no transition path) comes back as a warning on the record, never as a failed create,
        and any other failure after the create is raised as RequestTimeoutError: the create
        is in doubt and must be looked up before it is sent again. Raises PermanentError for
        values with no Jira value (nothing is created then)."""
        later = {"assigned_to", "status"}
        fields: dict[str, Any] = {
            "project": {"key": self._project},
            "issuetype": {"name": self._issue_type},
            "labels": [correlation_key],
        }
        early = {k: v for k, v in values.items() if k not in later}
        fields.update({k: v for k, v in self._outbound(early).items() if v is not None})
        status = values.get("status") if self._external("status") else None
        target = self._out("status", status) if status else None
        created = self._json("POST", f"{API}/issue", json={"fields": fields})
        issue_id = str(created["id"])
        self._remember(issue_id)
        try:
            return self._finish_create(issue_id, values, status, target)
        except http.ConnectorError as exc:
            # the issue exists: whoever retries must look the key up, not create it again
            raise http.RequestTimeoutError(
                f"created issue {created.get('key', issue_id)}, then {exc.message}; the create "
                "is in doubt: look the correlation key up before creating again"
            ) from exc

    def _finish_create(
        self, issue_id: str, values: Mapping[str, str], status: str | None, target: str | None
    ) -> ExternalRecord:
        warnings: list[str] = []
        assignee = values.get("assigned_to", "")
        if assignee.strip() and self._external("assigned_to"):
            try:
                self._send(
                    "PUT",
                    self._issue_path(issue_id),
                    json={"fields": {"assignee": self._assignee(assignee)}},
                )
            except http.PermanentError as exc:
                warnings.append(f"assigned_to: {exc.message}")
        record = self.get(issue_id)
        if status and target and record.fields.get("status") != status:
            try:
                self._transition(issue_id, target)
            except http.PermanentError as exc:
                warnings.append(f"status: {exc.message}")
            record = self.get(issue_id)
        if warnings:
            record = dataclasses.replace(record, warnings=(*record.warnings, *warnings))
        return record

    def find_by_correlation(self, correlation_key: str) -> ExternalRecord | None:
        """Our issue with that label, searched again after each of SEARCH_RETRY_DELAYS."""
        jql = f"project = {jql_string(self._project)} AND labels = {jql_string(correlation_key)}"
        for delay in (0.0, *SEARCH_RETRY_DELAYS):
            if delay:
                self._config.sleep(delay)
            for record in self._search(jql, limit=1):
                if record.correlation_key == correlation_key:
                    return record
        return None

    def update(self, external_id: str, changes: Mapping[str, str]) -> ExternalRecord:
        """Edit the fields (one PUT), then walk the status, then read the issue back. With no
        status to walk, the PUT's answer is the read-back (``returnIssue``): one round trip
        instead of two."""
        fields = self._outbound(changes)
        status = changes.get("status")
        walk = bool(status and self._external("status"))
        if fields and not walk:
            body = self._json(
                "PUT", self._issue_path(external_id), params={"returnIssue": "true"},
                json={"fields": fields},
            )  # fmt: skip
            self._remember(external_id)
            return self._record(body)
        if fields:
            self._send("PUT", self._issue_path(external_id), json={"fields": fields})
        if walk:
            self._transition(external_id, self._out("status", str(status)))
        self._remember(external_id)
        return self.get(external_id)

    def _scope(self) -> str:
        jql = (
            f"project = {jql_string(self._project)} AND issuetype = {jql_string(self._issue_type)}"
        )
        if self._scope_jql:
            jql += f" AND ({self._scope_jql})"
        return jql

    def list_in_scope(self, created_since: datetime | None = None) -> Iterator[ExternalRecord]:
        """Issues in scope created at or after ``created_since`` (from a minute earlier: JQL
        has minute precision), oldest first, the key breaking ties, page by page."""
        jql = self._scope()
        if created_since is not None:
            jql += f" AND {self._jql_since('created', created_since)}"
        return self._search(f"{jql} {CREATION_ORDER}", journal=True)

    def list_changed(self, since: datetime) -> Iterator[ExternalRecord]:
        """Issues in scope updated since ``since`` (from a minute earlier: JQL has minute
        precision)."""
        return self._search(
            f"{self._scope()} AND {self._jql_since('updated', since)} ORDER BY updated ASC"
        )

    def _jql_since(self, field: str, moment: datetime) -> str:
        """``field >= "yyyy-MM-dd HH:mm"``, a minute before ``moment`` in the account's time
        zone (the zone JQL reads date literals in)."""
        local = (moment - JQL_OVERLAP).astimezone(self._time_zone())
        return f'{field} >= "{local:%Y-%m-%d %H:%M}"'

    def in_scope(self, external_ids: Sequence[str]) -> set[str]:
        """The issues among ``external_ids`` that match the scope now: ``<scope> AND id in
        (…)`` per ID_BATCH ids, asking for ids only. Jira refuses a query naming an issue that
        does not exist or that the account cannot see, and names it ("A value with ID '…'
        does not exist for the field 'id'."): such ids are absent, and the query is asked
        again without them (the error text is cut short, so many deleted issues take a few
        more). An id that is not a number names no issue."""
        wanted = [i for i in dict.fromkeys(external_ids) if i.isascii() and i.isdigit()]
        found: set[str] = set()
        for start in range(0, len(wanted), ID_BATCH):
            chunk = wanted[start : start + ID_BATCH]
            while chunk:
                jql = f"{self._scope()} AND id in ({', '.join(chunk)})"
                try:
                    found.update(str(issue.get("id")) for issue in self._found(jql, ["id"]))
                    break
                except http.PermanentError as exc:
                    absent = set(_ABSENT_ID.findall(exc.message)) & set(chunk)
                    if exc.status != 400 or not absent:
                        raise
                    chunk = [i for i in chunk if i not in absent]
        return found & set(wanted)

    def _search(
        self, jql: str, limit: int | None = None, journal: bool = False
    ) -> Iterator[ExternalRecord]:
        """Issues matching ``jql``; with ``journal``, each with its comments when the answer
        holds all of them."""
        fields = self._issue_fields() + (["comment"] if journal else [])
        for issue in self._found(jql, fields, limit):
            record = self._record(issue)
            yield self._with_journal(record, issue) if journal else record

    def _found(
        self, jql: str, fields: list[str], limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The issues matching ``jql`` as search/jql gives them (with ``fields``), page by
        page (``nextPageToken``); with ``limit``, the first page only, at most that many. The
        issues this connector wrote recently are named in ``reconcileIssues``."""
        token: str | None = None
        while True:
            body: dict[str, Any] = {
                "jql": jql,
                "maxResults": min(self._page_size, limit) if limit else self._page_size,
                "fields": fields,
            }
            if self._recent:
                body["reconcileIssues"] = [int(i) for i in self._recent]
            if token:
                body["nextPageToken"] = token
            page = self._json("POST", f"{API}/search/jql", json=body)
            yield from page.get("issues") or []
            token = page.get("nextPageToken")
            if limit or page.get("isLast", not token) or not token:
                return

    # -- status ----------------------------------------------------------------------------------

    def _project_statuses(self) -> dict[str, str]:
        """Status name key -> category key of the project's issue type (cached)."""
        if self._statuses is None:
            types = self._json("GET", f"{API}/project/{quote(self._project, safe='')}/statuses")
            statuses: dict[str, str] = {}
            for issue_type in types:
                if _key(str(issue_type.get("name", ""))) != _key(self._issue_type):
                    continue
                for status in issue_type.get("statuses") or []:
                    category = status.get("statusCategory") or {}
                    statuses[_key(str(status.get("name", "")))] = str(category.get("key", ""))
            self._statuses = statuses
        return self._statuses

    def _offered(self, issue_path: str) -> list[Transition]:
        body = self._json("GET", f"{issue_path}/transitions")
        offered = []
        for item in body.get("transitions") or []:
            to = item.get("to") or {}
            if item.get("isAvailable", True) is False:
                continue
            category = (to.get("statusCategory") or {}).get("key", "")
            offered.append(
                Transition(str(item["id"]), str(item.get("name", "")), str(to["name"]), category)
            )
        return offered

    @staticmethod
    def _passable(transition: Transition, target: str, target_done: bool) -> bool:
        """A walk to a status that is not "done" never passes through one: a done status
        sets a resolution, stops SLAs and tells customers, and may have no way back."""
        return target_done or transition.to_category != "done" or _key(transition.to) == target

    def _path(self, start: str, target: str, target_done: bool = False) -> list[Transition] | None:
        """The shortest known path of transitions (breadth first over the learned graph)."""
        previous: dict[str, tuple[str, Transition] | None] = {_key(start): None}
        queue = deque([_key(start)])
        while queue:
            status = queue.popleft()
            if status == _key(target):
                path: list[Transition] = []
                step = previous[status]
                while step is not None:
                    path.append(step[1])
                    step = previous[step[0]]
                return path[::-1]
            for transition in self._graph.get(status, []):
                following = _key(transition.to)
                if following not in previous and self._passable(
                    transition, _key(target), target_done
                ):
                    previous[following] = (status, transition)
                    queue.append(following)
        return None

    def _explore(
        self, start: str, walked: set[str], target: str = "", target_done: bool = False
    ) -> Transition | None:
        """The first step towards the nearest status whose transitions are not known yet,
        preferring statuses outside the "done" category; None when everything reachable is
        known (so no path exists)."""
        best: tuple[int, int, int, Transition] | None = None
        seen = {_key(start)}
        queue: deque[tuple[str, int, Transition | None]] = deque([(_key(start), 0, None)])
        order = 0
        while queue:
            status, distance, first = queue.popleft()
            for transition in self._graph.get(status, []):
                following = _key(transition.to)
                if following in seen or not self._passable(transition, _key(target), target_done):
                    continue
                seen.add(following)
                step = first or transition
                order += 1
                if following not in self._graph and following not in walked:
                    rank = (distance + 1, int(transition.to_category == "done"), order, step)
                    if best is None or rank[:3] < best[:3]:
                        best = rank
                else:
                    queue.append((following, distance + 1, step))
        return best[3] if best else None

    def _transition(self, external_id: str, target: str) -> None:
        """Move the issue to the status named ``target`` by the shortest path of transitions.
        Raises PermanentError listing the available transitions when there is no path."""
        path = self._issue_path(external_id)
        try:
            statuses = self._project_statuses()
        except http.RecordNotFoundError:  # not this issue's 404: walk without the pre-check
            statuses = {}
        if statuses and _key(target) not in statuses:
            offered = self._offered(path)
            raise http.PermanentError(
                f"{self._issue_type} issues of {self._project} have no status {target!r}; "
                f"available transitions: {_names(offered)}",
                "map the status with `im integration field-mapping set NAME status --value ...`",
            )
        issue = self._json("GET", path, params={"fields": "status"})
        current = str(issue["fields"]["status"]["name"])
        walked = {_key(current)}
        for _ in range(MAX_TRANSITION_STEPS):
            if _key(current) == _key(target):
                return
            offered = self._offered(path)
            self._graph[_key(current)] = offered
            target_done = statuses.get(_key(target)) == "done"
            known = self._path(current, target, target_done)
            step = known[0] if known else self._explore(current, walked, target, target_done)
            if step is None:
                raise http.PermanentError(
                    f"no transition path from {current!r} to {target!r} in "
                    f"{self._project}; available transitions: {_names(offered)}"
                )
            self._send("POST", f"{path}/transitions", json={"transition": {"id": step.id}})
            current = step.to
            walked.add(_key(current))
        raise http.PermanentError(
            f"no transition path to {target!r} found within {MAX_TRANSITION_STEPS} steps; "
            f"the issue is now {current!r}"
        )

    # -- journals --------------------------------------------------------------------------------

    def add_journal(self, external_id: str, field: str, body: str) -> JournalEntry:
        """A work note is a JSM internal comment, a comment a public one (ADF)."""
        if field == "work_notes":
            try:
                answer = self._json(
                    "POST",
                    f"{SERVICE_DESK_API}/request/{quote(external_id, safe='')}/comment",
                    json={"body": normalise_text(body), "public": False},
                )
            except http.RecordNotFoundError:
                # JSM answers 404 for issues outside a service project too: only a missing
                # issue is a missing record
                self._send("GET", self._issue_path(external_id), params={"fields": "project"})
                raise http.PermanentError(
                    f"issue {external_id} is not a Jira Service Management request: internal "
                    "comments (work notes) need a service project"
                ) from None
            # JSM dates are objects: {"iso8601", "jira", "friendly", "epochMillis"}
            created = answer.get("created")
            moment = created.get("jira") or created.get("iso8601") if created else None
        elif field == "comments":
            answer = self._json(
                "POST", f"{self._issue_path(external_id)}/comment", json={"body": text_to_adf(body)}
            )
            moment = answer.get("created")
        else:
            raise http.PermanentError(f"Jira has no journal {field!r}")
        self._remember(external_id)
        author = answer.get("author") or {}
        return JournalEntry(
            vendor_id=str(answer["id"]),
            field=field,
            body=normalise_text(body),
            author=(self._email_of(author) if author else None) or self._email.lower(),
            created_at=jira_version(str(moment)) if moment else "",
        )

    def _journal(self, comment: Mapping[str, Any]) -> JournalEntry:
        public = comment.get("jsdPublic")
        restricted = bool(comment.get("visibility"))
        internal = public is False or (public is None and restricted)
        author = comment.get("author") or {}
        return JournalEntry(
            vendor_id=str(comment["id"]),
            field="work_notes" if internal else "comments",
            body=adf_to_text(comment.get("body")),
            author=(self._email_of(author) or str(author.get("accountId") or "")) if author else "",
            created_at=jira_version(str(comment["created"])) if comment.get("created") else "",
        )

    def _with_journal(self, record: ExternalRecord, issue: Mapping[str, Any]) -> ExternalRecord:
        """The record with the comments its search result carried, when they are all there
        (``total`` says; else ``list_journals`` reads them)."""
        embedded = (issue.get("fields") or {}).get("comment")
        if not isinstance(embedded, dict):
            return dataclasses.replace(record, journal=None)
        comments = embedded.get("comments")
        if not isinstance(comments, list) or int(embedded.get("total") or 0) > len(comments):
            return dataclasses.replace(record, journal=None)
        entries = sorted((self._journal(c) for c in comments), key=lambda e: e.created_at)
        return dataclasses.replace(record, journal=tuple(entries))

    def list_journals(self, external_ids: Sequence[str]) -> dict[str, list[JournalEntry]]:
        """Every comment of each issue, oldest first, [] for an issue without any.

        Per issue, on purpose: Jira has no bulk read of comments by issue (``POST
        /comment/list`` takes comment ids, which we do not know), and the ``comment`` field
        of a search result is not promised to hold every comment (the enhanced search cuts
        other embedded lists, such as the changelog, short) while it makes every page heavy;
        ``GET …/comment`` pages until ``total``, so nothing is missed. A few at once.
        (``list_in_scope`` does ask for the ``comment`` field, and keeps it only when it
        holds all of an issue's comments.)"""
        return http.fetch_each(external_ids, self.list_journal, self._config.concurrency)

    def list_journal(self, external_id: str) -> list[JournalEntry]:
        """Every comment, oldest first, page by page (startAt / maxResults / total)."""
        entries: list[JournalEntry] = []
        start = 0
        size = self._config.page_size or COMMENT_PAGE_SIZE
        while True:
            page = self._json(
                "GET",
                f"{self._issue_path(external_id)}/comment",
                params={"startAt": start, "maxResults": size, "orderBy": "created"},
            )
            comments = page.get("comments") or []
            entries.extend(self._journal(c) for c in comments)
            start += len(comments)
            if not comments or start >= int(page.get("total") or 0):
                return entries

    # -- webhooks --------------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest, secrets: list[str], now: datetime) -> None:
        """Accept a Connect JWT (``Authorization: JWT`` or ``?jwt=``) or an admin webhook's
        ``X-Hub-Signature``. Raises SignatureError. Note: a Connect JWT signs the method, path
        and query (``qsh``), not the body; the X-Hub-Signature signs the body."""
        if not secrets:
            raise SignatureError("the integration has no webhook secret")
        token = signatures.jwt_from_request(request.headers, request.query)
        if token is not None:
            signatures.connect_jwt_verify(
                secrets,
                token,
                self._client_key,
                request.method,
                request.path,
                request.query,
                now,
            )
            return
        header = request.headers.get("x-hub-signature")
        if header:
            signatures.hub_signature_verify(secrets, header, request.body)
            return
        raise SignatureError("neither Authorization: JWT nor X-Hub-Signature is present")

    def malformed(self, payload: Any) -> str | None:
        """What is wrong with an authentic delivery's JSON, without any network call."""
        if not isinstance(payload, dict):
            return "the webhook body is not a JSON object"
        event_type = payload.get("webhookEvent")
        if event_type not in WEBHOOK_EVENTS:
            return None
        issue = payload.get("issue")
        if not isinstance(issue, dict) or not issue.get("id"):
            return f"{event_type} without an issue id"
        if event_type == "comment_created" and not _obj(payload.get("comment")).get("id"):
            return "comment_created without a comment id"
        return None

    def parse_webhook(self, request: WebhookRequest) -> WebhookEvent | None:
        """The event of a ``jira:issue_created``, ``jira:issue_updated``,
        ``jira:issue_deleted`` or ``comment_created`` delivery (REST v2 representation), or
        None for other events and other projects or issue types. Changes come from the
        changelog only; a comment mentioned by an ``issue_updated`` is left to its own
        ``comment_created``, so an entry is never reported twice. Raises MalformedEventError."""
        try:
            payload = signatures.json_body(request.body)
        except ValueError:
            raise http.MalformedEventError("the webhook body is not UTF-8 JSON") from None
        problem = self.malformed(payload)
        if problem:
            raise http.MalformedEventError(problem)
        assert isinstance(payload, dict)  # malformed() said so
        event_type = payload.get("webhookEvent")
        if event_type not in WEBHOOK_EVENTS:
            return None
        issue = payload["issue"]
        fields = _obj(issue.get("fields"))
        project = _obj(fields.get("project"))
        issue_type = _obj(fields.get("issuetype"))
        if (project and _key(str(project.get("key", ""))) != _key(self._project)) or (
            issue_type and _key(str(issue_type.get("name", ""))) != _key(self._issue_type)
        ):
            return None  # outside the scope: another project or issue type
        comment = _obj(payload.get("comment")) if event_type == "comment_created" else None
        changelog = _obj(payload.get("changelog"))
        try:
            event_time = _event_time(payload, fields, comment)
            updated = fields.get("updated") or (comment or {}).get("updated")
            version = jira_version(str(updated)) if updated else event_time
        except (ValueError, TypeError, OverflowError):
            raise http.MalformedEventError(f"{event_type} with an unreadable time") from None
        actor_json = payload.get("user")
        if not isinstance(actor_json, dict) and comment is not None:
            actor_json = comment.get("updateAuthor") or comment.get("author")
        actor_json = actor_json if isinstance(actor_json, dict) else {}
        actor_id = str(actor_json.get("accountId") or "")
        actor = (self._email_of(actor_json) if actor_id else None) or actor_id
        by_self = bool(actor_id) and actor_id == self._myself_json().get("accountId")
        warnings: list[str] = []
        changes: dict[str, str] = {}
        if event_type == "jira:issue_created":
            record = self._record({**issue, "fields": fields})
            changes = dict(record.fields)
            warnings.extend(record.warnings)
        elif event_type == "jira:issue_updated":
            changes = self._changes(changelog.get("items") or [], warnings)
        journals: tuple[JournalEntry, ...] = ()
        if event_type == "comment_created" and comment is not None:
            journals = (self._journal(comment),)
        identifier = request.headers.get("x-atlassian-webhook-identifier") or "-".join(
            str(part)
            for part in (
                issue["id"],
                payload.get("timestamp", ""),
                changelog.get("id") or (comment or {}).get("id", ""),
            )
        )
        return WebhookEvent(
            delivery_id=identifier,
            event_type=str(event_type),
            external_id=str(issue["id"]),
            external_key=str(issue.get("key") or issue["id"]),
            version=version,
            event_time=event_time,
            actor=actor,
            by_self=by_self,
            changes=changes,
            journals=journals,
            correlation_key=_correlation(fields.get("labels")),
            created=event_type == "jira:issue_created",
            deleted=event_type == "jira:issue_deleted",
            warnings=tuple(warnings),
        )

    def _changes(self, items: list[Any], warnings: list[str]) -> dict[str, str]:
        """Platform changes of a changelog: field ids matched to the mapped external fields."""
        by_external: dict[str, str] = {}
        for name in ("title", "description", "priority", "status", "assigned_to", "severity"):
            external = self._external(name)
            if external:
                by_external[external] = name
        changes: dict[str, str] = {}
        for item in items:
            if not isinstance(item, dict):
                continue
            field = by_external.get(str(item.get("fieldId") or item.get("field") or ""))
            if field is None:
                continue
            to_string = item.get("toString")
            if field == "title":
                changes[field] = str(to_string or "").strip()
            elif field == "description":
                changes[field] = normalise_text(str(to_string or ""))
            elif field == "assigned_to":
                account = item.get("tmpToAccountId") or item.get("to")
                if not account:
                    changes[field] = ""
                else:
                    email = self._email_for(str(account))
                    if email is None:
                        warnings.append("assigned_to: the new assignee's email is not visible")
                    else:
                        changes[field] = email
            elif to_string:
                mapped = self._in(field, str(to_string), warnings)
                if mapped is not None:
                    changes[field] = mapped
        return changes

    # -- setup -----------------------------------------------------------------------------------

    def check(self) -> list[Check]:
        """Reachability and TLS, credentials, the account's kind, the project, its issue type
        and statuses, permissions, user look-ups, the severity field and the scope JQL."""
        checks: list[Check] = []
        url = self._config.url
        try:
            info = self._json("GET", f"{API}/serverInfo")
        except (http.ConnectionFailedError, http.RequestTimeoutError) as exc:
            return [Check("reachability", False, exc.message)]
        except http.TLSError as exc:
            return [Check("reachability", True, f"{url} answers"), _tls(exc)]
        except http.RecordNotFoundError as exc:
            detail = f"{exc.message}: {url} answers but has no Jira REST API there; check --url"
            return [Check("reachability", False, detail)]
        except http.ConnectorError:  # e.g. 401 where anonymous access is off: it answered
            info = {}
        version = info.get("version") if isinstance(info, dict) else None
        checks.append(Check("reachability", True, f"{url} answers (Jira {version or 'Cloud'})"))
        if url.startswith("https://"):
            checks.append(Check("tls", True, "the certificate is trusted"))
        try:
            myself = self._myself_json()
        except http.ConnectorError as exc:
            checks.append(
                Check(
                    "credentials",
                    False,
                    f"{self._email} with the API token was refused: {exc.message}",
                )
            )
            return checks
        checks.append(
            Check("credentials", True, f"signed in as {self._email} ({myself['accountId']})")
        )
        checks.append(_account_kind(myself))
        checks.extend(self._check_project())
        checks.append(self._check_permissions())
        checks.append(self._check_user_lookup())
        if self._external("severity"):
            checks.append(self._check_severity_field())
        if self._scope_jql:
            checks.append(self._check_jql())
        return checks

    def _check_project(self) -> list[Check]:
        try:
            project = self._json("GET", f"{API}/project/{quote(self._project, safe='')}")
        except http.ConnectorError as exc:
            return [Check("project", False, f"project {self._project}: {exc.message}")]
        checks = [
            Check(
                "project",
                True,
                f"{self._project} ({project.get('name', '')}, "
                f"{project.get('projectTypeKey', 'unknown type')})",
            )
        ]
        types = [str(t.get("name", "")) for t in project.get("issueTypes") or []]
        if _key(self._issue_type) not in {_key(t) for t in types}:
            checks.append(
                Check(
                    "issue type",
                    False,
                    f"{self._project} has no issue type {self._issue_type!r}; it has "
                    f"{', '.join(types) or 'none'} (set --issue-type)",
                )
            )
            return checks
        checks.append(Check("issue type", True, f"{self._issue_type} exists in {self._project}"))
        if project.get("projectTypeKey") != "service_desk":
            checks.append(
                Check(
                    "service desk",
                    True,
                    f"{self._project} is not a Jira Service Management project: work notes "
                    "(internal comments) cannot be synced",
                    warning=True,
                )
            )
        try:
            statuses = self._project_statuses()
        except http.ConnectorError as exc:
            checks.append(Check("statuses", False, exc.message))
            return checks
        missing = [s for s in self._values("status").values() if _key(s) not in statuses]
        checks.append(
            Check(
                "statuses",
                not missing,
                f"the workflow has no status {', '.join(missing)}: map the status values"
                if missing
                else f"every mapped status exists: {', '.join(self._values('status').values())}",
            )
        )
        return checks

    def _check_permissions(self) -> Check:
        try:
            body = self._json(
                "GET",
                f"{API}/mypermissions",
                params={"projectKey": self._project, "permissions": ",".join(REQUIRED_PERMISSIONS)},
            )
        except http.ConnectorError as exc:
            return Check("permissions", False, exc.message)
        granted = body.get("permissions") or {}
        missing = [
            f"{key} ({what})"
            for key, what in REQUIRED_PERMISSIONS.items()
            if not (granted.get(key) or {}).get("havePermission")
        ]
        if missing:
            return Check("permissions", False, f"missing in {self._project}: {', '.join(missing)}")
        return Check("permissions", True, f"{', '.join(REQUIRED_PERMISSIONS)} in {self._project}")

    def _check_user_lookup(self) -> Check:
        try:
            found = self.resolve_user(self._email)
        except http.ConnectorError as exc:
            return Check("user look-up", False, f"user search failed: {exc.message}")
        if found is None:
            return Check(
                "user look-up",
                False,
                f"searching users for {self._email} found nobody: grant 'Browse users and "
                "groups' and make emails visible, or assignees cannot be synced",
            )
        return Check("user look-up", True, "users are found by email")

    def _check_severity_field(self) -> Check:
        field_id = self._external("severity") or ""
        try:
            fields = self._json("GET", f"{API}/field")
        except http.ConnectorError as exc:
            return Check("severity field", False, exc.message)
        for field in fields:
            if field.get("id") == field_id:
                return Check("severity field", True, f"{field_id} is {field.get('name', '')!r}")
        return Check("severity field", False, f"no field {field_id}: check --severity-field")

    def _check_jql(self) -> Check:
        try:
            self._json("POST", f"{API}/search/jql", json={"jql": self._scope(), "maxResults": 1})
        except http.ConnectorError as exc:
            return Check("scope jql", False, f"Jira refused the JQL: {exc.message}")
        return Check("scope jql", True, self._scope())

    def webhook_setup(self, webhook_url: str, secret: str | None) -> str:
        """The admin webhook to register (and the Connect alternative)."""
        shown = secret if secret is not None else SECRET_PLACEHOLDER
        jql = self._scope()
        client_key = self._client_key or "<your site's clientKey>"
        return "\n".join(
            [
                "In Jira: Settings (cog) > System > WebHooks > Create a WebHook",
                "  (or POST /rest/webhooks/1.0/webhook as a Jira administrator):",
                f"  Name:    im ({self._config.name})",
                "  Status:  Enabled",
                f"  URL:     {webhook_url}",
                f"  Secret:  {shown}",
                "  Events:  Issue created, Issue updated, Issue deleted, Comment created",
                "           (jira:issue_created, jira:issue_updated, jira:issue_deleted,",
                "           comment_created)",
                f"  JQL:     {jql}",
                "  Exclude body: no (the issue and its changelog are needed)",
                "Jira then signs every delivery with X-Hub-Signature: sha256=<HMAC of the body>.",
                "",
                "Alternatively, an Atlassian Connect app can deliver the same events: its",
                "installation's sharedSecret is the webhook secret above, and the integration's",
                f"--client-key must be the installation's clientKey ({client_key}): deliveries",
                "carry Authorization: JWT <token> whose iss is that client key and whose qsh",
                "covers this URL's path and query.",
            ]
        )

    def close(self) -> None:
        self._client.close()


# -- helpers -------------------------------------------------------------------------------------


def _inverse(out: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """External value key -> platform value: the outbound map reversed (the first platform
    value wins where several map to one), then the inbound-only names."""
    inverse: dict[str, str] = {}
    for platform, external in out.items():
        inverse.setdefault(_key(external), platform)
    for external, platform in extra.items():
        inverse.setdefault(_key(external), platform)
    return inverse


def _obj(value: Any) -> dict[str, Any]:
    """A JSON object, or an empty one for anything else (null, a list, a string)."""
    return value if isinstance(value, dict) else {}


def _correlation(labels: Any) -> str | None:
    if not isinstance(labels, list):
        return None
    for label in labels:
        if isinstance(label, str) and label.startswith(_CORRELATION_PREFIX):
            return label
    return None


def _names(offered: list[Transition]) -> str:
    return ", ".join(f"{t.name} (-> {t.to})" for t in offered) or "none"


def _strip_order_by(jql: str) -> str:
    return re.split(r"\border\s+by\b", jql, maxsplit=1, flags=re.IGNORECASE)[0].strip()


def _event_time(
    payload: Mapping[str, Any], fields: Mapping[str, Any], comment: Mapping[str, Any] | None
) -> str:
    stamp = payload.get("timestamp")
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        return format_time(datetime.fromtimestamp(stamp / 1000, UTC))
    moment = fields.get("updated") or (comment or {}).get("created")
    if not moment:
        raise ValueError("no time")
    return jira_version(str(moment))


def _tls(exc: http.ConnectorError) -> Check:
    return Check("tls", False, f"{exc.message} ({exc.hint})" if exc.hint else exc.message)


def _account_kind(myself: Mapping[str, Any]) -> Check:
    kind = str(myself.get("accountType") or "unknown")
    if kind == "atlassian":
        return Check(
            "service account",
            True,
            f"{myself.get('displayName') or myself.get('accountId')} is a person's Atlassian "
            "account: use a service account (accountType app) so that changes are not "
            "attributed to a person and survive their leaving",
            warning=True,
        )
    return Check("service account", True, f"the account is of type {kind}")
