"""A PagerDuty simulator: REST API v2 (incidents, notes, users, services, escalation policies,
priorities, webhook subscriptions) and Webhooks v3, for tests, the demo and people (SPEC §12).

What it does like PagerDuty: ``Authorization: Token token=…`` (401 otherwise), ``From`` on
every incident write (400 otherwise), wrapped resources (``{"incident": {…}}``), classic
pagination (``limit`` default 25 and at most 100, ``offset``, ``more``, ``total`` only with
``total=true``, 400 when ``offset + limit`` passes 10,000), ``since``/``until`` bounding the
creation time (at most 6 months apart, 400 with code 2004 otherwise; optionally honoured to the
day only, as PagerDuty may do) unless ``date_range=all``, a 400 for a second open
incident with the same ``incident_key`` on a service, no way back from acknowledged to
triggered (a resolved incident reopens), at most 2,000 notes, errors as
``{"error": {"message", "code", "errors"}}``, 429 with ``ratelimit-*`` headers.

Webhooks v3: one event per delivery, ``X-PagerDuty-Signature: v1=<hex>`` (one entry per
secret while rotating), ``X-Webhook-Id`` = the event id, ``X-Webhook-Subscription``,
``User-Agent: PagerDuty-Webhook/V3.0``; the event types PagerDuty sends for what changed (none
for a title or urgency change); retries on timeouts, 5xx and 429 for 48 hours, other 4xx
dropped; three dropped deliveries in a row disable the subscription (24 h, or until
``POST /webhook_subscriptions/{id}/enable``).

Services: the one im syncs (``service``) and others (``other_services``) whose incidents are
outside its scope; a subscription delivers the events of its service only. Simplifications, on
purpose: one webhook subscription at a time; an incident stays on its service; nobody is on
call, so an incident assigned to an escalation policy has no assignees; a resolved incident
keeps its assignees (PagerDuty empties them); times carry milliseconds.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from im.clock import format_time
from im.security.signatures import pagerduty_signature
from im.sim.core import Delivery, RetryPolicy, Simulator, WebhookQueue, json_object

DEFAULT_TOKENS: dict[str, str] = {
    "im-integration-token": "im-integration@example.com",
    "agent-token": "agent@example.com",
}
DEFAULT_USERS: tuple[dict[str, str], ...] = (
    {
        "email": "im-integration@example.com",
        "name": "im integration",
        "job_title": "Service account",
        "description": "The im incident platform's integration user",
    },
    {"email": "agent@example.com", "name": "Agent Smith", "job_title": "SRE"},
    {"email": "alice@example.com", "name": "Alice Example", "job_title": "SRE"},
    {"email": "bob@example.com", "name": "Bob Example", "job_title": "Database engineer"},
)
DEFAULT_SERVICE = "PSVC001"
SERVICE_NAME = "im simulator service"
# another team's service: incidents on it are outside an integration with DEFAULT_SERVICE
DEFAULT_OTHER_SERVICES: dict[str, str] = {"PSVC002": "Another team's service"}
DEFAULT_POLICIES: dict[str, str] = {"PEP0001": "Default", "PEP0002": "Database on-call"}
DEFAULT_PRIORITIES: dict[str, str] = {
    "P1": "Critical issue that warrants public notification and liaison with executive teams",
    "P2": "Critical system issue actively impacting many customers' ability to use the product",
    "P3": "Stability or minor customer-impacting issues that require immediate attention",
    "P4": "Minor issues requiring action, but not affecting customer ability to use the product",
    "P5": "Cosmetic issues or bugs, not affecting customer ability to use the product",
}
EVENT_TYPES: tuple[str, ...] = (
    "incident.acknowledged",
    "incident.annotated",
    "incident.escalated",
    "incident.priority_updated",
    "incident.reassigned",
    "incident.reopened",
    "incident.resolved",
    "incident.triggered",
    "incident.unacknowledged",
)
ERROR_CODES: dict[int, int] = {400: 2001, 401: 2006, 402: 2014, 403: 2010, 404: 2100, 429: 2020}
DEFAULT_LIMIT = 25
MAX_LIMIT = 100
OFFSET_CAP = 10_000
MAX_RANGE = timedelta(days=183)  # "maximum range is 6 months"
DEFAULT_RANGE = timedelta(days=30)  # "default is 1 month"
MAX_NOTES = 2000
DUPLICATE_KEY = "Open incident with matching dedup key already exists on this service"
DROPS_BEFORE_DISABLE = 3
DISABLED_FOR = timedelta(hours=24)
RATE_LIMIT = 960  # requests per minute and token, as PagerDuty documents
# PagerDuty retries for up to 48 hours; these delays add up to just under that.
RETRY_DELAYS: tuple[float, ...] = (30, 60, 120, 300, 600, 1800, 3600, 7200) + (14400,) * 11
SORT_KEYS = ("incident_number", "created_at", "resolved_at", "urgency")
NEVER = datetime.min.replace(tzinfo=UTC)


class _Invalid(Exception):
    """A request PagerDuty refuses: answered with its error body."""

    def __init__(
        self, status: int, message: str, errors: Sequence[str] = (), code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors)
        self.code = code


def _bad(*errors: str) -> _Invalid:
    return _Invalid(400, "Invalid Input Provided", errors)


@dataclass
class _Incident:
    id: str
    number: int
    title: str
    description: str
    urgency: str
    priority: str | None  # priority id
    policy: str
    assignees: list[tuple[str, datetime]]  # (user id, assigned at)
    key: str
    service: str  # service id
    created_at: datetime
    updated_at: datetime
    changed_by: str  # user id of the last status change
    status: str = "triggered"
    status_changed_at: datetime | None = None
    resolved_at: datetime | None = None
    reopened_at: datetime | None = None
    acknowledgers: list[tuple[str, datetime]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)


class _Deliveries(WebhookQueue):
    """Deliveries of the one webhook subscription, which PagerDuty disables after three
    dropped deliveries in a row."""

    def __init__(self, sim: PagerDutySimulator) -> None:
        super().__init__(sim)
        self._pd = sim

    def emit(self, resource: str, payload: Mapping[str, Any], delivery_id: str) -> None:
        if self._pd.subscription_disabled():  # PagerDuty does not keep them for later
            body = json.dumps(payload, separators=(",", ":")).encode()
            lost = Delivery(delivery_id, resource, body, {}, self._pd.clock.now())
            lost.outcome = "dropped"
            lost.answers.append("not sent: the subscription is disabled")
            self.log.append(lost)
            return
        super().emit(resource, payload, delivery_id)

    def due(self) -> list[Delivery]:
        return [] if self._pd.subscription_disabled() else super().due()

    def record(self, delivery: Delivery, status: int | None, error: str = "") -> None:
        super().record(delivery, status, error)
        if delivery.outcome == "delivered":
            self._pd.consecutive_drops = 0
        elif delivery.outcome == "failed":
            self._pd.delivery_dropped()


Endpoint = Callable[[Request, dict[str, Any]], Awaitable[Response]]


class PagerDutySimulator(Simulator):
    kind = "pagerduty"
    user_agent = "PagerDuty-Webhook/V3.0"
    retry = RetryPolicy(frozenset({408, 429, *range(500, 600)}), RETRY_DELAYS)

    def __init__(
        self,
        *,
        tokens: Mapping[str, str] | None = None,
        users: Sequence[Mapping[str, str]] | None = None,
        service: str = DEFAULT_SERVICE,
        other_services: Mapping[str, str] | None = None,
        escalation_policies: Mapping[str, str] | None = None,
        priorities: Mapping[str, str] | None = None,
        old_webhook_secrets: Sequence[str] = (),
        requests_per_minute: int | None = None,
        max_notes: int = MAX_NOTES,
        seed_incidents: int = 0,
        range_by_date: bool = False,
        **options: Any,
    ) -> None:
        """``tokens``: API token -> its user's email; ``users``: email, name and optionally
        role, job_title, description; ``service``: the id of im's service;
        ``other_services``: id -> name of the account's other services (default: one);
        ``priorities``: name -> description (empty: an account without priorities,
        answering 402); ``old_webhook_secrets``: secrets still signing
        during a rotation; ``requests_per_minute``: enforce PagerDuty's rate limit (off by
        default, so a frozen clock does not starve tests); ``seed_incidents``: incidents that
        exist at start, one a second up to now; ``range_by_date``: honour only the date (UTC)
        of ``since`` and ``until``, as PagerDuty is reported to do (UNCONFIRMED: both are cut
        to midnight, so ``until`` excludes its own day). ``options`` go to ``Simulator``."""
        super().__init__(**options)
        self.webhooks = _Deliveries(self)
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        self.service = service
        others = DEFAULT_OTHER_SERVICES if other_services is None else other_services
        self.services = {**others, service: SERVICE_NAME}  # id -> name
        self.policies = dict(
            DEFAULT_POLICIES if escalation_policies is None else escalation_policies
        )
        self.old_webhook_secrets = tuple(old_webhook_secrets)
        self.requests_per_minute = requests_per_minute
        self.max_notes = max_notes
        self.range_by_date = range_by_date
        self.users: dict[str, dict[str, str]] = {}
        self._by_email: dict[str, str] = {}
        listed = list(DEFAULT_USERS if users is None else users)
        known = {u["email"].lower() for u in listed}
        listed += [
            {"email": e, "name": e.partition("@")[0]}
            for e in self.tokens.values()
            if e.lower() not in known
        ]
        for user in listed:
            self._add_user(user)
        self.priorities: dict[str, dict[str, str]] = {}
        for name, description in (DEFAULT_PRIORITIES if priorities is None else priorities).items():
            self.priorities[self._new_id("P", self.priorities)] = {
                "name": name,
                "description": description,
            }
        self.incidents: dict[str, _Incident] = {}
        self._numbers = 0
        self._requests: dict[tuple[str, int], int] = {}
        self.consecutive_drops = 0
        self.subscription: dict[str, Any] | None = None
        if self.webhook_url:
            self.subscription = self._subscription(list(EVENT_TYPES), "im simulator webhooks")
        self._seed(seed_incidents)

    # -- fixtures -------------------------------------------------------------------------------

    def _new_id(self, prefix: str, taken: Mapping[str, Any]) -> str:
        while (candidate := self.random_id(prefix)) in taken:
            pass
        return candidate

    def _add_user(self, user: Mapping[str, str]) -> None:
        user_id = self._new_id("P", self.users)
        email = user["email"].strip().lower()
        self.users[user_id] = {
            "email": email,
            "name": user.get("name") or email,
            "role": user.get("role", "user"),
            "job_title": user.get("job_title", ""),
            "description": user.get("description", ""),
        }
        self._by_email[email] = user_id

    def _seed(self, count: int) -> None:
        now = self.clock.now()
        policy = next(iter(self.policies), "")
        for n in range(count):
            moment = now - timedelta(seconds=count - n)
            self._numbers += 1
            incident_id = self._new_id("Q", self.incidents)
            self.incidents[incident_id] = _Incident(
                id=incident_id,
                number=self._numbers,
                title=f"Seeded incident {self._numbers}",
                description="",
                urgency="high",
                priority=None,
                policy=policy,
                assignees=[],
                key=f"seed-{self._numbers}",
                service=self.service,
                created_at=moment,
                updated_at=moment,
                changed_by="",
            )

    def _subscription(self, events: list[str], description: str) -> dict[str, Any]:
        return {
            "id": self._new_id("P", {}),
            "description": description,
            "events": events,
            "filter": {"id": self.service, "type": "service_reference"},
            "temporarily_disabled": False,
            "disabled_until": None,
        }

    # -- Simulator hooks ------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        api = self._api
        return [
            Route("/incidents", api(self._list_incidents), methods=["GET"]),
            Route("/incidents", api(self._create_incident, write=True), methods=["POST"]),
            Route("/incidents/{id}", api(self._get_incident), methods=["GET"]),
            Route("/incidents/{id}", api(self._update_incident, write=True), methods=["PUT"]),
            Route("/incidents/{id}/notes", api(self._list_notes), methods=["GET"]),
            Route("/incidents/{id}/notes", api(self._create_note, write=True), methods=["POST"]),
            Route("/users", api(self._list_users), methods=["GET"]),
            Route("/users/me", api(self._me), methods=["GET"]),
            Route("/users/{id}", api(self._get_user), methods=["GET"]),
            Route("/services/{id}", api(self._get_service), methods=["GET"]),
            Route("/escalation_policies/{id}", api(self._get_policy), methods=["GET"]),
            Route("/priorities", api(self._list_priorities), methods=["GET"]),
            Route("/webhook_subscriptions", api(self._list_subscriptions), methods=["GET"]),
            Route("/webhook_subscriptions", api(self._create_subscription), methods=["POST"]),
            Route("/webhook_subscriptions/{id}", api(self._get_subscription), methods=["GET"]),
            Route(
                "/webhook_subscriptions/{id}", api(self._delete_subscription), methods=["DELETE"]
            ),
            Route(
                "/webhook_subscriptions/{id}/enable",
                api(self._enable_subscription),
                methods=["POST"],
            ),
        ]

    def sign(self, delivery_id: str, body: bytes, attempt: int) -> dict[str, str]:
        secrets = [self.webhook_secret, *self.old_webhook_secrets]
        return {
            "X-PagerDuty-Signature": ",".join(pagerduty_signature(s, body) for s in secrets),
            "X-Webhook-Id": delivery_id,
            "X-Webhook-Subscription": (self.subscription or {}).get("id", ""),
        }

    def error(
        self, status: int, message: str, errors: Sequence[str] = (), code: int | None = None
    ) -> Response:
        error: dict[str, Any] = {"message": message, "code": code or ERROR_CODES.get(status, 2000)}
        if errors:
            error["errors"] = list(errors)
        return JSONResponse({"error": error}, status_code=status)

    def rate_limited(self, retry_after: int) -> Response:
        return JSONResponse(
            {"error": {"message": "Rate Limit Exceeded", "code": 2020}},
            status_code=429,
            headers={
                "ratelimit-limit": str(self.requests_per_minute or RATE_LIMIT),
                "ratelimit-remaining": "0",
                "ratelimit-reset": str(retry_after),
            },
        )

    def describe(self) -> dict[str, Any]:
        return {
            "auth": "Authorization: Token token=<token>; From: <user email> on writes",
            "accounts": [{"token": token, "user": email} for token, email in self.tokens.items()],
            "users": sorted(u["email"] for u in self.users.values()),
            "service": self.service,
            "other services": [s for s in self.services if s != self.service],
            "escalation_policies": list(self.policies),
            "priorities": [p["name"] for p in self.priorities.values()] or "none (402)",
            "webhook subscription": (self.subscription or {}).get("id", "none"),
        }

    def record_count(self) -> int:
        return len(self.incidents)

    # -- the webhook subscription ---------------------------------------------------------------

    def subscription_disabled(self) -> bool:
        """Whether deliveries are off because too many were dropped (for 24 hours)."""
        sub = self.subscription
        if sub is None or not sub["temporarily_disabled"]:
            return False
        if self.clock.now() >= sub["disabled_until"]:
            self._enable(sub)
            return False
        return True

    def delivery_dropped(self) -> None:
        """One delivery was dropped: the third in a row disables the subscription, and what
        was waiting is dropped with it."""
        self.consecutive_drops += 1
        if self.consecutive_drops < DROPS_BEFORE_DISABLE or self.subscription is None:
            return
        self.subscription["temporarily_disabled"] = True
        self.subscription["disabled_until"] = self.clock.now() + DISABLED_FOR
        for delivery in list(self.webhooks.pending):
            delivery.outcome = "dropped"
            delivery.answers.append("dropped: the subscription is disabled")
            self.webhooks.pending.remove(delivery)
            self.webhooks.log.append(delivery)

    def _enable(self, sub: dict[str, Any]) -> None:
        sub["temporarily_disabled"] = False
        sub["disabled_until"] = None
        self.consecutive_drops = 0

    # -- plumbing -------------------------------------------------------------------------------

    def _api(
        self, handler: Endpoint, *, write: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint with PagerDuty's token check, rate limit, From check on writes, and
        error answers."""

        async def endpoint(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            token = header[len("Token token=") :] if header.startswith("Token token=") else ""
            email = self.tokens.get(token) if token else None
            if email is None or email not in self._by_email:
                return self.error(401, "Authentication failed")
            user = {"id": self._by_email[email], **self.users[self._by_email[email]]}
            remaining = self._count(token)
            if remaining is not None and remaining < 0:
                return self.rate_limited(self._reset())
            try:
                if write:
                    sender = request.headers.get("from", "").strip().lower()
                    if sender not in self._by_email:
                        raise _bad("The From header is missing or invalid")
                response = await handler(request, user)
            except _Invalid as exc:
                response = self.error(exc.status, exc.message, exc.errors, exc.code)
            if remaining is not None and self.requests_per_minute:
                response.headers["ratelimit-limit"] = str(self.requests_per_minute)
                response.headers["ratelimit-remaining"] = str(remaining)
                response.headers["ratelimit-reset"] = str(self._reset())
            return response

        return endpoint

    def _count(self, token: str) -> int | None:
        """Requests left in this minute for the token (negative: over), or None when the
        limit is off."""
        if not self.requests_per_minute:
            return None
        minute = int(self.clock.now().timestamp() // 60)
        key = (token, minute)
        self._requests[key] = self._requests.get(key, 0) + 1
        return self.requests_per_minute - self._requests[key]

    def _reset(self) -> int:
        return 60 - int(self.clock.now().timestamp()) % 60

    @staticmethod
    def _base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def _body(self, request: Request, key: str) -> dict[str, Any]:
        body = await json_object(request)
        if body is None:
            raise _bad("The request body must be a JSON object")
        data = body.get(key)
        if not isinstance(data, dict):
            raise _bad(f"{key} is required")
        return data

    def _incident_of(self, request: Request) -> _Incident:
        incident = self.incidents.get(request.path_params["id"])
        if incident is None:
            raise _Invalid(404, "Not Found")
        return incident

    @staticmethod
    def _paging(request: Request) -> tuple[int, int, bool]:
        query = request.query_params
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
            offset = int(query.get("offset", 0))
        except ValueError:
            raise _bad("limit and offset must be integers") from None
        if limit < 1 or offset < 0:
            raise _bad("limit must be positive and offset not negative")
        limit = min(limit, MAX_LIMIT)
        if offset + limit > OFFSET_CAP:
            raise _bad(f"offset + limit must not exceed {OFFSET_CAP}")
        return limit, offset, query.get("total", "false").lower() == "true"

    def _page(
        self,
        request: Request,
        key: str,
        items: Sequence[Any],
        show: Callable[[Any], Any] = lambda item: item,
    ) -> Response:
        """One page of ``items`` (each shown with ``show``), PagerDuty's classic way."""
        limit, offset, total = self._paging(request)
        return JSONResponse(
            {
                key: [show(item) for item in items[offset : offset + limit]],
                "limit": limit,
                "offset": offset,
                "more": offset + limit < len(items),
                "total": len(items) if total else None,
            }
        )

    # -- JSON shapes ----------------------------------------------------------------------------

    def _ref(
        self, base: str, kind: str, identifier: str, summary: str, path: str
    ) -> dict[str, Any]:
        return {
            "id": identifier,
            "type": f"{kind}_reference",
            "summary": summary,
            "self": f"{base}/{path}/{identifier}",
            "html_url": f"{base}/{path}/{identifier}",
        }

    def _user_ref(self, base: str, user_id: str) -> dict[str, Any]:
        return self._ref(base, "user", user_id, self.users[user_id]["name"], "users")

    def _policy_ref(self, base: str, policy: str) -> dict[str, Any]:
        return self._ref(
            base, "escalation_policy", policy, self.policies.get(policy, ""), "escalation_policies"
        )

    def _service_ref(self, base: str, service: str) -> dict[str, Any]:
        return self._ref(base, "service", service, self.services.get(service, ""), "services")

    def _priority_ref(self, base: str, priority: str | None) -> dict[str, Any] | None:
        if priority is None or priority not in self.priorities:
            return None
        name = self.priorities[priority]["name"]
        return self._ref(base, "priority", priority, name, "priorities")

    def _user_json(self, base: str, user_id: str) -> dict[str, Any]:
        user = self.users[user_id]
        return {
            **self._user_ref(base, user_id),
            "type": "user",
            "name": user["name"],
            "email": user["email"],
            "time_zone": "Etc/UTC",
            "color": "green",
            "role": user["role"],
            "avatar_url": "https://pd-static-assets.pagerduty.com/users/blank-avatar.png",
            "description": user["description"] or None,
            "invitation_sent": False,
            "job_title": user["job_title"],
            "teams": [],
            "contact_methods": [],
            "notification_rules": [],
        }

    def _incident_json(self, base: str, inc: _Incident, body: bool = False) -> dict[str, Any]:
        ref = self._ref(base, "incident", inc.id, f"[#{inc.number}] {inc.title}", "incidents")
        data: dict[str, Any] = {
            **ref,
            "type": "incident",
            "incident_number": inc.number,
            "title": inc.title,
            "created_at": format_time(inc.created_at),
            "updated_at": format_time(inc.updated_at),
            "status": inc.status,
            "incident_key": inc.key,
            "service": self._service_ref(base, inc.service),
            "assignments": [
                {"at": format_time(at), "assignee": self._user_ref(base, user)}
                for user, at in inc.assignees
            ],
            "assigned_via": "direct_assignment" if inc.assignees else "escalation_policy",
            "last_status_change_at": format_time(inc.status_changed_at or inc.updated_at),
            "last_status_change_by": (
                self._user_ref(base, inc.changed_by) if inc.changed_by in self.users else None
            ),
            "resolved_at": format_time(inc.resolved_at) if inc.resolved_at else None,
            "alert_counts": {"all": 0, "triggered": 0, "resolved": 0},
            "is_mergeable": True,
            "incident_type": {"name": "incident_default"},
            "escalation_policy": self._policy_ref(base, inc.policy),
            "teams": [],
            "pending_actions": [],
            "acknowledgements": [
                {"at": format_time(at), "acknowledger": self._user_ref(base, user)}
                for user, at in inc.acknowledgers
            ],
            "alert_grouping": None,
            "priority": self._priority_ref(base, inc.priority),
            "resolve_reason": None,
            "incidents_responders": [],
            "responder_requests": [],
            "urgency": inc.urgency,
        }
        if body:
            data["body"] = {"type": "incident_body", "details": inc.description}
        return data

    def _webhook_json(self, base: str, inc: _Incident) -> dict[str, Any]:
        """The incident as webhooks v3 carry it: ``number``, ``assignees``, no ``updated_at``."""
        ref = self._ref(base, "incident", inc.id, inc.title, "incidents")
        data: dict[str, Any] = {
            "id": inc.id,
            "type": "incident",
            "self": ref["self"],
            "html_url": ref["html_url"],
            "number": inc.number,
            "status": inc.status,
            "incident_key": inc.key,
            "created_at": format_time(inc.created_at),
            "title": inc.title,
            "service": self._service_ref(base, inc.service),
            "assignees": [self._user_ref(base, user) for user, _ in inc.assignees],
            "escalation_policy": self._policy_ref(base, inc.policy),
            "teams": [],
            "priority": self._priority_ref(base, inc.priority),
            "urgency": inc.urgency,
            "conference_bridge": None,
            "resolve_reason": None,
        }
        if inc.reopened_at:
            data["reopened_at"] = format_time(inc.reopened_at)
        return data

    def _emit(
        self, event_type: str, incident: str, user: str, data: dict[str, Any], base: str
    ) -> None:
        sub = self.subscription
        if sub is None or event_type not in sub["events"]:
            return
        if self.incidents[incident].service != sub["filter"]["id"]:
            return  # the subscription is for another service
        event_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        payload = {
            "event": {
                "id": event_id,
                "event_type": event_type,
                "resource_type": "incident",
                "occurred_at": format_time(self.clock.now()),
                "agent": self._user_ref(base, user),
                "client": None,
                "data": data,
            }
        }
        self.webhooks.emit(incident, payload, event_id)

    # -- validation -----------------------------------------------------------------------------

    def _user_ids(self, assignments: Any) -> list[str]:
        if not isinstance(assignments, list) or not assignments:
            raise _bad("assignments must be a non-empty list of {assignee: user reference}")
        ids = []
        for item in assignments:
            user = (item or {}).get("assignee") if isinstance(item, dict) else None
            user_id = user.get("id") if isinstance(user, dict) else None
            if user_id not in self.users:
                raise _Invalid(400, "Assigned To User Not Found", code=1007)
            ids.append(str(user_id))
        return ids

    def _policy_id(self, ref: Any) -> str:
        policy = ref.get("id") if isinstance(ref, dict) else None
        if policy not in self.policies:
            raise _Invalid(400, "Escalation Policy Not Found", code=1014)
        return str(policy)

    def _priority_id(self, ref: Any) -> str | None:
        if ref is None:
            return None
        if not self.priorities:
            raise _Invalid(402, "Missing Account Ability", ["priorities"])
        if isinstance(ref, str):  # a name: "the highest priority with a matching name"
            for priority, item in self.priorities.items():
                if item["name"] == ref:
                    return priority
        elif isinstance(ref, dict) and ref.get("id") in self.priorities:
            return str(ref["id"])
        raise _Invalid(400, "Invalid Priority", code=1020)

    @staticmethod
    def _urgency(value: Any) -> str:
        if value not in ("high", "low"):
            raise _bad("urgency must be high or low")
        return str(value)

    @staticmethod
    def _title(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _bad("Title cannot be empty.")
        if len(value) > 1024:
            raise _bad("Title is too long (maximum is 1024 characters).")
        return value

    # -- incidents ------------------------------------------------------------------------------

    async def _list_incidents(self, request: Request, user: dict[str, Any]) -> Response:
        query = request.query_params
        self._paging(request)
        found = list(self.incidents.values())
        services = query.getlist("service_ids[]")
        if services:
            found = [i for i in found if i.service in services]
        if query.getlist("team_ids[]"):
            found = []  # nothing here belongs to a team
        if statuses := query.getlist("statuses[]"):
            found = [i for i in found if i.status in statuses]
        if urgencies := query.getlist("urgencies[]"):
            found = [i for i in found if i.urgency in urgencies]
        if users := query.getlist("user_ids[]"):
            found = [i for i in found if any(u in users for u, _ in i.assignees)]
        if "incident_key" in query:
            found = [i for i in found if i.key == query["incident_key"]]
        if query.get("date_range") != "all":
            since, until = self._range(
                query.get("since"), query.get("until"), query.get("time_zone")
            )
            found = [i for i in found if since <= i.created_at < until]
        found = self._sorted(found, query.getlist("sort_by"))
        base = self._base(request)
        return self._page(request, "incidents", found, lambda i: self._incident_json(base, i))

    def _range(
        self, since_text: str | None, until_text: str | None, zone_name: str | None = None
    ) -> tuple[datetime, datetime]:
        """The creation window of a listing. A time without an offset is read in
        ``time_zone`` (default: the account's, UTC here)."""
        try:
            zone = ZoneInfo(zone_name) if zone_name else UTC
        except (ZoneInfoNotFoundError, ValueError):
            raise _bad(f"time_zone {zone_name!r} is not a time zone") from None

        def moment(text: str, name: str) -> datetime:
            try:
                value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
            except ValueError:
                raise _Invalid(
                    400, "Invalid Input Provided", [f"{name} is not a date"], 2004
                ) from None
            return (value if value.tzinfo else value.replace(tzinfo=zone)).astimezone(UTC)

        until = moment(until_text, "until") if until_text else self.clock.now()
        since = moment(since_text, "since") if since_text else until - DEFAULT_RANGE
        if since > until:
            raise _Invalid(400, "Invalid Input Provided", ["since must be before until"], 2004)
        if until - since > MAX_RANGE:
            raise _Invalid(
                400,
                "Invalid Input Provided",
                ["since and until are more than 6 months apart"],
                2004,
            )
        if self.range_by_date:
            since = since.replace(hour=0, minute=0, second=0, microsecond=0)
            until = until.replace(hour=0, minute=0, second=0, microsecond=0)
        return since, until

    @staticmethod
    def _sorted(found: list[_Incident], sort_by: list[str]) -> list[_Incident]:
        keys = [part for value in sort_by for part in value.split(",") if part]
        if len(keys) > 2:
            raise _bad("sort_by takes at most two fields")
        result = sorted(found, key=lambda i: i.number)
        for item in reversed(keys):
            name, _, direction = item.partition(":")
            if name not in SORT_KEYS or direction not in ("", "asc", "desc"):
                raise _bad(f"cannot sort by {item!r}")

            def key(i: _Incident, name: str = name) -> Any:
                if name == "urgency":
                    return i.urgency == "high"
                if name == "resolved_at":
                    return i.resolved_at or NEVER
                return getattr(i, "number" if name == "incident_number" else name)

            result.sort(key=key, reverse=direction == "desc")
        return result

    async def _get_incident(self, request: Request, user: dict[str, Any]) -> Response:
        incident = self._incident_of(request)
        body = "body" in request.query_params.getlist("include[]")
        return JSONResponse({"incident": self._incident_json(self._base(request), incident, body)})

    async def _create_incident(self, request: Request, user: dict[str, Any]) -> Response:
        data = await self._body(request, "incident")
        if data.get("type") != "incident":
            raise _bad("incident type must be incident")
        title = self._title(data.get("title"))
        service = data.get("service")
        if not isinstance(service, dict) or service.get("id") not in self.services:
            raise _bad("Service not found")
        service_id = str(service["id"])
        urgency = self._urgency(data.get("urgency", "high"))
        priority = self._priority_id(data.get("priority"))
        if data.get("assignments") and data.get("escalation_policy"):
            raise _bad("Assignments cannot be specified if an escalation policy is given")
        assignees = self._user_ids(data["assignments"]) if data.get("assignments") else []
        policy = (
            self._policy_id(data["escalation_policy"])
            if data.get("escalation_policy")
            else next(iter(self.policies), "")
        )
        details = (
            (data.get("body") or {}).get("details") if isinstance(data.get("body"), dict) else None
        )
        key = data.get("incident_key")
        if key is not None and not isinstance(key, str):
            raise _bad("incident_key must be a string")
        if key and any(
            i.key == key and i.service == service_id and i.status != "resolved"
            for i in self.incidents.values()
        ):
            raise _bad(DUPLICATE_KEY)
        now = self.clock.now()
        self._numbers += 1
        incident = _Incident(
            id=self._new_id("Q", self.incidents),
            number=self._numbers,
            title=title,
            description=str(details or ""),
            urgency=urgency,
            priority=priority,
            policy=policy,
            assignees=[(u, now) for u in assignees],
            key=key or self.random_hex(32),
            service=service_id,
            created_at=now,
            updated_at=now,
            changed_by=user["id"],
        )
        self.incidents[incident.id] = incident
        base = self._base(request)
        self._emit(
            "incident.triggered", incident.id, user["id"], self._webhook_json(base, incident), base
        )
        return JSONResponse({"incident": self._incident_json(base, incident)}, status_code=201)

    async def _update_incident(self, request: Request, user: dict[str, Any]) -> Response:
        incident = self._incident_of(request)
        data = await self._body(request, "incident")
        if data.get("type") not in ("incident", "incident_reference"):
            raise _bad("incident type must be incident or incident_reference")
        # validate everything before changing anything
        title = self._title(data["title"]) if "title" in data else None
        urgency = self._urgency(data["urgency"]) if "urgency" in data else None
        priority = self._priority_id(data["priority"]) if "priority" in data else incident.priority
        assignees = self._user_ids(data["assignments"]) if "assignments" in data else None
        policy = self._policy_id(data["escalation_policy"]) if "escalation_policy" in data else None
        status = data.get("status")
        if status is not None and status not in ("triggered", "acknowledged", "resolved"):
            raise _Invalid(
                400, "Invalid Status", ["status must be triggered, acknowledged or resolved"], 1003
            )
        if status == "triggered" and incident.status == "acknowledged":
            raise _Invalid(
                400,
                "Invalid Status",
                ["An acknowledged incident cannot be set back to triggered"],
                1003,
            )
        now = self.clock.now()
        events: list[str] = []
        changed = False
        if title is not None and title != incident.title:
            incident.title, changed = title, True  # PagerDuty sends no event for this
        if urgency is not None and urgency != incident.urgency:
            incident.urgency, changed = urgency, True  # nor for this
        if priority != incident.priority:
            incident.priority, changed = priority, True
            events.append("incident.priority_updated")
        if status is not None and status != incident.status:
            events += self._set_status(incident, status, user["id"], now)
            changed = True
        before = (incident.policy, [u for u, _ in incident.assignees])
        if policy is not None:
            incident.policy = policy
            if assignees is None:  # reassigned to the policy: nobody is on call here
                incident.assignees = []
        if assignees is not None:
            kept = dict(incident.assignees)
            incident.assignees = [(u, kept.get(u, now)) for u in assignees]
        if (incident.policy, [u for u, _ in incident.assignees]) != before:
            events.append("incident.reassigned")
            changed = True
        base = self._base(request)
        if changed:
            incident.updated_at = now
            data_json = self._webhook_json(base, incident)
            for event_type in events:
                self._emit(event_type, incident.id, user["id"], data_json, base)
        return JSONResponse({"incident": self._incident_json(base, incident)})

    @staticmethod
    def _set_status(incident: _Incident, status: str, user: str, now: datetime) -> list[str]:
        """Move to ``status`` (already checked to be allowed); the events PagerDuty sends."""
        events = []
        if incident.status == "resolved":
            incident.reopened_at, incident.resolved_at = now, None
            events.append("incident.reopened")
        if status == "acknowledged":
            incident.acknowledgers = [(user, now)]
            events.append("incident.acknowledged")
        elif status == "resolved":
            incident.resolved_at, incident.acknowledgers = now, []
            events.append("incident.resolved")
        else:
            incident.acknowledgers = []
        incident.status, incident.status_changed_at, incident.changed_by = status, now, user
        return events

    # -- notes ----------------------------------------------------------------------------------

    async def _list_notes(self, request: Request, user: dict[str, Any]) -> Response:
        incident = self._incident_of(request)
        base = self._base(request)
        return JSONResponse({"notes": [self._note_json(base, n) for n in incident.notes]})

    def _note_json(self, base: str, note: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": note["id"],
            "user": self._user_ref(base, note["user"]),
            "channel": {"summary": "The PagerDuty website or APIs"},
            "content": note["content"],
            "created_at": format_time(note["at"]),
            "updated_at": format_time(note["at"]),
        }

    async def _create_note(self, request: Request, user: dict[str, Any]) -> Response:
        incident = self._incident_of(request)
        data = await self._body(request, "note")
        content = data.get("content")
        if not isinstance(content, str) or not content.strip():
            raise _bad("Note content cannot be empty.")
        if len(incident.notes) >= self.max_notes:
            raise _bad(f"An incident can have at most {self.max_notes} notes.")
        taken = {n["id"] for n in incident.notes}
        note = {
            "id": self._new_id("P", dict.fromkeys(taken)),
            "user": user["id"],
            "content": content,
            "at": self.clock.now(),
        }
        incident.notes.append(note)
        base = self._base(request)
        ref = self._ref(base, "incident", incident.id, incident.title, "incidents")
        data_json = {
            "incident": ref,
            "id": note["id"],
            "content": content,
            "trimmed": False,
            "type": "incident_note",
        }
        self._emit("incident.annotated", incident.id, user["id"], data_json, base)
        return JSONResponse({"note": self._note_json(base, note)})

    # -- users, service, policies, priorities ---------------------------------------------------

    async def _list_users(self, request: Request, user: dict[str, Any]) -> Response:
        wanted = request.query_params.get("query", "").strip().lower()
        base = self._base(request)
        found = [
            self._user_json(base, user_id)
            for user_id, item in self.users.items()
            if wanted in item["email"] or wanted in item["name"].lower()
        ]
        return self._page(request, "users", found)

    async def _me(self, request: Request, user: dict[str, Any]) -> Response:
        return JSONResponse({"user": self._user_json(self._base(request), user["id"])})

    async def _get_user(self, request: Request, user: dict[str, Any]) -> Response:
        user_id = request.path_params["id"]
        if user_id not in self.users:
            raise _Invalid(404, "Not Found")
        return JSONResponse({"user": self._user_json(self._base(request), user_id)})

    async def _get_service(self, request: Request, user: dict[str, Any]) -> Response:
        service = request.path_params["id"]
        if service not in self.services:
            raise _Invalid(404, "Not Found")
        base = self._base(request)
        policy = next(iter(self.policies), "")
        return JSONResponse(
            {
                "service": {
                    **self._service_ref(base, service),
                    "type": "service",
                    "name": self.services[service],
                    "description": "Incidents synced with im",
                    "status": "active",
                    "auto_resolve_timeout": None,
                    "acknowledgement_timeout": None,
                    "alert_creation": "create_alerts_and_incidents",
                    "escalation_policy": self._policy_ref(base, policy),
                    "incident_urgency_rule": {"type": "constant", "urgency": "high"},
                    "teams": [],
                    "integrations": [],
                }
            }
        )

    async def _get_policy(self, request: Request, user: dict[str, Any]) -> Response:
        policy = request.path_params["id"]
        if policy not in self.policies:
            raise _Invalid(404, "Not Found")
        base = self._base(request)
        return JSONResponse(
            {
                "escalation_policy": {
                    **self._policy_ref(base, policy),
                    "type": "escalation_policy",
                    "name": self.policies[policy],
                    "description": "",
                    "escalation_rules": [],
                    "services": [self._service_ref(base, self.service)],
                    "num_loops": 0,
                    "on_call_handoff_notifications": "if_has_services",
                    "teams": [],
                }
            }
        )

    async def _list_priorities(self, request: Request, user: dict[str, Any]) -> Response:
        if not self.priorities:
            raise _Invalid(402, "Missing Account Ability", ["priorities"])
        base = self._base(request)
        items = [
            {
                **self._ref(base, "priority", priority, item["name"], "priorities"),
                "type": "priority",
                "name": item["name"],
                "description": item["description"],
            }
            for priority, item in self.priorities.items()
        ]
        for item in items:
            del item["html_url"]
        return self._page(request, "priorities", items)

    # -- webhook subscriptions ------------------------------------------------------------------

    def _subscription_json(
        self, sub: Mapping[str, Any], secret: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": sub["id"],
            "type": "webhook_subscription",
            "active": True,
            "delivery_method": {
                "id": sub["id"],
                "type": "http_delivery_method",
                "url": self.webhook_url,
                "secret": secret,  # shown once, in the create response
                "temporarily_disabled": sub["temporarily_disabled"],
                "custom_headers": [],
            },
            "description": sub["description"],
            "events": sub["events"],
            "filter": sub["filter"],
        }

    def _subscription_of(self, request: Request) -> dict[str, Any]:
        sub = self.subscription
        if sub is None or sub["id"] != request.path_params["id"]:
            raise _Invalid(404, "Not Found")
        self.subscription_disabled()  # re-enables it when the 24 hours are over
        return sub

    async def _list_subscriptions(self, request: Request, user: dict[str, Any]) -> Response:
        subs = [self._subscription_json(self.subscription)] if self.subscription else []
        return self._page(request, "webhook_subscriptions", subs)

    async def _create_subscription(self, request: Request, user: dict[str, Any]) -> Response:
        data = await self._body(request, "webhook_subscription")
        method = data.get("delivery_method")
        url = method.get("url") if isinstance(method, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _bad("delivery_method.url must be an http(s) URL")
        events = data.get("events")
        if not isinstance(events, list) or not events or not set(events) <= set(EVENT_TYPES):
            raise _bad(f"events must be a non-empty list of {', '.join(EVENT_TYPES)}")
        target = data.get("filter")
        if (
            not isinstance(target, dict)
            or target.get("type") != "service_reference"
            or target.get("id") != self.service
        ):
            raise _bad(f"filter must be the service {self.service} (service_reference)")
        secret = base64.b64encode(self.rng.randbytes(48)).decode()
        self.webhook_url, self.webhook_secret = url, secret
        self.subscription = self._subscription(list(events), str(data.get("description") or ""))
        return JSONResponse(
            {"webhook_subscription": self._subscription_json(self.subscription, secret)}
        )

    async def _get_subscription(self, request: Request, user: dict[str, Any]) -> Response:
        return JSONResponse(
            {"webhook_subscription": self._subscription_json(self._subscription_of(request))}
        )

    async def _delete_subscription(self, request: Request, user: dict[str, Any]) -> Response:
        self._subscription_of(request)
        self.subscription, self.webhook_url = None, ""
        self.webhooks.pending.clear()
        return Response(status_code=204)

    async def _enable_subscription(self, request: Request, user: dict[str, Any]) -> Response:
        sub = self._subscription_of(request)
        self._enable(sub)
        return JSONResponse({"webhook_subscription": self._subscription_json(sub)})
