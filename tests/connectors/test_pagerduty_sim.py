"""The PagerDuty simulator and connector on PagerDuty's own rules: pagination and its 10,000
cap, auth and From, 429s, webhook v3 deliveries (retries, drops, the disabled subscription),
run-time faults, and the SPEC §3 rules for PagerDuty (duplicate keys, status paths, urgency,
priorities, assignments, description, notes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from im.clock import FrozenClock, format_time, parse_time
from im.connectors.http import PermanentError
from im.connectors.pagerduty import PagerDutyConnector
from im.sim.pagerduty import PagerDutySimulator
from im.sim.transport import ASGIBridge
from tests.connectors.harness import Harness, Recording
from tests.connectors.vendor_pagerduty import (
    OTHER_SERVICE,
    SAMPLE,
    WEBHOOK_SECRET,
    agent_change,
    agent_client,
    connector,
    make_harness,
)


def key(n: int) -> str:
    return f"im:0f3c2a9e-test:INC-{n}"


@pytest.fixture
def h(clock: FrozenClock) -> Iterator[Harness]:
    harness = make_harness(clock)
    yield harness
    harness.close()


def subscription_id(h: Harness) -> str:
    assert isinstance(h.sim, PagerDutySimulator) and h.sim.subscription is not None
    return str(h.sim.subscription["id"])


def events(h: Harness) -> list[dict[str, Any]]:
    """The events waiting to be delivered, oldest first."""
    return [json.loads(d.body)["event"] for d in h.sim.webhooks.pending]


def edit(h: Harness, incident: str, change: dict[str, Any]) -> httpx.Response:
    return h.agent.put(
        f"/incidents/{incident}", json={"incident": {"type": "incident_reference", **change}}
    )


class Receiver:
    """The other end of the webhooks: answers the statuses it is given (then 200)."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)
        self.received: list[tuple[dict[str, str], bytes]] = []

        async def hook(request: Request) -> Response:
            self.received.append((dict(request.headers), await request.body()))
            return Response(status_code=self.answers.pop(0) if self.answers else 200)

        self.bridge = ASGIBridge(
            Starlette(routes=[Route("/webhooks/test", hook, methods=["POST"])])
        )
        self.client = httpx.Client(transport=self.bridge)

    def close(self) -> None:
        self.client.close()
        self.bridge.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made: list[Receiver] = []

    def make(*answers: int) -> Receiver:
        made.append(Receiver(*answers))
        return made[-1]

    yield make  # type: ignore[misc]
    for item in made:
        item.close()


# -- pagination ----------------------------------------------------------------------------------


def test_listing_pages_like_pagerduty(clock: FrozenClock) -> None:
    h = make_harness(clock, seed_incidents=30)
    try:
        first = h.agent.get("/incidents", params={"date_range": "all"}).json()
        assert (len(first["incidents"]), first["limit"], first["offset"]) == (25, 25, 0)
        assert first["more"] is True and first["total"] is None
        big = h.agent.get("/incidents", params={"date_range": "all", "limit": 500, "total": "true"})
        assert big.json()["limit"] == 100 and big.json()["total"] == 30
        assert big.json()["more"] is False
        numbers = [i["incident_number"] for i in big.json()["incidents"]]
        assert numbers == sorted(numbers)
        newest = h.agent.get(
            "/incidents", params={"date_range": "all", "sort_by": "created_at:desc", "limit": 1}
        ).json()["incidents"][0]
        assert newest["incident_number"] == 30
        capped = h.agent.get("/incidents", params={"offset": 9950, "limit": 100})
        assert capped.status_code == 400
        assert capped.json() == {
            "error": {
                "message": "Invalid Input Provided",
                "code": 2001,
                "errors": ["offset + limit must not exceed 10000"],
            }
        }
        # without date_range=all, since/until bound the creation time: at most 6 months
        window = h.agent.get(
            "/incidents",
            params={"since": format_time(clock.now() - timedelta(seconds=10)), "limit": 100},
        )
        assert len(window.json()["incidents"]) == 10
        wide = h.agent.get("/incidents", params={"since": "2020-01-01", "until": "2021-01-01"})
        assert wide.status_code == 400 and wide.json()["error"]["code"] == 2004
    finally:
        h.close()


@pytest.mark.parametrize("first", [1, 41])
def test_listing_past_the_offset_cap_goes_on_in_creation_windows(
    clock: FrozenClock, first: int
) -> None:
    h = make_harness(clock, seed_incidents=10_050)  # one a second, up to now
    pd = connector(h.sim, clock, page_size=None)  # 100 a page, PagerDuty's most
    # from the first incident, or from the 41st: its window reaches a day back, so it also
    # meets the cap
    since = None if first == 1 else clock.now() - timedelta(seconds=10_050 - first + 1)
    try:
        listed = [(r.key, r.id) for r in pd.list_in_scope(created_since=since)]
    finally:
        pd.close()
        h.close()
    assert len(listed) == 10_050 == len({i for _, i in listed})
    assert [int(k) for k, _ in listed] == list(range(1, 10_051))  # in creation order


def _windows(requests: list[httpx.Request]) -> list[tuple[str, str]]:
    return [
        (r.url.params["since"], r.url.params["until"])
        for r in requests
        if r.url.path == "/incidents" and "since" in r.url.params
    ]


@pytest.mark.parametrize("by_date", [False, True])
def test_created_since_walks_creation_windows_from_the_day_before(
    clock: FrozenClock, by_date: bool
) -> None:
    h = make_harness(clock, range_by_date=by_date)
    transport = Recording(h.sim.transport())
    pd = connector(h.sim, clock, transport=transport)
    try:
        created = []
        for n in range(10):  # one every 40 days and a few hours: 14 months in all
            created.append(pd.create({**SAMPLE, "title": f"t{n}"}, key(n)))
            clock.advance(40 * 86_400 + 5 * 3600 + 17)
        cutoff = parse_time(created[3].created_at) + timedelta(days=3)  # past the slack
        transport.requests.clear()
        listed = list(pd.list_in_scope(created_since=cutoff))
    finally:
        pd.close()
        h.close()
    assert [r.id for r in listed] == [r.id for r in created[4:]]
    windows = _windows(transport.requests)
    assert windows[0][0] == format_time(cutoff - timedelta(days=1))
    spans = [parse_time(until) - parse_time(since) for since, until in windows]
    assert len(set(windows)) >= 2 and all(span <= timedelta(days=180) for span in spans)
    # each window starts within the one before, so a window cut to its date loses nothing
    for (_, until), (since, _) in pairwise(windows):
        assert parse_time(since) <= parse_time(until) - timedelta(days=1)
    sorts = {r.url.params.get("sort_by") for r in transport.requests if r.url.path == "/incidents"}
    assert "created_at:asc,incident_number:asc" in sorts


def test_since_and_until_are_read_like_pagerduty(h: Harness) -> None:
    for n in range(3):
        h.connector.create({**SAMPLE, "title": f"t{n}"}, key(n))
        h.clock.advance(3600)

    def titles(**params: str) -> list[str]:
        answer = h.agent.get("/incidents", params={"limit": "100", **params})
        assert answer.status_code == 200, answer.text
        return [i["title"] for i in answer.json()["incidents"]]

    assert titles(since="2026-11-27T10:00:00Z") == ["t1", "t2"]
    assert titles(since="2026-11-27T10:00:00.000+00:00", until="2026-11-27T11:00:00Z") == ["t1"]
    assert titles(since="2026-11-27") == ["t0", "t1", "t2"]
    # a time without an offset is read in time_zone (else the account's, UTC here)
    assert titles(since="2026-11-27T11:00:00", time_zone="Europe/Berlin") == ["t1", "t2"]
    assert titles(since="2026-11-27T11:00:00") == ["t2"]
    unknown = h.agent.get("/incidents", params={"since": "2026-11-27", "time_zone": "Mars/Base"})
    assert unknown.status_code == 400
    for since in ("yesterday", "2026-13-01"):
        answer = h.agent.get("/incidents", params={"since": since})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == 2004


def test_since_and_until_may_count_whole_days(clock: FrozenClock) -> None:
    h = make_harness(clock, range_by_date=True)
    try:
        h.connector.create({**SAMPLE, "title": "at nine"}, key(1))
        clock.advance(3600)
        h.connector.create({**SAMPLE, "title": "at ten"}, key(2))
        params = {"since": "2026-11-27T09:30:00Z", "until": "2026-11-28T09:30:00Z"}
        answer = h.agent.get("/incidents", params=params).json()["incidents"]
        assert [i["title"] for i in answer] == ["at nine", "at ten"]  # since cut to the date
        params = {"since": "2026-11-26T00:00:00Z", "until": "2026-11-27T23:59:00Z"}
        assert h.agent.get("/incidents", params=params).json()["incidents"] == []  # until too
    finally:
        h.close()


# -- auth, From, errors, 429 ---------------------------------------------------------------------


def test_auth_failures_answer_like_pagerduty(h: Harness) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer agent-token"},
        {"Authorization": "Token token=nope"},
    ):
        answer = h.agent.get("/incidents", headers=headers)
        assert answer.status_code == 401
        assert answer.json() == {"error": {"message": "Authentication failed", "code": 2006}}
    body = {
        "incident": {
            "type": "incident",
            "title": "x",
            "service": {"id": "PSVC001", "type": "service_reference"},
        }
    }
    for sender in ("", "nobody@example.com"):
        answer = h.agent.post("/incidents", json=body, headers={"From": sender})
        assert answer.status_code == 400
        assert answer.json()["error"]["errors"] == ["The From header is missing or invalid"]
    assert h.sim.record_count() == 0


def test_rate_limits_answer_with_pagerdutys_headers(clock: FrozenClock) -> None:
    sim = PagerDutySimulator(clock=clock, requests_per_minute=3)
    agent = agent_client(sim)
    try:
        clock.advance(60 - clock.now().second)  # the start of a minute
        answers = [agent.get("/priorities") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0].headers["ratelimit-limit"] == "3"
        assert answers[0].headers["ratelimit-remaining"] == "2"
        assert answers[3].headers["ratelimit-reset"] == "60"
        assert answers[3].json() == {"error": {"message": "Rate Limit Exceeded", "code": 2020}}
        clock.advance(60)
        assert agent.get("/priorities").status_code == 200
    finally:
        agent.close()
        sim.shutdown()


def test_faults_change_at_run_time(h: Harness) -> None:
    answer = h.agent.post("/_sim/faults", json={"error_rate": 1})
    assert answer.status_code == 200 and answer.json()["error_rate"] == 1
    failed = h.agent.get("/priorities")
    assert failed.status_code == 500
    assert failed.json() == {"error": {"message": "simulated internal error", "code": 2000}}
    h.agent.post("/_sim/faults", json={"error_rate": 0, "rate_limit_rate": 1, "retry_after": 9})
    limited = h.agent.get("/priorities")
    assert limited.status_code == 429 and limited.headers["ratelimit-reset"] == "9"
    assert limited.json()["error"]["code"] == 2020
    h.agent.post("/_sim/faults", json={"rate_limit_rate": 0})
    assert h.agent.get("/priorities").status_code == 200


# -- webhook deliveries --------------------------------------------------------------------------


def test_deliveries_are_retried_on_5xx_429_and_no_answer(h: Harness, receiver: Any) -> None:
    them = receiver(500, 429, 200)
    record = h.connector.create(SAMPLE, key(1))
    h.sim.webhooks.pending.clear()
    edit(h, record.id, {"priority": "P1"})
    assert h.sim.webhooks.deliver(them.client) == 1  # 500: again in 30 s
    h.clock.advance(29)
    assert h.sim.webhooks.deliver(them.client) == 0
    h.clock.advance(1)
    assert h.sim.webhooks.deliver(them.client) == 1  # 429: again in 60 s
    h.clock.advance(60)
    assert h.sim.webhooks.deliver(them.client) == 1
    assert [d.outcome for d in h.sim.webhooks.log] == ["delivered"]
    ids = {headers["x-webhook-id"] for headers, _ in them.received}
    assert len(them.received) == 3 and len(ids) == 1  # the same delivery each time
    headers, body = them.received[-1]
    assert headers["user-agent"] == "PagerDuty-Webhook/V3.0"
    assert headers["x-webhook-subscription"] == subscription_id(h)
    assert json.loads(body)["event"]["id"] in ids
    # nothing answering is retried too
    edit(h, record.id, {"priority": "P2"})
    down = httpx.Client(transport=httpx.MockTransport(_refuse))
    assert h.sim.webhooks.deliver(down) == 1
    assert h.sim.webhooks.pending[0].attempt == 2
    down.close()


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def test_a_4xx_drops_and_three_drops_disable_the_subscription(h: Harness, receiver: Any) -> None:
    gone = receiver(410, 410, 410)
    record = h.connector.create(SAMPLE, key(2))
    h.sim.webhooks.pending.clear()
    for priority in ("P1", "P2", "P3"):
        edit(h, record.id, {"priority": priority})
        h.sim.webhooks.deliver(gone.client)
    assert [d.outcome for d in h.sim.webhooks.log] == ["failed"] * 3  # none retried
    sub_id = subscription_id(h)
    shown = h.agent.get(f"/webhook_subscriptions/{sub_id}").json()["webhook_subscription"]
    assert shown["delivery_method"]["temporarily_disabled"] is True
    edit(h, record.id, {"priority": "P4"})
    assert h.sim.webhooks.pending == []  # not sent while disabled
    enabled = h.agent.post(f"/webhook_subscriptions/{sub_id}/enable")
    assert (
        enabled.json()["webhook_subscription"]["delivery_method"]["temporarily_disabled"] is False
    )
    edit(h, record.id, {"priority": "P5"})
    assert h.sim.webhooks.deliver(gone.client) == 1
    assert h.sim.webhooks.log[-1].outcome == "delivered"


def test_a_disabled_subscription_comes_back_after_24_hours(h: Harness, receiver: Any) -> None:
    gone = receiver(400, 400, 400)
    record = h.connector.create(SAMPLE, key(3))
    h.sim.webhooks.pending.clear()
    for priority in ("P1", "P2", "P3"):
        edit(h, record.id, {"priority": priority})
        h.sim.webhooks.deliver(gone.client)
    h.clock.advance(24 * 3600)
    edit(h, record.id, {"priority": "P4"})
    assert [e["event_type"] for e in events(h)] == ["incident.priority_updated"]


def test_a_new_subscription_shows_its_secret_once_and_receives_the_webhooks(
    h: Harness,
) -> None:
    body = {
        "webhook_subscription": {
            "type": "webhook_subscription",
            "delivery_method": {
                "type": "http_delivery_method",
                "url": "https://im.example/webhooks/pd",
            },
            "events": ["incident.annotated"],
            "filter": {"id": "PSVC001", "type": "service_reference"},
        }
    }
    created = h.agent.post("/webhook_subscriptions", json=body).json()["webhook_subscription"]
    secret = created["delivery_method"]["secret"]
    assert secret and secret != WEBHOOK_SECRET
    shown = h.agent.get(f"/webhook_subscriptions/{created['id']}").json()["webhook_subscription"]
    assert shown["delivery_method"]["secret"] is None
    record = h.connector.create(SAMPLE, key(4))  # incident.triggered: not subscribed
    h.agent_journal(record.id, "work_notes", "subscribed")
    [delivery] = h.sim.webhooks.pending
    request = h.request_for(delivery)
    assert h.sim.webhooks.prepare(delivery)[0] == "https://im.example/webhooks/pd"
    h.connector.verify_webhook(request, [secret], h.clock.now())


def test_signatures_carry_every_secret_while_rotating(clock: FrozenClock) -> None:
    h = make_harness(clock, old_webhook_secrets=["the-old-secret"])
    try:
        h.connector.create(SAMPLE, key(5))
        request = h.request_for(h.sim.webhooks.pending[0])
        assert request.headers["x-pagerduty-signature"].count("v1=") == 2
        for secret in ("the-old-secret", WEBHOOK_SECRET):
            h.connector.verify_webhook(request, [secret], clock.now())
    finally:
        h.close()


# -- the vendor's rules --------------------------------------------------------------------------


def test_a_duplicate_open_key_is_refused_and_create_returns_the_incident(h: Harness) -> None:
    first = h.connector.create(SAMPLE, key(6))
    again = h.connector.create({**SAMPLE, "title": "a retry"}, key(6))
    assert again.id == first.id and h.sim.record_count() == 1
    body = {
        "incident": {
            "type": "incident",
            "title": "by hand",
            "service": {"id": "PSVC001", "type": "service_reference"},
            "incident_key": key(6),
        }
    }
    refused = h.agent.post("/incidents", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": "Invalid Input Provided",
        "code": 2001,
        "errors": ["Open incident with matching dedup key already exists on this service"],
    }
    edit(h, first.id, {"status": "resolved"})
    assert h.agent.post("/incidents", json=body).status_code == 201  # resolved keys are free


def test_another_services_incidents_are_outside_the_scope(h: Harness) -> None:
    transport = Recording(h.sim.transport())
    pd = connector(h.sim, h.clock, transport=transport)
    other = h.other_scope()
    try:
        ours = [pd.create({**SAMPLE, "title": f"ours {n}"}, key(n)).id for n in range(3)]
        h.sim.webhooks.pending.clear()
        theirs = other.create({**SAMPLE, "title": "theirs"}, key(0)).id  # keys are per service
        assert h.sim.webhooks.pending == []  # the subscription is for our service only
        service = h.agent.get(f"/services/{OTHER_SERVICE}").raise_for_status().json()["service"]
        assert service["name"] == "Another team's service"
        assert {r.id for r in pd.list_in_scope()} == set(ours)
        assert {r.id for r in other.list_in_scope()} == {theirs}
        transport.requests.clear()
        asked = [*ours, theirs, "QMISSNG"]
        assert pd.in_scope(asked) == set(ours)
        # one read per incident: PagerDuty lists no incidents by id
        assert sorted(transport.seen) == sorted(("GET", f"/incidents/{i}") for i in asked)
    finally:
        pd.close()
        other.close()


def test_status_paths_follow_pagerduty(h: Harness) -> None:
    record = h.connector.create(SAMPLE, key(7))
    h.clock.advance(1)
    acked = h.connector.update(record.id, {"status": "acknowledged"})
    refused = edit(h, record.id, {"status": "triggered"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 1003
    h.clock.advance(1)
    skipped = h.connector.update(record.id, {"status": "triggered"})
    assert skipped.fields["status"] == "acknowledged" and skipped.version == acked.version
    assert any("back to triggered" in w for w in skipped.warnings)
    h.sim.webhooks.pending.clear()
    h.connector.update(record.id, {"status": "closed"})  # PagerDuty's resolved
    h.connector.update(record.id, {"status": "acknowledged"})  # reopens, then acknowledged
    h.connector.update(record.id, {"status": "resolved"})
    h.connector.update(record.id, {"status": "triggered"})  # reopens
    assert [e["event_type"] for e in events(h)] == [
        "incident.resolved",
        "incident.reopened",
        "incident.acknowledged",
        "incident.resolved",
        "incident.reopened",
    ]
    assert h.connector.get(record.id).fields["status"] == "triggered"
    assert h.connector.normalise("status", "closed") == "resolved"


def test_only_changes_pagerduty_announces_send_webhooks(h: Harness) -> None:
    record = h.connector.create(SAMPLE, key(8))
    h.sim.webhooks.pending.clear()
    h.connector.update(record.id, {"title": "renamed", "severity": "sev5"})
    assert events(h) == []  # no event for a title or urgency change
    assert h.connector.get(record.id).fields["severity"] == "sev4"  # low
    h.connector.update(record.id, {"priority": "p4"})
    h.connector.update(record.id, {"assigned_to": "bob@example.com"})
    assert [e["event_type"] for e in events(h)] == [
        "incident.priority_updated",
        "incident.reassigned",
    ]
    assert all(e["data"]["title"] == "renamed" and "updated_at" not in e["data"] for e in events(h))


def test_urgency_is_lossy_and_normalised_both_ways(h: Harness) -> None:
    normalise = h.connector.normalise
    assert [normalise("severity", s) for s in ("sev1", "sev2", "sev3", "sev4", "sev5")] == [
        "sev2",
        "sev2",
        "sev4",
        "sev4",
        "sev4",
    ]
    assert normalise("priority", "") == "" and normalise("priority", "p3") == "p3"
    assert normalise("assigned_to", " Alice@Example.com ") == "alice@example.com"
    record = h.connector.create({**SAMPLE, "severity": "sev1"}, key(9))
    assert h.connector.get(record.id).fields["severity"] == "sev2"


def test_description_is_create_only(h: Harness) -> None:
    record = h.connector.create(SAMPLE, key(10))
    after = h.connector.update(record.id, {"description": "new words"})
    assert any("description" in w for w in after.warnings)
    assert h.connector.get(record.id).fields["description"] == SAMPLE["description"]
    assert h.connector.updates_description is False


def test_escalation_policy_and_assignee_stay_apart(h: Harness) -> None:
    record = h.connector.create(SAMPLE, key(11))
    assert (record.fields["assigned_to"], record.fields["escalation_policy"]) == (
        "alice@example.com",
        "PEP0002",
    )
    moved = h.connector.update(record.id, {"escalation_policy": "PEP0001"})
    assert (moved.fields["assigned_to"], moved.fields["escalation_policy"]) == (
        "alice@example.com",
        "PEP0001",
    )
    unassigned = h.connector.update(record.id, {"assigned_to": ""})
    assert (unassigned.fields["assigned_to"], unassigned.fields["escalation_policy"]) == (
        "",
        "PEP0001",
    )
    # a person moving it to another policy in PagerDuty reassigns it there
    edit(h, record.id, agent_change(h.agent, "assigned_to", "bob@example.com"))
    edit(h, record.id, agent_change(h.agent, "escalation_policy", "PEP0002"))
    assert h.connector.get(record.id).fields["assigned_to"] == ""
    unknown = h.connector.update(record.id, {"assigned_to": "nobody@example.com"})
    assert any("nobody@example.com" in w for w in unknown.warnings)


def test_an_account_without_priorities_skips_priority_with_a_warning(clock: FrozenClock) -> None:
    h = make_harness(clock, priorities={})
    try:
        assert h.agent.get("/priorities").status_code == 402
        record = h.connector.create(SAMPLE, key(12))
        assert record.fields["priority"] == ""
        assert any("no incident priorities" in w for w in record.warnings)
        [priorities] = [c for c in h.connector.check() if c.name == "priorities"]
        assert priorities.ok and priorities.warning
    finally:
        h.close()


def test_notes_are_capped_like_pagerduty(clock: FrozenClock) -> None:
    h = make_harness(clock, max_notes=2)
    try:
        record = h.connector.create(SAMPLE, key(13))
        h.connector.add_journal(record.id, "work_notes", "one")
        h.agent_journal(record.id, "work_notes", "two")
        with pytest.raises(PermanentError) as caught:
            h.connector.add_journal(record.id, "work_notes", "three")
        assert "at most 2 notes" in caught.value.message
        with pytest.raises(PermanentError):
            h.connector.add_journal(record.id, "comments", "PagerDuty has no comments")
        assert [e.body for e in h.connector.list_journal(record.id)] == ["one", "two"]
    finally:
        h.close()


def test_list_changed_keeps_what_was_updated_since(h: Harness) -> None:
    old = h.connector.create({**SAMPLE, "title": "old"}, key(14))
    quiet = h.connector.create({**SAMPLE, "title": "quiet"}, key(15))
    h.clock.advance(3600)
    since = h.clock.now()
    h.connector.update(old.id, {"title": "renamed an hour later"})  # no webhook for this
    changed = [r.id for r in h.connector.list_changed(since)]
    assert changed == [old.id] and quiet.id not in changed


def test_webhooks_parse_into_changes_journals_and_our_own_echoes(h: Harness) -> None:
    record = h.connector.create(SAMPLE, key(16))
    [triggered] = [h.connector.parse_webhook(h.request_for(d)) for d in h.sim.webhooks.pending[:1]]
    assert triggered is not None and triggered.created and triggered.by_self
    assert triggered.correlation_key == key(16)
    assert dict(triggered.changes) == {
        "status": "triggered",
        "title": SAMPLE["title"],
        "severity": "sev2",
        "priority": "p2",
        "assigned_to": "alice@example.com",
        "escalation_policy": "PEP0001",  # the escalation policy follows in incident.reassigned
    }
    h.sim.webhooks.pending.clear()
    ours = h.connector.add_journal(record.id, "work_notes", "from im")
    h.agent_journal(record.id, "work_notes", "from the agent")
    parsed = [h.connector.parse_webhook(h.request_for(d)) for d in h.sim.webhooks.pending]
    assert [(e.by_self, e.actor, e.journals[0].body) for e in parsed if e] == [
        (True, "im-integration@example.com", "from im"),
        (False, "agent@example.com", "from the agent"),
    ]
    assert parsed[0] is not None and parsed[0].journals[0].vendor_id == ours.vendor_id


def test_check_warns_about_a_persons_token_and_a_mismatched_from(clock: FrozenClock) -> None:
    h = make_harness(clock)
    person = connector(
        h.sim, clock, token="agent-token", settings={"from_email": "agent@example.com"}
    )
    mismatch = connector(h.sim, clock, token="agent-token")
    missing = connector(
        h.sim, clock, settings={"service": "PNOPE01", "escalation_policy": "PNOPE02"}
    )
    try:
        [kind] = [c for c in person.check() if c.name == "account"]
        assert kind.ok and kind.warning and "agent@example.com" in kind.detail
        assert any(c.warning and "--from-email" in c.detail for c in mismatch.check())
        failed = {c.name for c in missing.check() if not c.ok}
        assert failed == {"service", "escalation policy"}
    finally:
        for item in (person, mismatch, missing):
            item.close()
        h.close()


def test_check_refuses_a_read_only_user(clock: FrozenClock) -> None:
    users = [
        {"email": "im-integration@example.com", "name": "im integration", "role": "read_only_user"}
    ]
    h = make_harness(clock, users=users)
    try:
        [permissions] = [c for c in h.connector.check() if c.name == "permissions"]
        assert not permissions.ok and "read_only_user" in permissions.detail
    finally:
        h.close()


def test_webhook_setup_is_the_v3_subscription_to_create(h: Harness) -> None:
    pd: PagerDutyConnector = h.connector  # type: ignore[assignment]
    text = pd.webhook_setup("https://im.example/webhooks/test-pd", None)
    assert "https://im.example/webhooks/test-pd" in text
    assert '"filter": {\n      "id": "PSVC001",\n      "type": "service_reference"' in text
    assert '"incident.annotated"' in text and '"incident.reassigned"' in text
    assert "ONLY in that create" in text
    assert "im integration configure test-pd --webhook-secret <webhook-secret>" in text
    shown = pd.webhook_setup("https://im.example/webhooks/test-pd", "s3cr3t")
    assert "--webhook-secret s3cr3t" in shown
