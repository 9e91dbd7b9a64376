"""The Jira simulator and connector together: what is particular to Jira (SPEC §3 and the
vendor research): search lag and reconcileIssues, nextPageToken paging and its limits,
transitions walked by the shortest path, ADF, time zones, JSM internal comments, auth and
rate-limit answers, webhook signing and Jira's delivery retries, run-time faults."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from im.clock import FrozenClock
from im.connectors.base import WebhookRequest
from im.connectors.http import PermanentError, RecordNotFoundError, RequestTimeoutError
from im.connectors.jira import JiraConnector, jira_version
from im.errors import SignatureError
from im.sim.jira import (
    PASSWORD_AUTH_TEXT,
    JiraSimulator,
    JiraStatus,
    JiraUser,
    WorkflowTransition,
)
from im.sim.transport import ASGIBridge
from tests.connectors.harness import Harness, Recording
from tests.connectors.vendor_jira import (
    URL,
    WEBHOOK_SECRET,
    agent_client,
    connector_config,
    make_harness,
)

KEY = "im:0f3c2a9e-test:INC-{}"
SAMPLE = {"title": "Disk full on db-1", "priority": "p3", "status": "triggered"}


@pytest.fixture
def h(clock: FrozenClock) -> Iterator[Harness]:
    harness = make_harness(clock)
    yield harness
    harness.close()


def counted(h: Harness, **settings: str) -> tuple[JiraConnector, Recording]:
    assert isinstance(h.sim, JiraSimulator)
    transport = Recording(h.sim.transport())
    config = connector_config(h.sim, h.clock, **settings)
    config = type(config)(**{**config.__dict__, "transport": transport})
    return JiraConnector(config), transport


def sim_of(h: Harness) -> JiraSimulator:
    assert isinstance(h.sim, JiraSimulator)
    return h.sim


def search(client: httpx.Client, jql: str, **params: Any) -> httpx.Response:
    return client.get("/rest/api/3/search/jql", params={"jql": jql, **params})


# -- search: lag, reconcileIssues, paging -------------------------------------------------------


def test_a_new_issue_reaches_search_only_after_the_lag(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    jql = f'project = OPS AND labels = "{KEY.format(1)}"'
    assert search(h.agent, jql).json()["issues"] == []  # the index lags
    assert h.agent.get(f"/rest/api/3/issue/{record.id}").status_code == 200  # GET is immediate
    reconciled = search(h.agent, jql, reconcileIssues=record.id).json()["issues"]
    assert [i["id"] for i in reconciled] == [record.id]
    h.clock.advance(1.0)
    assert [i["id"] for i in search(h.agent, jql).json()["issues"]] == [record.id]


def test_a_change_reaches_search_only_after_the_lag(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    h.clock.advance(5)
    h.agent_edit(record.id, "title", "Disk full on db-2")
    found = search(h.agent, "project = OPS", fields="summary").json()["issues"]
    assert found[0]["fields"]["summary"] == "Disk full on db-1"  # stale for a moment
    h.clock.advance(1.0)
    found = search(h.agent, "project = OPS", fields="summary").json()["issues"]
    assert found[0]["fields"]["summary"] == "Disk full on db-2"


def test_find_by_correlation_waits_for_the_index(h: Harness) -> None:
    sim_of(h).search_lag = 2.5
    h.sim.faults.update({"timeout_rate": 1})
    with pytest.raises(RequestTimeoutError):
        h.connector.create(SAMPLE, KEY.format(2))
    h.sim.faults.update({"timeout_rate": 0})
    start = h.clock.now()
    found = h.connector.find_by_correlation(KEY.format(2))
    assert found is not None and found.correlation_key == KEY.format(2)
    assert h.clock.now() - start == timedelta(seconds=3.5)  # 0.5 + 1 + 2 s of waiting
    assert h.connector.find_by_correlation(KEY.format(3)) is None
    assert h.sim.record_count() == 1


def test_search_pages_with_next_page_token_and_limits(h: Harness) -> None:
    for n in range(5):
        h.connector.create({**SAMPLE, "title": f"t{n}"}, KEY.format(n))
    h.clock.advance(2)
    first = search(h.agent, "project = OPS ORDER BY key ASC", maxResults=2, fields="summary")
    body = first.json()
    assert [i["fields"]["summary"] for i in body["issues"]] == ["t0", "t1"]
    assert body["isLast"] is False and body["nextPageToken"]
    titles = [i["fields"]["summary"] for i in body["issues"]]
    while "nextPageToken" in body:
        body = search(
            h.agent,
            "project = OPS ORDER BY key ASC",
            maxResults=2,
            fields="summary",
            nextPageToken=body["nextPageToken"],
        ).json()
        titles += [i["fields"]["summary"] for i in body["issues"]]
    assert titles == ["t0", "t1", "t2", "t3", "t4"] and body["isLast"] is True
    # ids only by default; at most 100 per page with fields, 5000 for ids
    ids_only = search(h.agent, "project = OPS").json()["issues"]
    assert ids_only and all(set(i) == {"id"} for i in ids_only)
    for n in range(5, 105):
        h.agent.post(
            "/rest/api/3/issue",
            json={
                "fields": {
                    "project": {"key": "OPS"},
                    "issuetype": {"name": "Incident"},
                    "summary": f"t{n}",
                }
            },
        ).raise_for_status()
    h.clock.advance(2)
    assert (
        len(search(h.agent, "project = OPS", maxResults=500, fields="*all").json()["issues"]) == 100
    )
    assert len(search(h.agent, "project = OPS", maxResults=500).json()["issues"]) == 105


@pytest.mark.parametrize(
    ("jql", "message"),
    [
        ("", "Unbounded JQL queries are not allowed here"),
        ("order by key desc", "Unbounded JQL queries are not allowed here"),
        ("colour = red", "Field 'colour' does not exist or you do not have permission"),
        ("project = NOPE", "The value 'NOPE' does not exist for the field 'project'."),
        ('updated >= "yesterday"', "Date value 'yesterday' for field 'updated' is invalid."),
        ("project = OPS AND", "Error in the JQL Query"),
        ("project = OPS ORDER BY created ASC key ASC", "Expecting either 'OR' or 'AND'"),
        ("project = OPS ORDER BY created ASC,", "The query ended unexpectedly"),
        ("project = OPS ORDER BY colour", "Field 'colour' does not exist"),
        ("project = OPS ORDER BY description", "Not able to sort using field 'description'."),
        ("project = OPS ORDER BY labels", "Not able to sort using field 'labels'."),
    ],
)
def test_bad_jql_is_refused_like_jira(h: Harness, jql: str, message: str) -> None:
    response = search(h.agent, jql)
    assert response.status_code == 400
    assert message in response.json()["errorMessages"][0]


def test_bad_page_token_and_removed_search(h: Harness) -> None:
    token = base64.urlsafe_b64encode(json.dumps({"o": 1, "q": "other"}).encode()).decode()
    assert search(h.agent, "project = OPS", nextPageToken=token).status_code == 400
    removed = h.agent.get("/rest/api/3/search", params={"jql": "project = OPS"})
    assert removed.status_code == 410
    assert "/rest/api/3/search/jql" in removed.json()["errorMessages"][0]


def test_created_since_and_two_order_keys_select_like_jira(h: Harness) -> None:
    first = h.connector.create({**SAMPLE, "title": "first"}, KEY.format(1))
    twin = h.connector.create({**SAMPLE, "title": "same millisecond"}, KEY.format(2))
    h.clock.advance(120)
    cutoff = h.clock.now()
    last = h.connector.create({**SAMPLE, "title": "last"}, KEY.format(3))
    h.clock.advance(2)

    def keys(jql: str) -> list[str]:
        answer = search(h.agent, jql, fields="summary")
        assert answer.status_code == 200, answer.text
        return [i["key"] for i in answer.json()["issues"]]

    ordered = [first.key, twin.key, last.key]
    assert keys("project = OPS ORDER BY created ASC, key ASC") == ordered
    assert keys("project = OPS ORDER BY created DESC, key DESC") == ordered[::-1]
    assert keys("project = OPS ORDER BY created ASC, key DESC") == [twin.key, first.key, last.key]
    assert keys(f'project = OPS AND created >= "{cutoff:%Y-%m-%d %H:%M}"') == [last.key]
    assert keys('project = OPS AND created >= "2026-11-27" ORDER BY created') == ordered


def test_issues_named_by_id_or_key_must_exist_and_be_visible(h: Harness) -> None:
    one = h.connector.create(SAMPLE, KEY.format(1))
    two = h.connector.create(SAMPLE, KEY.format(2))
    assert h.agent.delete(f"/rest/api/3/issue/{two.id}").status_code == 204
    h.clock.advance(2)

    def ids(jql: str) -> Any:
        answer = search(h.agent, jql)
        return answer.json()["errorMessages"] if answer.status_code == 400 else answer.json()

    found = ids(f"project = OPS AND id in ({one.id}, {one.key})")
    assert [i["id"] for i in found["issues"]] == [one.id]
    assert [i["id"] for i in ids(f"key = {one.id}")["issues"]] == [one.id]
    # Jira names every issue that is gone (or hidden), and answers nothing else
    assert ids(f"project = OPS AND id in ({one.id}, {two.id}, 99999)") == [
        f"A value with ID '{two.id}' does not exist for the field 'id'.",
        "A value with ID '99999' does not exist for the field 'id'.",
    ]
    assert ids(f"issuekey = {two.key}") == [
        f"An issue with key '{two.key}' does not exist for field 'issuekey'."
    ]
    sim_of(h).denied["agent@example.com"] = {"BROWSE_PROJECTS"}
    assert ids(f"id = {one.id}") == [
        f"A value with ID '{one.id}' does not exist for the field 'id'."
    ]


def test_in_scope_asks_for_ids_within_the_scope_jql_in_batches(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("im.connectors.jira.ID_BATCH", 3)
    urgent = [h.connector.create({**SAMPLE, "priority": "p1"}, KEY.format(n)).id for n in range(4)]
    calm = h.connector.create(SAMPLE, KEY.format(9)).id
    gone = h.connector.create({**SAMPLE, "priority": "p1"}, KEY.format(10)).id
    assert h.agent.delete(f"/rest/api/3/issue/{gone}").status_code == 204
    h.clock.advance(2)
    ours, transport = counted(h, jql="priority = Highest ORDER BY created")
    asked = [urgent[0], gone, calm, urgent[1], "OPS-1", urgent[2], urgent[3], "99999"]
    assert ours.in_scope(asked) == set(urgent)
    bodies = [json.loads(r.content) for r in transport.requests]
    assert {tuple(b["fields"]) for b in bodies} == {("id",)}
    scope = 'project = "OPS" AND issuetype = "Incident" AND (priority = Highest)'
    # batches of 3 numeric ids, paged as usual (two a page here); a refused batch is asked
    # again without the ids Jira named
    last = f"{scope} AND id in ({urgent[1]}, {urgent[2]}, {urgent[3]})"
    assert [(b["jql"], "nextPageToken" in b) for b in bodies] == [
        (f"{scope} AND id in ({urgent[0]}, {gone}, {calm})", False),
        (f"{scope} AND id in ({urgent[0]}, {calm})", False),
        (last, False),
        (last, True),
        (f"{scope} AND id in (99999)", False),
    ]
    ours.close()


def test_list_in_scope_created_since_reads_dates_in_the_accounts_time_zone(
    clock: FrozenClock,
) -> None:
    h = make_harness(clock, time_zone="America/Los_Angeles")
    try:
        old = h.connector.create({**SAMPLE, "title": "old"}, KEY.format(1))
        clock.advance(3600)
        cutoff = clock.now()
        new = [
            h.connector.create({**SAMPLE, "title": f"new {n}"}, KEY.format(2 + n)) for n in range(3)
        ]
        clock.advance(5)
        ours, transport = counted(h)
        listed = [r.id for r in ours.list_in_scope(created_since=cutoff)]
        assert listed == [r.id for r in new] and old.id not in listed
        # 09:59 UTC is 01:59 in Los Angeles (UTC-8 in November), a minute before the cutoff
        bodies = [json.loads(r.content) for r in transport.requests if r.url.path.endswith("/jql")]
        assert {b["jql"] for b in bodies} == {
            'project = "OPS" AND issuetype = "Incident" AND created >= "2026-11-27 01:59" '
            "ORDER BY created ASC, key ASC"
        }
        assert len(bodies) == 2  # two a page
        ours.close()
    finally:
        h.close()


def test_list_changed_reads_dates_in_the_accounts_time_zone(clock: FrozenClock) -> None:
    h = make_harness(clock, time_zone="Asia/Shanghai")
    try:
        old = h.connector.create({**SAMPLE, "title": "old"}, KEY.format(1))
        clock.advance(3600)
        since = clock.now()
        clock.advance(90)
        new = h.connector.create({**SAMPLE, "title": "new"}, KEY.format(2))
        raw = h.agent.get(f"/rest/api/3/issue/{new.id}", params={"fields": "updated"}).json()
        assert raw["fields"]["updated"].endswith("+0800")  # Jira's format, the user's zone
        assert new.version == jira_version(raw["fields"]["updated"])
        assert new.version.endswith("Z")
        clock.advance(5)
        changed = [r.id for r in h.connector.list_changed(since)]
        assert changed == [new.id] and old.id not in changed
    finally:
        h.close()


# -- status ---------------------------------------------------------------------------------------


def _status_changes(h: Harness) -> list[tuple[str, str]]:
    steps = []
    for delivery in h.sim.webhooks.pending:
        body = json.loads(delivery.body)
        for item in body.get("changelog", {}).get("items", []):
            if item["field"] == "status":
                steps.append((item["fromString"], item["toString"]))
    return steps


def test_status_walks_the_two_step_path(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    h.sim.webhooks.pending.clear()
    h.connector.update(record.id, {"status": "closed"})
    assert _status_changes(h) == [
        ("Open", "In Progress"),
        ("In Progress", "Resolved"),
        ("Resolved", "Closed"),
    ]


def test_the_workflow_is_learned_so_later_walks_are_shortest(clock: FrozenClock) -> None:
    # Open offers a detour through Triage first; the walk cannot know until it has seen it
    sim = JiraSimulator(clock=clock)
    statuses = [*sim.statuses, JiraStatus("10011", "Triage", "indeterminate")]
    workflow = [
        WorkflowTransition("71", "Triage", "Open", "Triage"),
        WorkflowTransition("72", "Triaged", "Triage", "In Progress"),
        *sim.workflow,
    ]
    sim.shutdown()
    h = make_harness(clock, statuses=statuses, workflow=workflow)
    connector, transport = counted(h)
    try:
        first = connector.create(SAMPLE, KEY.format(1))
        second = connector.create(SAMPLE, KEY.format(2))
        h.sim.webhooks.pending.clear()
        connector.update(first.id, {"status": "resolved"})
        assert _status_changes(h) == [
            ("Open", "Triage"),
            ("Triage", "In Progress"),
            ("In Progress", "Resolved"),
        ]
        h.sim.webhooks.pending.clear()
        connector.update(second.id, {"status": "resolved"})
        assert _status_changes(h) == [("Open", "In Progress"), ("In Progress", "Resolved")]
        posts = [p for m, p in transport.seen if m == "POST" and p.endswith("/transitions")]
        assert len(posts) == 5
    finally:
        connector.close()
        h.close()


def test_no_transition_path_is_a_permanent_error_listing_what_is_offered(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    h.connector.update(record.id, {"status": "closed"})
    with pytest.raises(PermanentError) as caught:
        h.connector.update(record.id, {"status": "triggered"})
    assert "no transition path from 'Closed' to 'Open'" in caught.value.message
    assert "available transitions: none" in caught.value.message
    assert h.connector.get(record.id).fields["status"] == "closed"


def test_a_status_the_workflow_lacks_is_refused_before_any_move(clock: FrozenClock) -> None:
    h = make_harness(clock)
    try:
        config = connector_config(sim_of(h), clock)
        fields = dict(config.fields)
        status = fields["status"]
        fields["status"] = type(status)(
            **{**status.__dict__, "values": {**status.values, "acknowledged": "Investigating"}}
        )
        connector = JiraConnector(type(config)(**{**config.__dict__, "fields": fields}))
        record = connector.create(SAMPLE, KEY.format(1))
        with pytest.raises(PermanentError) as caught:
            connector.update(record.id, {"status": "acknowledged"})
        assert "no status 'Investigating'" in caught.value.message
        assert "Start progress (-> In Progress)" in caught.value.message
        assert connector.get(record.id).fields["status"] == "triggered"
        connector.close()
    finally:
        h.close()


def test_unknown_external_status_is_skipped_with_a_warning(clock: FrozenClock) -> None:
    statuses = [*JiraSimulator(clock=clock).statuses, JiraStatus("10010", "Waiting", "new")]
    workflow = [WorkflowTransition("61", "Wait", "Open", "Waiting")]
    h = make_harness(clock, statuses=statuses, workflow=workflow)
    try:
        record = h.connector.create(SAMPLE, KEY.format(1))
        h.sim.webhooks.pending.clear()
        h.agent.post(
            f"/rest/api/3/issue/{record.id}/transitions", json={"transition": {"id": "61"}}
        ).raise_for_status()
        fetched = h.connector.get(record.id)
        assert "status" not in fetched.fields
        assert fetched.warnings == ("status: Jira value 'Waiting' has no platform value",)
        event = h.connector.parse_webhook(h.request_for(h.sim.webhooks.pending[-1]))
        assert event is not None and "status" not in event.changes and event.warnings
    finally:
        h.close()


def test_status_cannot_be_set_by_an_edit(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    response = h.agent.put(
        f"/rest/api/3/issue/{record.id}", json={"fields": {"status": {"name": "Closed"}}}
    )
    assert response.status_code == 400
    assert "Field 'status' cannot be set" in response.json()["errors"]["status"]
    bad = h.agent.post(
        f"/rest/api/3/issue/{record.id}/transitions", json={"transition": {"id": "41"}}
    )
    assert bad.status_code == 400
    assert bad.json()["errorMessages"] == ["Transition id '41' is not valid for this issue."]


# -- fields, ADF, users ---------------------------------------------------------------------------


def test_description_travels_as_adf_and_compares_as_text(h: Harness) -> None:
    text = "  First line\nsecond line   \n\n\n\nNext paragraph\n"
    record = h.connector.create({**SAMPLE, "description": text}, KEY.format(1))
    assert record.fields["description"] == "First line\nsecond line\n\nNext paragraph"
    assert h.connector.normalise("description", text) == record.fields["description"]
    v3 = h.agent.get(f"/rest/api/3/issue/{record.id}").json()["fields"]["description"]
    assert v3["type"] == "doc" and [n["type"] for n in v3["content"]] == ["paragraph"] * 2
    v2 = h.agent.get(f"/rest/api/2/issue/{record.id}").json()["fields"]["description"]
    assert v2 == "First line\nsecond line\n\nNext paragraph"
    plain = h.agent.put(f"/rest/api/3/issue/{record.id}", json={"fields": {"description": "x"}})
    assert plain.status_code == 400
    assert "Atlassian Document" in plain.json()["errors"]["description"]


def test_users_are_looked_up_once_and_unknown_ones_are_clear(h: Harness) -> None:
    connector, transport = counted(h)
    try:
        record = connector.create({**SAMPLE, "assigned_to": "alice@example.com"}, KEY.format(1))
        connector.update(record.id, {"assigned_to": "bob@example.com"})
        connector.update(record.id, {"assigned_to": "alice@example.com"})
        searches = [p for m, p in transport.seen if p.endswith("/user/search")]
        assert len(searches) == 2
        assert connector.get(record.id).fields["assigned_to"] == "alice@example.com"
        assert not [p for m, p in transport.seen if p == "/rest/api/3/user"]  # emails visible
        with pytest.raises(PermanentError) as caught:
            connector.update(record.id, {"assigned_to": "carol@example.com"})
        assert "no Jira user has the email carol@example.com" in caught.value.message
        # after the create, an unknown assignee is a warning: the issue exists
        created = connector.create({**SAMPLE, "assigned_to": "carol@example.com"}, KEY.format(2))
        assert created.fields["assigned_to"] == "" and created.warnings
    finally:
        connector.close()


def test_journals_are_jsm_internal_and_public_comments(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    note = h.connector.add_journal(record.id, "work_notes", "internal  \n\nonly")
    comment = h.connector.add_journal(record.id, "comments", "public")
    raw = h.agent.get(f"/rest/api/3/issue/{record.id}/comment").json()["comments"]
    assert [(c["id"], c["jsdPublic"]) for c in raw] == [
        (note.vendor_id, False),
        (comment.vendor_id, True),
    ]
    assert raw[1]["body"]["type"] == "doc"
    for n in range(3):
        h.agent_journal(record.id, "comments", f"agent {n}")
    listed = h.connector.list_journal(record.id)  # pages of two
    assert [(e.field, e.body) for e in listed] == [
        ("work_notes", "internal\n\nonly"),
        ("comments", "public"),
        ("comments", "agent 0"),
        ("comments", "agent 1"),
        ("comments", "agent 2"),
    ]
    assert {e.author for e in listed} == {"im-integration@example.com", "agent@example.com"}


def test_created_issue_webhook_carries_every_field_and_the_key(h: Harness) -> None:
    h.connector.create({**SAMPLE, "severity": "sev1"}, KEY.format(1))
    created = [json.loads(d.body) for d in h.sim.webhooks.pending]
    assert created[0]["webhookEvent"] == "jira:issue_created"
    event = h.connector.parse_webhook(h.request_for(h.sim.webhooks.pending[0]))
    assert event is not None and event.created and event.by_self
    assert event.correlation_key == KEY.format(1)
    assert event.changes["title"] == "Disk full on db-1"
    assert event.changes["severity"] == "sev1"
    assert isinstance(created[0]["issue"]["fields"]["description"], str | None)  # REST v2


# -- auth, errors, rate limits, faults ------------------------------------------------------------


def test_authentication_answers_like_jira_cloud(h: Harness) -> None:
    transport = sim_of(h).transport()
    with httpx.Client(base_url=URL, transport=transport, auth=("agent@example.com", "x")) as bad:
        wrong = bad.get("/rest/api/3/myself")
    assert wrong.status_code == 401
    assert wrong.text == PASSWORD_AUTH_TEXT
    assert wrong.headers["x-seraph-loginreason"] == "AUTHENTICATED_FAILED"
    assert wrong.headers["www-authenticate"].startswith("OAuth realm=")
    with httpx.Client(base_url=URL, transport=transport) as anonymous:
        denied = anonymous.get("/rest/api/3/issue/OPS-1")
        info = anonymous.get("/rest/api/2/serverInfo")
    assert denied.status_code == 401
    assert denied.json() == {
        "errorMessages": [
            "You are not authenticated. Authentication required to perform this operation."
        ],
        "errors": {},
    }
    assert info.status_code == 200 and info.json()["deploymentType"] == "Cloud"
    missing = h.agent.get("/rest/api/3/issue/OPS-999")
    assert missing.status_code == 404
    assert missing.json()["errorMessages"] == [
        "Issue does not exist or you do not have permission to see it."
    ]


def test_rate_limit_headers(h: Harness) -> None:
    h.sim.faults.update({"rate_limit_rate": 1, "retry_after": 30})
    response = h.agent.get("/rest/api/3/myself")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert response.headers["x-ratelimit-reset"] == "2026-11-27T09:00Z"
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert response.headers["ratelimit-reason"] == "jira-cost-based"


def test_faults_injected_at_run_time(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    answer = h.agent.post("/_sim/faults", json={"error_rate": 1})
    assert answer.status_code == 200 and answer.json()["error_rate"] == 1
    failed = h.agent.get(f"/rest/api/3/issue/{record.id}")
    assert failed.status_code == 500
    assert failed.json() == {"errorMessages": ["simulated internal error"], "errors": {}}
    h.agent.post("/_sim/faults", json={"error_rate": 0, "permanent_error": 422})
    refused = h.agent.put(f"/rest/api/3/issue/{record.id}", json={"fields": {"summary": "x"}})
    assert refused.status_code == 422
    assert h.agent.get(f"/rest/api/3/issue/{record.id}").status_code == 200  # reads still work
    assert h.agent.post("/_sim/faults", json={"nonsense": 1}).status_code == 400


# -- check, setup ---------------------------------------------------------------------------------


def test_check_warns_for_a_persons_account_and_names_what_is_missing(clock: FrozenClock) -> None:
    h = make_harness(
        clock, denied_permissions={"agent@example.com": ["TRANSITION_ISSUES", "ADD_COMMENTS"]}
    )
    try:
        sim = sim_of(h)
        agent = JiraConnector(
            connector_config(sim, clock, token="agent-token", email="agent@example.com")
        )
        checks = {c.name: c for c in agent.check()}
        assert checks["service account"].warning
        assert "person's Atlassian account" in checks["service account"].detail
        assert not checks["permissions"].ok
        assert "TRANSITION_ISSUES (change status)" in checks["permissions"].detail
        assert "ADD_COMMENTS (add comments)" in checks["permissions"].detail
        agent.close()
        wrong = JiraConnector(
            connector_config(
                sim, clock, issue_type="Task", severity_field="customfield_99", jql="colour = red"
            )
        )
        checks = {c.name: c for c in wrong.check()}
        assert not checks["issue type"].ok and "Service request" in checks["issue type"].detail
        assert not checks["severity field"].ok
        assert not checks["scope jql"].ok and "colour" in checks["scope jql"].detail
        wrong.close()
        elsewhere = JiraConnector(connector_config(sim, clock, project="NOPE"))
        checks = {c.name: c for c in elsewhere.check()}
        assert not checks["project"].ok
        assert "No project could be found with key 'NOPE'" in checks["project"].detail
        elsewhere.close()
    finally:
        h.close()


def test_webhook_setup_names_url_events_scope_and_secret(h: Harness) -> None:
    text = h.connector.webhook_setup("https://im.example.com/webhooks/prod-jira", None)
    for part in (
        "https://im.example.com/webhooks/prod-jira",
        "jira:issue_created, jira:issue_updated, jira:issue_deleted,",
        'project = "OPS" AND issuetype = "Incident"',
        "<webhook-secret>",
        "X-Hub-Signature",
        "im-sim-jira",
    ):
        assert part in text
    assert "s3cret" in h.connector.webhook_setup("https://x/webhooks/j", "s3cret")


# -- webhooks -------------------------------------------------------------------------------------


def test_connect_jwt_deliveries_verify_with_the_client_key(clock: FrozenClock) -> None:
    h = make_harness(clock, signing="connect")
    try:
        record = h.connector.create(SAMPLE, KEY.format(1))
        h.sim.webhooks.pending.clear()
        h.agent_edit(record.id, "priority", "p1")
        request = h.request_for(h.sim.webhooks.pending[-1])
        assert request.headers["authorization"].startswith("JWT ")
        assert "x-hub-signature" not in request.headers
        h.connector.verify_webhook(request, [WEBHOOK_SECRET], clock.now())
        event = h.connector.parse_webhook(request)
        assert event is not None and event.changes == {"priority": "p1"}
        other = JiraConnector(connector_config(sim_of(h), clock, client_key="jira:other-site"))
        with pytest.raises(SignatureError):
            other.verify_webhook(request, [WEBHOOK_SECRET], clock.now())
        other.close()
        moved = WebhookRequest("POST", "/webhooks/other", "", request.headers, request.body)
        with pytest.raises(SignatureError):
            h.connector.verify_webhook(moved, [WEBHOOK_SECRET], clock.now())
        with pytest.raises(SignatureError):
            h.connector.verify_webhook(request, [WEBHOOK_SECRET], clock.now() + timedelta(hours=1))
        unsigned = WebhookRequest("POST", request.path, "", {}, request.body)
        with pytest.raises(SignatureError):
            h.connector.verify_webhook(unsigned, [WEBHOOK_SECRET], clock.now())
    finally:
        h.close()


class Receiver:
    """A webhook endpoint answering the statuses it is given, in order (then 200)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.received: list[dict[str, str]] = []
        app = Starlette(routes=[Route("/webhooks/test", self.receive, methods=["POST"])])
        self.bridge = ASGIBridge(app)
        self.client = httpx.Client(transport=self.bridge)

    async def receive(self, request: Request) -> Response:
        self.received.append(dict(request.headers))
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    def close(self) -> None:
        self.client.close()
        self.bridge.shutdown()


def test_deliveries_retry_like_jira_for_about_half_an_hour(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    h.sim.webhooks.pending.clear()
    h.agent_edit(record.id, "title", "retried")
    receiver = Receiver(503, 429, 409, 425, 408, 500)
    try:
        assert h.sim.webhooks.deliver(receiver.client) == 1
        delays = (10.0, 60.0, 180.0, 480.0, 1080.0)
        for delay in delays:
            h.clock.advance(delay - 1)
            assert h.sim.webhooks.deliver(receiver.client) == 0  # not due yet
            h.clock.advance(1)
            assert h.sim.webhooks.deliver(receiver.client) == 1
        assert sum(delays) / 60 == pytest.approx(30, abs=1)
        ids = {r["x-atlassian-webhook-identifier"] for r in receiver.received}
        assert len(ids) == 1
        assert [r.get("x-atlassian-webhook-retry") for r in receiver.received] == [
            None,
            "1",
            "2",
            "3",
            "4",
            "5",
        ]
        assert h.sim.webhooks.log[-1].outcome == "failed"
        assert not h.sim.webhooks.pending
    finally:
        receiver.close()


def test_deliveries_stop_on_success_and_are_dropped_on_other_4xx(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    h.sim.webhooks.pending.clear()
    h.agent_edit(record.id, "title", "first")
    h.agent_edit(record.id, "title", "second")
    receiver = Receiver(500, 200, 400)
    try:
        h.sim.webhooks.deliver(receiver.client)
        h.clock.advance(10)
        h.sim.webhooks.deliver(receiver.client)
        outcomes = [d.outcome for d in h.sim.webhooks.log]
        assert outcomes == ["delivered", "failed"]  # the 400 is not retried
        bodies = [
            json.loads(d.body)["changelog"]["items"][0]["toString"] for d in h.sim.webhooks.log
        ]
        assert bodies == ["first", "second"]  # in order, per issue
    finally:
        receiver.close()


def test_our_own_assignment_comes_back_with_the_email(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    h.sim.webhooks.pending.clear()
    after = h.connector.update(record.id, {"assigned_to": "bob@example.com"})
    events = [h.connector.parse_webhook(h.request_for(d)) for d in h.sim.webhooks.pending]
    assert [(e.changes, e.by_self, e.version) for e in events if e] == [
        ({"assigned_to": "bob@example.com"}, True, after.version)
    ]


def test_the_agent_client_is_a_person(h: Harness) -> None:
    with agent_client(sim_of(h)) as agent:
        assert agent.get("/rest/api/3/myself").json()["accountType"] == "atlassian"


def test_work_notes_need_a_service_project(clock: FrozenClock) -> None:
    h = make_harness(clock, project_type="software")
    try:
        record = h.connector.create(SAMPLE, KEY.format(1))
        with pytest.raises(PermanentError) as caught:
            h.connector.add_journal(record.id, "work_notes", "internal")
        assert "not a Jira Service Management request" in caught.value.message
        with pytest.raises(RecordNotFoundError):  # a missing issue stays a missing record
            h.connector.add_journal("99999", "work_notes", "internal")
        checks = {c.name: c for c in h.connector.check()}
        assert checks["service desk"].ok and checks["service desk"].warning
    finally:
        h.close()


def test_a_hidden_email_is_a_warning_not_a_guess(clock: FrozenClock) -> None:
    users = [
        *JiraSimulator(clock=clock).users,
        JiraUser("carol@example.com", "Carol Private", email_visible=False),
    ]
    h = make_harness(clock, users=users)
    try:
        record = h.connector.create({**SAMPLE, "assigned_to": "carol@example.com"}, KEY.format(1))
        assert record.fields["assigned_to"] == "carol@example.com"  # we assigned her
        fresh = JiraConnector(connector_config(sim_of(h), clock))
        seen = fresh.get(record.id)
        fresh.close()
        assert "assigned_to" not in seen.fields
        assert seen.warnings == (
            "assigned_to: the assignee's email is hidden by their Atlassian profile",
        )
    finally:
        h.close()


def test_a_deleted_issue_is_announced_and_gone(h: Harness) -> None:
    record = h.connector.create(SAMPLE, KEY.format(1))
    h.sim.webhooks.pending.clear()
    assert h.agent.delete(f"/rest/api/3/issue/{record.id}").status_code == 204
    event = h.connector.parse_webhook(h.request_for(h.sim.webhooks.pending[-1]))
    assert event is not None and event.deleted and event.external_id == record.id
    with pytest.raises(RecordNotFoundError):
        h.connector.update(record.id, {"title": "too late"})


def test_a_failure_after_the_create_leaves_it_in_doubt_not_failed(h: Harness) -> None:
    class FailAfterCreate(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner
            self.created = False

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if self.created:
                return httpx.Response(503, json={"errorMessages": ["busy"], "errors": {}})
            response = self.inner.handle_request(request)
            self.created = request.method == "POST" and request.url.path == "/rest/api/3/issue"
            return response

    config = connector_config(sim_of(h), h.clock)
    transport = FailAfterCreate(sim_of(h).transport())
    connector = JiraConnector(type(config)(**{**config.__dict__, "transport": transport}))
    try:
        with pytest.raises(RequestTimeoutError) as caught:
            connector.create({**SAMPLE, "assigned_to": "alice@example.com"}, KEY.format(1))
        assert "created issue OPS-1" in caught.value.message
        assert "look the correlation key up" in caught.value.message
    finally:
        connector.close()
    found = h.connector.find_by_correlation(KEY.format(1))
    assert found is not None and h.sim.record_count() == 1


def test_a_walk_to_a_working_status_never_passes_through_a_done_one(clock: FrozenClock) -> None:
    from im.sim.jira import JiraStatus, WorkflowTransition
    from tests.connectors.vendor_jira import connector_config as config_for

    statuses = [
        JiraStatus("1", "Open", "new"),
        JiraStatus("2", "Triage", "indeterminate"),
        JiraStatus("3", "Investigating", "indeterminate"),
        JiraStatus("4", "In Progress", "indeterminate"),
        JiraStatus("5", "Resolved", "done"),
        JiraStatus("6", "Closed", "done"),
        JiraStatus("7", "Canceled", "done"),
    ]
    workflow = [
        WorkflowTransition("11", "Triage", "Open", "Triage"),
        WorkflowTransition("12", "Back", "Triage", "Open"),
        WorkflowTransition("13", "Investigate", "Triage", "Investigating"),
        WorkflowTransition("14", "Work", "Investigating", "In Progress"),
        WorkflowTransition("15", "Cancel", "Open", "Canceled"),
        WorkflowTransition("16", "Resolve", "In Progress", "Resolved"),
        WorkflowTransition("17", "Close", "Resolved", "Closed"),
        WorkflowTransition("18", "Reopen", "Resolved", "Open"),
    ]
    sim = JiraSimulator(statuses=statuses, workflow=workflow, clock=clock)
    connector = JiraConnector(config_for(sim, clock))
    try:
        record = connector.create({"title": "walk"}, "im:abc:INC-1")
        # earlier walks taught it Open <-> Triage; Canceled is now the nearest unknown status
        connector._transition(record.id, "Triage")
        connector._transition(record.id, "Open")
        connector.update(record.id, {"status": "acknowledged"})
        assert connector.get(record.id).fields["status"] == "acknowledged"
        connector.update(record.id, {"status": "closed"})  # done targets may pass done ones
        assert connector.get(record.id).fields["status"] == "closed"
    finally:
        connector.close()
        sim.shutdown()
