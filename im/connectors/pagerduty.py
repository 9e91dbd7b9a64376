"""PagerDuty REST v2 incidents and Webhooks v3: field names, value maps (SPEC §3) and the
connector.

PagerDuty facts the connector is built around:

- every write (``POST``/``PUT`` of incidents and notes) carries ``From: <from_email>``; the
  action is attributed to the token's user, which is how our own changes come back marked as
  ours (``by_self``);
- an incident's description (``body.details``) can be set on create only;
- an acknowledged incident cannot be set back to ``triggered`` (skipped with a warning); a
  resolved one can (PagerDuty reopens it);
- ``GET /incidents`` has no updated-since filter and pages with ``limit`` (at most 100) and
  ``offset``, with ``offset + limit`` capped at 10,000; listings past the cap go on in
  creation-time windows (``since``/``until``, at most 6 months apart, and perhaps honoured to
  the day only: windows reach a day further than asked, and callers filter on ``created_at``);
- webhooks v3 send one event per delivery, signed ``X-PagerDuty-Signature: v1=<hex>``; there
  is no event for a title or urgency change (drift reconciliation finds those).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from im.clock import format_time, parse_time
from im.connectors import http
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
    ConnectionFailedError,
    ConnectorError,
    MalformedEventError,
    PermanentError,
    RateLimitedError,
    RecordNotFoundError,
    RequestTimeoutError,
    RetryableError,
    TLSError,
    make_client,
    send,
)
from im.errors import SignatureError
from im.security.signatures import json_body, pagerduty_verify

if TYPE_CHECKING:  # httpx costs ~140 ms to import; the value maps must stay cheap
    import httpx

TYPE = "pagerduty"
DEFAULT_URL = "https://api.pagerduty.com"

FIELDS: dict[str, str] = {
    "title": "title",
    "description": "body.details",
    "severity": "urgency",
    "priority": "priority",
    "status": "status",
    "assigned_to": "assignments",
    "escalation_policy": "escalation_policy",
    "work_notes": "notes",
}
NOT_SYNCED: dict[str, str] = {
    "comments": "PagerDuty incidents have notes only (work_notes), no customer-visible comments",
}
# The API cannot change an incident's description after creation.
CREATE_ONLY: frozenset[str] = frozenset({"description"})
URGENCY_OUT: dict[str, str] = {
    "sev1": "high",
    "sev2": "high",
    "sev3": "low",
    "sev4": "low",
    "sev5": "low",
}
URGENCY_IN: dict[str, str] = {"high": "sev2", "low": "sev4"}
PRIORITY_OUT: dict[str, str] = {"p1": "P1", "p2": "P2", "p3": "P3", "p4": "P4", "p5": "P5"}
PRIORITY_IN: dict[str, str] = {name: level for level, name in PRIORITY_OUT.items()}
STATUS_OUT: dict[str, str] = {
    "triggered": "triggered",
    "acknowledged": "acknowledged",
    "resolved": "resolved",
    "closed": "resolved",
}
# platform field -> its outbound value map (im.config.mapping adds the user's overrides)
VALUE_MAPS: dict[str, dict[str, str]] = {
    "severity": URGENCY_OUT,
    "priority": PRIORITY_OUT,
    "status": STATUS_OUT,
}
STATUS_IN: dict[str, str] = {
    "triggered": "triggered",
    "acknowledged": "acknowledged",
    "resolved": "resolved",
}

ACCEPT = "application/vnd.pagerduty+json;version=2"
PAGE_SIZE = 100  # the most PagerDuty serves per page (also its Python client's default)
OFFSET_CAP = 10_000  # offset + limit beyond this is a 400
MAX_WINDOW = timedelta(days=180)  # the longest since/until range PagerDuty accepts
# PagerDuty may honour only the date of since/until (in the account's time zone): a window
# reaches this much further on each side, so that rounding never loses an incident.
DATE_SLACK = timedelta(days=1)
# creation order, the incident number breaking ties (sort_by takes at most two fields)
CREATION_ORDER = "created_at:asc,incident_number:asc"
DUPLICATE_KEY_TEXT = "matching dedup key already exists"
ACCOUNT_TOKEN_TEXT = "account-level access token"
JOURNAL_FIELD = "work_notes"

# What the webhook subscription asks for, and what each event type tells us.
WEBHOOK_EVENTS: tuple[str, ...] = (
    "incident.triggered",
    "incident.acknowledged",
    "incident.unacknowledged",
    "incident.resolved",
    "incident.reopened",
    "incident.reassigned",
    "incident.escalated",
    "incident.priority_updated",
    "incident.annotated",
)
STATUS_EVENTS = frozenset(
    {"incident.acknowledged", "incident.unacknowledged", "incident.resolved", "incident.reopened"}
)
ASSIGNMENT_EVENTS = frozenset({"incident.reassigned", "incident.escalated"})

# A token user whose email, name, title or description has one of these words is taken for a
# service account; anyone else looks like a person (PagerDuty has no account type to ask).
SERVICE_ACCOUNT_WORDS = frozenset(
    {
        "api",
        "automation",
        "bot",
        "integration",
        "integrations",
        "noreply",
        "robot",
        "service",
        "svc",
        "sync",
        "system",
    }
)
READ_ONLY_ROLES = frozenset({"read_only_user", "read_only_limited_user", "observer"})


def error_text(body: Any) -> str:
    """PagerDuty's error text: ``{"error": {"message", "code", "errors": [...]}}``."""
    error = body["error"]
    if isinstance(error, str):
        return error
    message = str(error.get("message") or "")
    details = "; ".join(str(item) for item in error.get("errors") or [] if item)
    return f"{message}: {details}" if message and details else message or details


def _ref(identifier: str, kind: str) -> dict[str, str]:
    return {"id": identifier, "type": kind}


def _utc(text: Any, error: type[Exception]) -> str:
    """A vendor time in the platform's form (UTC, milliseconds, ``Z``)."""
    try:
        return format_time(parse_time(str(text)))
    except (ValueError, OverflowError):  # OverflowError: out of range once in UTC
        raise error(f"PagerDuty sent an unreadable time {str(text)[:40]!r}") from None


def looks_like_a_person(user: Mapping[str, Any]) -> bool:
    """Whether a PagerDuty user looks like a person rather than a service account."""
    text = (
        " ".join(str(user.get(key) or "") for key in ("name", "job_title", "description"))
        + " "
        + str(user.get("email") or "").partition("@")[0]
    )
    words = set(re.split(r"[^a-z0-9]+", text.lower()))
    return not words & SERVICE_ACCOUNT_WORDS


class PagerDutyConnector:
    """One PagerDuty integration: incidents of one service, notes as work notes."""

    kind = TYPE
    updates_description = False
    journals: frozenset[str] = frozenset({JOURNAL_FIELD})
    # the policy of an assigned incident and its status follow the POST
    create_steps = frozenset({"escalation_policy", "status"})

    def __init__(self, config: ConnectorConfig) -> None:
        self._config = config
        self._service = config.settings.get("service", "")
        self._from = config.settings.get("from_email", "").strip().lower()
        self._policy = config.settings.get("escalation_policy", "")
        self._page_size = min(config.page_size or PAGE_SIZE, PAGE_SIZE)
        token = config.secrets.get("api_token", "")
        self._client: httpx.Client = make_client(
            config.url,
            headers={"Authorization": f"Token token={token}", "Accept": ACCEPT},
            ca_bundle=config.ca_bundle,
            timeout=config.timeout,
            transport=config.transport,
        )
        # look-ups, cached for the life of the connector (positive answers only: a user
        # added later must be found)
        self._user_ids: dict[str, str] = {}  # email -> user id
        self._user_emails: dict[str, str] = {}  # user id -> email
        self._priorities: dict[str, str] | None = None  # name -> priority id
        self._inbound = {
            "severity": self._inverse("severity", URGENCY_OUT, URGENCY_IN),
            "priority": self._inverse("priority", PRIORITY_OUT, PRIORITY_IN),
            "status": self._inverse("status", STATUS_OUT, STATUS_IN),
        }

    # -- value maps ---------------------------------------------------------------------------

    def _outbound(self, field: str, default: Mapping[str, str]) -> Mapping[str, str]:
        mapping = self._config.fields.get(field)
        return mapping.values if mapping is not None else default

    def _inverse(
        self, field: str, default: Mapping[str, str], preferred: Mapping[str, str]
    ) -> dict[str, str]:
        """External value -> platform value. Where several platform values map to one external
        value, the vendor constant's choice wins if it still maps there (``high`` -> sev2)."""
        out = self._outbound(field, default)
        inverse: dict[str, str] = {}
        for platform_value, external in out.items():
            inverse.setdefault(external, platform_value)
        for external, platform_value in preferred.items():
            if out.get(platform_value) == external:
                inverse[external] = platform_value
        return inverse

    def _synced(self, field: str) -> bool:
        mapping = self._config.fields.get(field)
        return mapping is not None and mapping.synced

    def normalise(self, field: str, value: str) -> str:
        """What a later read of ``value`` returns: trimmed text, lower-case emails, and the
        value maps both ways (sev1 -> high -> sev2, closed -> resolved)."""
        text = value.strip()
        defaults = {"severity": URGENCY_OUT, "priority": PRIORITY_OUT, "status": STATUS_OUT}
        if field in defaults:
            external = self._outbound(field, defaults[field]).get(text.lower())
            if external is None:
                return text
            return self._inbound[field].get(external, text)
        if field == "assigned_to":
            return text.lower()
        return text

    # -- requests -----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """One API call; the decoded JSON answer (``{}`` when empty). Raises the typed errors
        of ``im.connectors.http``."""
        kwargs: dict[str, Any] = {}
        if params:
            kwargs["params"] = dict(params)
        if body is not None:
            kwargs["json"] = body
        if method in ("POST", "PUT"):  # PagerDuty refuses writes without a valid From
            kwargs["headers"] = {"From": self._from}
        response = send(self._client, method, path, error_text, **kwargs)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise RetryableError(
                f"{method} {path.split('?')[0]}: the answer is not JSON",
                status=response.status_code,
            ) from None

    def _pages(self, path: str, key: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a classic (limit/offset/more) listing."""
        offset = 0
        while True:
            page = self._request(
                "GET", path, params={**params, "limit": self._page_size, "offset": offset}
            )
            items = page.get(key) or []
            yield from items
            if not page.get("more") or not items:
                return
            offset += len(items)

    @staticmethod
    def _path(external_id: str) -> str:
        return f"/incidents/{quote(external_id, safe='')}"

    # -- look-ups -----------------------------------------------------------------------------

    def resolve_user(self, email: str) -> str | None:
        """The PagerDuty user id of ``email`` (``GET /users?query=``), cached; None if none."""
        wanted = email.strip().lower()
        if not wanted:
            return None
        if wanted in self._user_ids:
            return self._user_ids[wanted]
        for user in self._pages("/users", "users", {"query": wanted}):
            if str(user.get("email") or "").lower() == wanted:
                self._user_ids[wanted] = user["id"]
                self._user_emails[user["id"]] = wanted
                return str(user["id"])
        return None

    def _email_of(self, user_id: str) -> str | None:
        """The email of a user id (``GET /users/{id}``), cached; None for an unknown user."""
        if user_id in self._user_emails:
            return self._user_emails[user_id]
        try:
            user = self._request("GET", f"/users/{quote(user_id, safe='')}")["user"]
        except RecordNotFoundError:
            return None
        email = str(user.get("email") or "").lower()
        if email:
            self._user_emails[user_id] = email
            self._user_ids.setdefault(email, user_id)
        return email or None

    def _priority_ids(self) -> dict[str, str]:
        """Priority name -> id (``GET /priorities``), cached. Empty for an account without
        priorities (PagerDuty answers 402 or 404 then, or an empty list)."""
        if self._priorities is None:
            try:
                self._priorities = {
                    str(item["name"]): str(item["id"])
                    for item in self._pages("/priorities", "priorities", {})
                }
            except RecordNotFoundError:
                self._priorities = {}
            except PermanentError as exc:
                if exc.status != 402:
                    raise
                self._priorities = {}
        return self._priorities

    def _priority_ref(self, value: str, warnings: list[str]) -> dict[str, str] | None:
        name = self._outbound("priority", PRIORITY_OUT).get(value.strip().lower())
        if name is None:
            warnings.append(f"priority {value!r} has no PagerDuty priority: not sent")
            return None
        ids = self._priority_ids()
        if not ids:
            warnings.append("the PagerDuty account has no incident priorities: priority skipped")
            return None
        if name not in ids:
            warnings.append(f"PagerDuty has no priority named {name!r}: priority skipped")
            return None
        return _ref(ids[name], "priority_reference")

    # -- records ------------------------------------------------------------------------------

    def _record(
        self, incident: Mapping[str, Any], warnings: list[str] | None = None
    ) -> ExternalRecord:
        """An incident (REST form) as the platform sees it."""
        notes = list(warnings or [])
        fields: dict[str, str] = {}
        if self._synced("title"):
            fields["title"] = self.normalise("title", str(incident.get("title") or ""))
        body = incident.get("body")
        if self._synced("description") and isinstance(body, Mapping):
            fields["description"] = self.normalise("description", str(body.get("details") or ""))
        status = str(incident.get("status") or "")
        self._map_in(fields, "severity", incident.get("urgency"), notes)
        self._map_in(fields, "status", status, notes)
        if self._synced("priority"):
            fields["priority"] = self._priority_in(incident.get("priority"), notes)
        if self._synced("assigned_to"):
            assignees = [a.get("assignee") or {} for a in incident.get("assignments") or []]
            # PagerDuty empties the assignments of a resolved incident: nobody to compare then
            if assignees or status != "resolved":
                self._assignee_in(fields, assignees, notes)
        if self._synced("escalation_policy"):
            fields["escalation_policy"] = str(
                (incident.get("escalation_policy") or {}).get("id") or ""
            )
        created = incident.get("created_at")
        updated = _utc(incident.get("updated_at") or created, PermanentError)
        return ExternalRecord(
            id=str(incident["id"]),
            key=str(incident.get("incident_number") or ""),
            url=str(incident.get("html_url") or ""),
            version=updated,
            updated_at=updated,
            fields=fields,
            created_at=_utc(created, PermanentError) if created else "",
            correlation_key=incident.get("incident_key") or None,
            warnings=tuple(notes),
        )

    def _map_in(self, fields: dict[str, str], field: str, value: Any, warnings: list[str]) -> None:
        if not self._synced(field) or value is None:
            return
        mapped = self._inbound[field].get(str(value))
        if mapped is None:
            warnings.append(f"{field}: PagerDuty value {value!r} has no platform value: skipped")
        else:
            fields[field] = mapped

    def _priority_in(self, priority: Any, warnings: list[str]) -> str:
        if not isinstance(priority, Mapping):
            return ""
        name = str(priority.get("name") or priority.get("summary") or "")
        mapped = self._inbound["priority"].get(name)
        if mapped is None:
            warnings.append(f"priority: PagerDuty priority {name!r} has no platform value")
            return ""
        return mapped

    def _assignee_in(
        self, fields: dict[str, str], assignees: list[Mapping[str, Any]], warnings: list[str]
    ) -> None:
        if not assignees:
            fields["assigned_to"] = ""
            return
        user_id = str(assignees[0].get("id") or "")
        email = self._email_of(user_id) if user_id else None
        if email is None:
            warnings.append(f"assigned_to: PagerDuty user {user_id!r} has no email: skipped")
        else:
            fields["assigned_to"] = email

    def _journal(self, note: Mapping[str, Any]) -> JournalEntry:
        user = note.get("user") or {}
        author = self._email_of(str(user["id"])) if user.get("id") else None
        return JournalEntry(
            vendor_id=str(note["id"]),
            field=JOURNAL_FIELD,
            body=str(note.get("content") or ""),
            author=author or str(user.get("summary") or ""),
            created_at=_utc(note.get("created_at"), PermanentError),
        )

    # -- the Connector protocol ---------------------------------------------------------------

    def create(self, values: Mapping[str, str], correlation_key: str) -> ExternalRecord:
        """``POST /incidents`` with every mapped field; ``incident_key`` = the correlation key.
        Assigned incidents get ``assignments`` (then their escalation policy in a second call,
        as PagerDuty takes one or the other on create), others the escalation policy. A
        duplicate open key is "already created": the existing incident is returned."""
        warnings: list[str] = []
        incident: dict[str, Any] = {
            "type": "incident",
            "title": values.get("title", "").strip(),
            "service": _ref(self._service, "service_reference"),
        }
        wanted = {f: v for f, v in values.items() if self._synced(f)}
        if wanted.get("severity"):
            urgency = self._outbound("severity", URGENCY_OUT).get(
                wanted["severity"].strip().lower()
            )
            if urgency:
                incident["urgency"] = urgency
        if wanted.get("priority"):
            priority = self._priority_ref(wanted["priority"], warnings)
            if priority:
                incident["priority"] = priority
        description = wanted.get("description", "").strip()
        if description:
            incident["body"] = {"type": "incident_body", "details": description}
        incident["incident_key"] = correlation_key
        assignee = None
        if wanted.get("assigned_to"):
            assignee = self.resolve_user(wanted["assigned_to"])
            if assignee is None:
                email = wanted["assigned_to"].strip()
                warnings.append(
                    f"assigned_to: no PagerDuty user has the email {email!r}: assigned to the "
                    "escalation policy instead"
                )
        policy = wanted.get("escalation_policy", "").strip()
        if assignee:
            incident["assignments"] = [{"assignee": _ref(assignee, "user_reference")}]
        elif policy or self._policy:
            incident["escalation_policy"] = _ref(
                policy or self._policy, "escalation_policy_reference"
            )
        try:
            created = self._request("POST", "/incidents", body={"incident": incident})["incident"]
        except PermanentError as exc:
            if exc.status == 400 and DUPLICATE_KEY_TEXT in exc.message.lower():
                found = self.find_by_correlation(correlation_key)
                if found is not None:
                    return found
            raise
        if assignee and policy and (created.get("escalation_policy") or {}).get("id") != policy:
            change = {
                "type": "incident_reference",
                "escalation_policy": _ref(policy, "escalation_policy_reference"),
                "assignments": incident["assignments"],  # else PagerDuty reassigns to the policy
            }
            created = self._request("PUT", self._path(created["id"]), body={"incident": change})[
                "incident"
            ]
        record = self._record(created, warnings)
        status = wanted.get("status", "").strip()
        if status and self.normalise("status", status) != record.fields.get("status"):
            # PagerDuty creates every incident triggered: one acknowledged or resolved before
            # its create was sent gets its status in a second call (a create sends every
            # mapped field, SPEC §3; found by benchmarks/crash_soak.py). The incident exists
            # by then, so a failure is an in-doubt create, looked up before it is sent again.
            try:
                after = self.update(record.id, {"status": status})
            except http.ConnectorError as exc:
                raise http.RequestTimeoutError(
                    f"created incident {record.key}, then {exc.message}; the create is in "
                    "doubt: look the correlation key up before creating again"
                ) from exc
            record = dataclasses.replace(after, warnings=(*record.warnings, *after.warnings))
        if self._synced("description") and "description" not in record.fields:
            # the answer has no body; what we sent is what PagerDuty keeps (it cannot change)
            record = dataclasses.replace(
                record, fields={**record.fields, "description": description}
            )
        return record

    def find_by_correlation(self, correlation_key: str) -> ExternalRecord | None:
        """The service's incident with ``incident_key`` = the key (the open one first)."""
        params = {
            "incident_key": correlation_key,
            "service_ids[]": self._service,
            "date_range": "all",
        }
        matches = [
            item
            for item in self._pages("/incidents", "incidents", params)
            if item.get("incident_key") == correlation_key
        ]
        if not matches:
            return None
        matches.sort(
            key=lambda item: (item.get("status") != "resolved", str(item.get("created_at")))
        )
        return self.get(str(matches[-1]["id"]))

    def _get_raw(self, external_id: str) -> dict[str, Any]:
        incident: dict[str, Any] = self._request(
            "GET", self._path(external_id), params={"include[]": "body"}
        )["incident"]
        return incident

    def get(self, external_id: str) -> ExternalRecord:
        """``GET /incidents/{id}?include[]=body``. Raises RecordNotFoundError when gone."""
        return self._record(self._get_raw(external_id))

    def update(self, external_id: str, changes: Mapping[str, str]) -> ExternalRecord:
        """``PUT /incidents/{id}`` with the changed fields. Skipped with a warning on the
        record: the description (PagerDuty cannot change it), a return to ``triggered`` of an
        acknowledged incident (PagerDuty refuses it), values that have no PagerDuty value."""
        warnings: list[str] = []
        change: dict[str, Any] = {"type": "incident_reference"}
        current: dict[str, Any] = {}

        def now() -> dict[str, Any]:
            if not current:
                current.update(self._get_raw(external_id))
            return current

        unassign = False
        for field, value in changes.items():
            if not self._synced(field):
                continue
            text = value.strip()
            if field == "title":
                change["title"] = text
            elif field == "description":
                warnings.append(
                    "description: PagerDuty cannot change an incident's description: skipped"
                )
            elif field == "severity":
                urgency = self._outbound("severity", URGENCY_OUT).get(text.lower())
                if urgency is None:
                    warnings.append(f"severity {value!r} has no PagerDuty urgency: skipped")
                else:
                    change["urgency"] = urgency
            elif field == "priority":
                if not text:
                    change["priority"] = None
                elif (priority := self._priority_ref(text, warnings)) is not None:
                    change["priority"] = priority
            elif field == "status":
                self._status_out(text, change, warnings, now)
            elif field == "assigned_to":
                if not text:
                    unassign = True
                elif (user := self.resolve_user(text)) is None:
                    warnings.append(
                        f"assigned_to: no PagerDuty user has the email {text!r}: skipped"
                    )
                else:
                    change["assignments"] = [{"assignee": _ref(user, "user_reference")}]
            elif field == "escalation_policy":
                if text:
                    change["escalation_policy"] = _ref(text, "escalation_policy_reference")
                else:
                    warnings.append(
                        "escalation_policy: a PagerDuty incident always has one: skipped"
                    )
        if unassign and "assignments" not in change and "escalation_policy" not in change:
            # nobody assigned in PagerDuty means "assigned to the escalation policy"
            policy = (now().get("escalation_policy") or {}).get("id") or self._policy
            if policy:
                change["escalation_policy"] = _ref(policy, "escalation_policy_reference")
            else:
                warnings.append("assigned_to: no escalation policy to reassign to: skipped")
        elif "escalation_policy" in change and "assignments" not in change and not unassign:
            # moving an incident to a policy reassigns it there: keep who it is assigned to
            kept = [
                a["assignee"]["id"] for a in now().get("assignments") or [] if a.get("assignee")
            ]
            if kept:
                change["assignments"] = [{"assignee": _ref(u, "user_reference")} for u in kept]
        if len(change) == 1:
            record = self._record(now()) if current else self.get(external_id)
            return dataclasses.replace(record, warnings=record.warnings + tuple(warnings))
        updated = self._request("PUT", self._path(external_id), body={"incident": change})
        return self._record(updated["incident"], warnings)

    def _status_out(
        self,
        value: str,
        change: dict[str, Any],
        warnings: list[str],
        now: Callable[[], dict[str, Any]],
    ) -> None:
        status = self._outbound("status", STATUS_OUT).get(value.lower())
        if status is None:
            warnings.append(f"status {value!r} has no PagerDuty status: skipped")
            return
        if status == "triggered":
            current = now().get("status")
            if current == "acknowledged":
                warnings.append(
                    "status: PagerDuty cannot set an acknowledged incident back to triggered:"
                    " skipped"
                )
                return
            if current == "triggered":
                return
        change["status"] = status

    def add_journal(self, external_id: str, field: str, body: str) -> JournalEntry:
        """``POST /incidents/{id}/notes``; the note with its PagerDuty id."""
        if field != JOURNAL_FIELD:
            raise PermanentError(f"PagerDuty incidents have no {field}: only notes (work_notes)")
        answer = self._request(
            "POST", f"{self._path(external_id)}/notes", body={"note": {"content": body}}
        )
        return self._journal(answer["note"])

    def list_journal(self, external_id: str) -> list[JournalEntry]:
        """Every note of the incident, oldest first."""
        notes = self._request("GET", f"{self._path(external_id)}/notes").get("notes") or []
        entries = [self._journal(note) for note in notes]
        return sorted(entries, key=lambda entry: entry.created_at)

    def list_journals(self, external_ids: Sequence[str]) -> dict[str, list[JournalEntry]]:
        """Every note of each incident, oldest first, [] for one without notes: one request
        per incident, as PagerDuty has no way to list the notes of several (a few at once)."""
        return http.fetch_each(external_ids, self.list_journal, self._config.concurrency)

    def list_in_scope(self, created_since: datetime | None = None) -> Iterator[ExternalRecord]:
        """Incidents of the service created at or after ``created_since`` (and, as PagerDuty
        may bound creation by the day only, some of the day before), oldest first, the
        incident number breaking ties."""
        for incident in self._incidents(created_since):
            yield self._record(incident)

    def list_changed(self, since: datetime) -> Iterator[ExternalRecord]:
        """Incidents of the service updated at or after ``since``. PagerDuty cannot filter by
        update time (``since``/``until`` bound the creation time), so this walks the whole
        service and keeps the records whose ``updated_at`` is not older."""
        cutoff = format_time(since)
        for record in self.list_in_scope():
            if record.updated_at >= cutoff:
                yield record

    def in_scope(self, external_ids: Sequence[str]) -> set[str]:
        """The incidents among ``external_ids`` that belong to the service now. PagerDuty
        cannot list incidents by id, so each is read (``GET /incidents/{id}``), a few at a
        time; one that is gone (404) is absent."""
        wanted = [i for i in dict.fromkeys(external_ids) if i]
        services = http.fetch_each(wanted, self._service_of, self._config.concurrency)
        return {i for i, service in services.items() if service == self._service}

    def _service_of(self, external_id: str) -> str | None:
        """The id of the service the incident belongs to; None when it is gone."""
        try:
            incident = self._request("GET", self._path(external_id))["incident"]
        except RecordNotFoundError:
            return None
        return str((incident.get("service") or {}).get("id") or "")

    def _incidents(self, created_since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """The service's incidents by creation time. Without ``created_since``,
        ``date_range=all`` pages while offset + limit stays within PagerDuty's 10,000; past
        it, and from the start with ``created_since`` (less DATE_SLACK), the walk goes on in
        ``since``/``until`` windows up to the newest incident, each window starting where
        the listing stands (never at the first incident). Windows overlap what was listed;
        each incident is yielded once."""
        base = {"service_ids[]": self._service, "sort_by": CREATION_ORDER}
        window: dict[str, str] = {"date_range": "all"}
        last_time = ""  # creation time of the last incident yielded
        last_ids: set[str] = set()  # the incidents yielded with that creation time
        newest = ""  # creation time of the service's newest incident: the windows end there
        if created_since is not None:
            newest = self._newest_creation()
            if not newest or parse_time(newest) < created_since:
                return
            window = self._window(format_time(created_since - DATE_SLACK), newest)
        offset = 0
        while True:
            if offset + self._page_size > OFFSET_CAP:
                if window.get("since") == last_time:
                    raise PermanentError(
                        f"more than {OFFSET_CAP} incidents of service {self._service} were "
                        f"created at {last_time}: PagerDuty cannot list past them"
                    )
                newest = newest or self._newest_creation() or last_time
                window, offset = self._window(last_time, newest), 0
            page = self._request(
                "GET",
                "/incidents",
                params={**base, **window, "limit": self._page_size, "offset": offset},
            )
            items = page.get("incidents") or []
            for item in items:
                created = _utc(item.get("created_at"), PermanentError)
                item_id = str(item["id"])
                # a window overlaps what was listed (and PagerDuty may round it to days)
                if created < last_time or (created == last_time and item_id in last_ids):
                    continue
                if created != last_time:
                    last_time, last_ids = created, set()
                last_ids.add(item_id)
                yield item
            offset += len(items)
            if page.get("more") and items:
                continue
            if "date_range" in window:
                return
            # even cut to its date, this window's end was past the newest incident
            reached = parse_time(window["until"]) - DATE_SLACK
            if reached > parse_time(newest):
                return
            window, offset = self._window(format_time(reached), newest), 0

    @staticmethod
    def _window(start: str, newest: str) -> dict[str, str]:
        """A creation-time window from ``start``, at most PagerDuty's 6 months long, ending
        a day (DATE_SLACK) past ``newest`` at the latest."""
        begin = parse_time(start)
        end = min(begin + MAX_WINDOW, parse_time(newest) + DATE_SLACK + timedelta(seconds=1))
        return {"since": format_time(begin), "until": format_time(end)}

    def _newest_creation(self) -> str:
        """The creation time of the service's newest incident; "" when it has none."""
        page = self._request(
            "GET",
            "/incidents",
            params={
                "service_ids[]": self._service,
                "date_range": "all",
                "sort_by": "created_at:desc",
                "limit": 1,
            },
        )
        items = page.get("incidents") or []
        return _utc(items[0].get("created_at"), PermanentError) if items else ""

    # -- webhooks -----------------------------------------------------------------------------

    def verify_webhook(self, request: WebhookRequest, secrets: list[str], now: datetime) -> None:
        """``X-PagerDuty-Signature: v1=<hex>[,v1=<hex>…]`` over the raw body: valid when any
        entry matches any secret (both sides rotate). Raises SignatureError."""
        usable = [secret for secret in secrets if secret]
        if not usable:
            raise SignatureError("no webhook secret is configured for this integration")
        # an empty body is signed like any other: authentic, it is malformed (400), not a 401
        pagerduty_verify(usable, request.headers.get("x-pagerduty-signature", ""), request.body)

    def malformed(self, payload: Any) -> str | None:
        """What is wrong with an authentic delivery's JSON, without any network call."""
        event = payload.get("event") if isinstance(payload, dict) else None
        if not isinstance(event, dict):
            return 'the delivery has no "event" object'
        event_type = str(event.get("event_type") or "")
        if event.get("resource_type") != "incident" or event_type not in WEBHOOK_EVENTS:
            return None
        if not isinstance(event.get("data"), dict):
            return f"{event_type} has no data object"
        return None

    def parse_webhook(self, request: WebhookRequest) -> WebhookEvent | None:
        """A v3 event as what changed: the fields its type concerns (a triggered incident
        brings every field), a note as a journal entry. None for other event types."""
        try:
            payload = json_body(request.body)
        except ValueError:
            raise MalformedEventError("the delivery is not UTF-8 JSON") from None
        problem = self.malformed(payload)
        if problem:
            raise MalformedEventError(problem)
        assert isinstance(payload, dict)  # malformed() said so
        event = payload["event"]
        event_type = str(event.get("event_type") or "")
        if event.get("resource_type") != "incident" or event_type not in WEBHOOK_EVENTS:
            return None
        data = event["data"]
        occurred = _utc(event.get("occurred_at"), MalformedEventError)
        delivery_id = str(event.get("id") or request.headers.get("x-webhook-id") or "")
        if not delivery_id:
            raise MalformedEventError("the event has no id")
        actor, by_self = self._agent(event.get("agent"))
        common: dict[str, Any] = {
            "delivery_id": delivery_id,
            "event_type": event_type,
            "version": occurred,
            "event_time": occurred,
            "actor": actor,
            "by_self": by_self,
        }
        if event_type == "incident.annotated":
            incident = data.get("incident")
            if not isinstance(incident, dict) or not incident.get("id") or not data.get("id"):
                raise MalformedEventError("incident.annotated without the incident or note id")
            content = str(data.get("content") or "")
            if data.get("trimmed"):  # long notes come cut short: read the whole one
                full = {e.vendor_id: e.body for e in self.list_journal(str(incident["id"]))}
                content = full.get(str(data["id"]), content)
            note = JournalEntry(str(data["id"]), JOURNAL_FIELD, content, actor, occurred)
            return WebhookEvent(
                external_id=str(incident["id"]), external_key="", journals=(note,), **common
            )
        if not data.get("id"):
            raise MalformedEventError(f"{event_type} without the incident id")
        warnings: list[str] = []
        changes: dict[str, str] = {}
        created = event_type == "incident.triggered"
        if created or event_type in STATUS_EVENTS:
            self._map_in(changes, "status", data.get("status"), warnings)
        if created:
            if self._synced("title"):
                changes["title"] = self.normalise("title", str(data.get("title") or ""))
            self._map_in(changes, "severity", data.get("urgency"), warnings)
        if (created or event_type == "incident.priority_updated") and self._synced("priority"):
            priority = self._priority_in(data.get("priority"), warnings)
            # The platform has no "no priority", and one it has no value for is skipped (with
            # a warning): either way the rest of the event applies (SPEC §3)
            if priority:
                changes["priority"] = priority
        if created or event_type in ASSIGNMENT_EVENTS:
            if self._synced("assigned_to"):
                self._assignee_in(changes, list(data.get("assignees") or []), warnings)
            if self._synced("escalation_policy"):
                policy = data.get("escalation_policy") or {}
                changes["escalation_policy"] = str(policy.get("id") or "")
        return WebhookEvent(
            external_id=str(data["id"]),
            external_key=str(data.get("number") or ""),
            changes=changes,
            correlation_key=data.get("incident_key") or None,
            created=created,
            warnings=tuple(warnings),
            **common,
        )

    def _agent(self, agent: Any) -> tuple[str, bool]:
        """(who, whether it is this integration's user) for an event's ``agent``."""
        if not isinstance(agent, Mapping) or not agent.get("id"):
            return "", False
        agent_id = str(agent["id"])
        if agent.get("type") != "user_reference":  # a service, an integration, automation
            return str(agent.get("summary") or agent_id), False
        email = self._email_of(agent_id)
        own = self.resolve_user(self._from) if self._from else None
        return email or str(agent.get("summary") or agent_id), agent_id == own

    # -- set-up -------------------------------------------------------------------------------

    def check(self) -> list[Check]:
        """Reachability and TLS, the token, the From user, read access to the service's
        incidents, the service and escalation policy, priorities (a warning when there are
        none) and whether the token's user looks like a person."""
        checks: list[Check] = []
        url = self._config.url
        try:
            me: dict[str, Any] | None = self._request("GET", "/users/me")["user"]
        except (ConnectionFailedError, TLSError, RequestTimeoutError) as exc:
            return [
                Check("reachability", False, exc.message + (f" ({exc.hint})" if exc.hint else ""))
            ]
        except RecordNotFoundError as exc:
            detail = (
                f"{exc.message}: {url} answers but has no PagerDuty REST API there; check --url"
            )
            return [Check("reachability", False, detail)]
        except AuthError as exc:
            checks.append(Check("reachability", True, f"{url} answered"))
            checks.append(Check("credentials", False, f"the API token was refused: {exc.message}"))
            return checks
        except PermanentError as exc:
            if ACCOUNT_TOKEN_TEXT not in exc.message.lower():
                return [Check("reachability", True, f"{url} answered"), _failed("credentials", exc)]
            me = None  # an account-level token has no user of its own
        except ConnectorError as exc:
            return [_failed("reachability", exc)]
        tls = " over verified TLS" if url.startswith("https://") else ""
        checks.append(Check("reachability", True, f"{url} answered{tls}"))
        if me is None:
            checks.append(Check("credentials", True, "an account-level API token"))
        else:
            checks.append(
                Check(
                    "credentials", True, f"a user API token of {me.get('name')} <{me.get('email')}>"
                )
            )
        checks.extend(self._check_from(me))
        checks.extend(self._check_scope(me))
        checks.append(self._check_priorities())
        checks.append(self._check_kind(me))
        return checks

    def _check_from(self, me: Mapping[str, Any] | None) -> list[Check]:
        try:
            user = self.resolve_user(self._from) if self._from else None
        except ConnectorError as exc:
            return [_failed("from user", exc)]
        if user is None:
            return [
                Check(
                    "from user",
                    False,
                    f"no PagerDuty user has the --from-email address {self._from!r}: PagerDuty "
                    "refuses writes without a valid From",
                )
            ]
        result = [Check("from user", True, f"{self._from} is PagerDuty user {user}")]
        if me is not None and str(me.get("email") or "").lower() != self._from:
            result.append(
                Check(
                    "from user",
                    True,
                    f"the token belongs to {me.get('email')} but --from-email is {self._from}: "
                    "PagerDuty attributes our writes to the token's user, so they would not be "
                    "recognised as our own when they come back",
                    warning=True,
                )
            )
        return result

    def _check_scope(self, me: Mapping[str, Any] | None) -> list[Check]:
        checks: list[Check] = []
        service = quote(self._service, safe="")
        try:
            found = self._request("GET", f"/services/{service}")["service"]
            checks.append(Check("service", True, f"{self._service} ({found.get('name')})"))
        except RecordNotFoundError:
            checks.append(
                Check("service", False, f"service {self._service!r} does not exist or is hidden")
            )
        except ConnectorError as exc:
            checks.append(_failed("service", exc))
        if self._policy:
            policy = quote(self._policy, safe="")
            try:
                found = self._request("GET", f"/escalation_policies/{policy}")["escalation_policy"]
                checks.append(
                    Check("escalation policy", True, f"{self._policy} ({found.get('name')})")
                )
            except RecordNotFoundError:
                checks.append(
                    Check(
                        "escalation policy",
                        False,
                        f"escalation policy {self._policy!r} does not exist",
                    )
                )
            except ConnectorError as exc:
                checks.append(_failed("escalation policy", exc))
        try:
            self._request(
                "GET",
                "/incidents",
                params={"service_ids[]": self._service, "date_range": "all", "limit": 1},
            )
        except ConnectorError as exc:
            checks.append(_failed("permissions", exc))
            return checks
        role = str((me or {}).get("role") or "")
        if role in READ_ONLY_ROLES:
            checks.append(
                Check(
                    "permissions",
                    False,
                    f"the token's user has the {role} role: it can read incidents but not "
                    "create or change them",
                )
            )
        else:
            checks.append(
                Check("permissions", True, f"reads the service's incidents (role {role or '-'})")
            )
        return checks

    def _check_priorities(self) -> Check:
        try:
            names = sorted(self._priority_ids())
        except ConnectorError as exc:
            return _failed("priorities", exc)
        if not names:
            return Check(
                "priorities",
                True,
                "the account has no incident priorities: priority will not be synced",
                warning=True,
            )
        return Check("priorities", True, ", ".join(names))

    def _check_kind(self, me: Mapping[str, Any] | None) -> Check:
        if me is None:
            return Check("account", True, "an account-level token, not a person's")
        who = f"{me.get('name')} <{me.get('email')}>"
        if looks_like_a_person(me):
            return Check(
                "account",
                True,
                f"the token belongs to {who}, which looks like a person's account: use a "
                "dedicated PagerDuty user (e.g. im-integration@…) so that people's edits and "
                "ours stay apart",
                warning=True,
            )
        return Check("account", True, f"{who} looks like a service account")

    def webhook_setup(self, webhook_url: str, secret: str | None) -> str:
        """The v3 webhook subscription to create for the service, and where its secret goes."""
        subscription = {
            "webhook_subscription": {
                "type": "webhook_subscription",
                "description": f"im integration {self._config.name}",
                "delivery_method": {"type": "http_delivery_method", "url": webhook_url},
                "events": list(WEBHOOK_EVENTS),
                "filter": {"id": self._service, "type": "service_reference"},
            }
        }
        body = json.dumps(subscription, indent=2)
        shown = secret or "<webhook-secret>"
        api = self._config.url.rstrip("/")
        return "\n".join(
            [
                f"PagerDuty: a v3 webhook subscription for service {self._service}",
                "",
                "Create it with the REST API (an admin's or account API token), or in the web app",
                "under Integrations > Generic Webhooks (v3) with the same URL, service and events:",
                "",
                f"  curl -X POST {api}/webhook_subscriptions \\",
                "    -H 'Authorization: Token token=<admin-api-token>' \\",
                f"    -H 'Accept: {ACCEPT}' \\",
                "    -H 'Content-Type: application/json' \\",
                "    -d @- <<'EOF'",
                body,
                "EOF",
                "",
                "PagerDuty generates the signing secret itself and shows it ONLY in that create",
                "response, as webhook_subscription.delivery_method.secret. Store it at once:",
                "",
                f"  im integration configure {self._config.name} --webhook-secret {shown}",
                "",
                "Deliveries are signed X-PagerDuty-Signature: v1=<hex>. PagerDuty disables a",
                "subscription after 3 dropped deliveries; re-enable it with",
                f"POST {api}/webhook_subscriptions/<id>/enable.",
            ]
        )

    def close(self) -> None:
        self._client.close()


def _failed(name: str, exc: ConnectorError) -> Check:
    if isinstance(exc, RateLimitedError):
        return Check(name, False, f"rate limited: try again in {exc.retry_after:.0f} s")
    hint = f" ({exc.hint})" if exc.hint else ""
    return Check(name, False, exc.message + hint)
