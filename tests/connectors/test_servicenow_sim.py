"""The ServiceNow simulator and connector together, on what is particular to ServiceNow:
paging with Link / X-Total-Count, Basic auth and ACL answers, rate-limit headers, the Business
Rule's deliveries (signed, never retried), run-time faults, and SPEC §3's ServiceNow rules
(scope, impact/urgency and the derived priority, resolution fields, the 160-character title,
journals in sys_journal_field, sys_mod_count versions)."""

from __future__ import annotations

import dataclasses
import json
import re
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
from im.connectors.http import (
    AuthError,
    MalformedEventError,
    PermanentError,
    RateLimitedError,
    RequestTimeoutError,
    RetryableError,
)
from im.connectors.servicenow import ServiceNowConnector
from im.errors import SignatureError
from im.sim.servicenow import ServiceNowSimulator
from im.sim.transport import ASGIBridge
from tests.connectors.harness import Harness, Recording
from tests.connectors.vendor_servicenow import (
    TABLE,
    URL,
    agent_client,
    config_for,
    make_harness,
    user_id,
)

KEY = "im:0f3c2a9e-test:INC-{}"


@pytest.fixture
def h(clock: FrozenClock) -> Iterator[Harness]:
    harness = make_harness(clock)
    yield harness
    harness.close()


def counted(h: Harness, **settings: str) -> tuple[ServiceNowConnector, Recording]:
    assert isinstance(h.sim, ServiceNowSimulator)
    transport = Recording(h.sim.transport())
    config = dataclasses.replace(config_for(h.sim, h.clock, **settings), transport=transport)
    return ServiceNowConnector(config), transport


def sim(h: Harness) -> ServiceNowSimulator:
    assert isinstance(h.sim, ServiceNowSimulator)
    return h.sim


def agent_create(h: Harness, **columns: str) -> str:
    response = h.agent.post(TABLE, json={"short_description": "by hand", **columns})
    assert response.status_code == 201, response.text
    return str(response.json()["result"]["sys_id"])


def group_id(h: Harness, name: str) -> str:
    return next(g["sys_id"] for g in sim(h).tables["sys_user_group"].values() if g["name"] == name)


# -- paging -----------------------------------------------------------------------------------


def test_list_pages_with_link_and_total_count_like_the_instance(h: Harness) -> None:
    for n in range(5):
        agent_create(h, short_description=f"row {n}")
    first = h.agent.get(TABLE, params={"sysparm_limit": "2", "sysparm_fields": "number"})
    assert first.headers["X-Total-Count"] == "5"
    links = dict(
        (rel, url) for url, rel in re.findall(r'<([^>]+)>;rel="(\w+)"', first.headers["Link"])
    )
    assert list(links) == ["first", "prev", "next", "last"]
    assert links["prev"].endswith("sysparm_offset=-2")  # negative on page one, as observed
    assert links["next"].endswith("sysparm_offset=2")
    assert links["last"].endswith("sysparm_offset=4")
    assert links["next"].startswith(f"{URL}/api/now/table/incident?sysparm_limit=2")
    assert [r["number"] for r in first.json()["result"]] == ["INC0010001", "INC0010002"]
    last = h.agent.get(TABLE, params={"sysparm_limit": "2", "sysparm_offset": "4"})
    assert 'rel="next"' not in last.headers["Link"] and len(last.json()["result"]) == 1
    quiet = h.agent.get(TABLE, params={"sysparm_suppress_pagination_header": "true"})
    assert "Link" not in quiet.headers and quiet.headers["X-Total-Count"] == "5"
    assert len(quiet.json()["result"]) == 5  # sysparm_limit defaults to 10,000


def test_connector_follows_the_next_link_page_by_page(h: Harness) -> None:
    for n in range(5):
        h.connector.create({"title": f"paged {n}"}, KEY.format(n))
    ours, transport = counted(h)
    assert len(list(ours.list_in_scope())) == 5
    pages = transport.paths("/table/incident")
    offsets = [httpx.URL(u).params["sysparm_offset"] for u in pages]
    assert offsets == ["0", "2", "4"]
    assert {httpx.URL(u).params["sysparm_limit"] for u in pages} == {"2"}
    ours.close()


def test_list_changed_asks_for_updated_since_in_order_within_scope(h: Harness) -> None:
    old = h.connector.create({"title": "old"}, KEY.format(1))
    h.clock.advance(300)
    since = h.clock.now()
    new = h.connector.create({"title": "new"}, KEY.format(2))
    h.clock.advance(5)
    h.agent_edit(old.id, "title", "touched again")
    agent_create(h, assignment_group=group_id(h, "Network"))  # changed, but not ours
    ours, transport = counted(h)
    assert [r.id for r in ours.list_changed(since)] == [new.id, old.id]
    query = httpx.URL(transport.paths("/table/incident")[0]).params["sysparm_query"]
    group = group_id(h, "Service Desk")
    assert query == (
        f"assignment_group={group}^sys_updated_on>={since:%Y-%m-%d %H:%M:%S}"
        "^ORDERBYsys_updated_on^ORDERBYsys_id"
    )
    ours.close()


@pytest.mark.parametrize(
    ("query", "titles"),
    [
        ("short_description=alpha", ["alpha"]),
        ("short_description=ALPHA", ["alpha"]),  # string equality ignores case
        ("short_descriptionSTARTSWITHal", ["alpha"]),
        ("short_descriptionLIKEet^ORshort_description=gamma", ["beta", "gamma"]),
        ("categoryINnetwork,hardware^ORDERBYDESCshort_description", ["gamma", "beta", "alpha"]),
        ("category!=network^descriptionISEMPTY", ["gamma", "a^b"]),
        ("short_description=a^^b", ["a^b"]),
        ("short_description=alpha^NQshort_description=gamma", ["alpha", "gamma"]),
        ("no_such_column=1^short_description=beta", ["beta"]),  # the instance ignores it
        ("assignment_group.name=Network", ["gamma"]),
        ("impact>=2^impact<3", ["beta"]),
        ("ORDERBYDESCnumber^short_descriptionISNOTEMPTY", ["a^b", "gamma", "beta", "alpha"]),
        ("ORDERBYcategory^ORDERBYDESCimpact", ["gamma", "beta", "alpha", "a^b"]),
        ("sys_created_on>=2026-11-27 09:00:02^ORDERBYsys_created_on", ["gamma", "a^b"]),
        ("sys_created_on<2026-11-27 09:00:01", ["alpha"]),
    ],
)
def test_encoded_queries_select_like_the_instance(
    h: Harness, query: str, titles: list[str]
) -> None:
    network = group_id(h, "Network")
    agent_create(h, short_description="alpha", category="network", impact="1")
    h.clock.advance(1)
    agent_create(h, short_description="beta", category="network", impact="2", description="d")
    h.clock.advance(1)
    agent_create(h, short_description="gamma", category="hardware", assignment_group=network)
    agent_create(h, short_description="a^b", category="software")
    answer = h.agent.get(
        "/api/now/v2/table/incident",
        params={"sysparm_query": query, "sysparm_fields": "short_description"},
    )
    assert [r["short_description"] for r in answer.json()["result"]] == titles


def test_table_api_refusals(h: Harness) -> None:
    unknown = h.agent.get("/api/now/table/no_such_table")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == "Invalid table no_such_table"
    text = h.agent.post(
        TABLE, content=b"short_description=x", headers={"Content-Type": "text/plain"}
    )
    assert text.status_code == 415
    record = h.connector.create({"title": "t"}, KEY.format(1))
    assert h.agent.delete(f"{TABLE}/{record.id}").status_code == 403  # itil cannot delete
    assert h.agent.post("/api/now/table/sys_user", json={"user_name": "x"}).status_code == 403
    missing = h.agent.patch(f"{TABLE}/{'0' * 32}", json={"short_description": "x"})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "No Record found"


# -- scope ------------------------------------------------------------------------------------


def test_records_outside_the_assignment_group_are_never_listed(h: Harness) -> None:
    ours = h.connector.create({"title": "ours"}, KEY.format(1))
    theirs = agent_create(h, assignment_group=group_id(h, "Network"))
    unassigned = agent_create(h)
    listed = {r.id for r in h.connector.list_in_scope()}
    assert listed == {ours.id}
    assert theirs not in listed and unassigned not in listed
    assert sim(h).incident(ours.id)["assignment_group"] == group_id(h, "Service Desk")


def test_scope_query_is_anded_into_every_part_of_the_query(h: Harness) -> None:
    sd = group_id(h, "Service Desk")
    network = agent_create(h, category="network", assignment_group=sd)
    hardware = agent_create(h, category="hardware", assignment_group=sd)
    agent_create(h, category="network", assignment_group=group_id(h, "Network"))
    agent_create(h, category="software", assignment_group=sd)
    ours, transport = counted(h, scope_query="category=network^NQcategory=hardware")
    assert {r.id for r in ours.list_in_scope()} == {network, hardware}
    query = httpx.URL(transport.paths("/table/incident")[-1]).params["sysparm_query"]
    assert query == (
        f"assignment_group={sd}^category=network^NQassignment_group={sd}^category=hardware"
        "^ORDERBYsys_created_on^ORDERBYsys_id"
    )
    ours.close()


def test_rows_that_tie_on_the_order_come_in_no_promised_order(h: Harness) -> None:
    first, second, third = (agent_create(h, short_description=f"tie {n}") for n in range(3))
    h.clock.advance(1)
    h.agent.patch(f"{TABLE}/{first}", json={"short_description": "changed"})

    def order(query: str) -> list[str]:
        rows = h.agent.get(TABLE, params={"sysparm_query": query, "sysparm_fields": "sys_id"})
        return [r["sys_id"] for r in rows.json()["result"]]

    # as a database may: the row changed last comes last among equals
    assert order("ORDERBYsys_created_on") == [second, third, first]
    assert order("ORDERBYsys_created_on^ORDERBYsys_id") == sorted([first, second, third])


def test_a_scope_with_nq_and_a_group_lists_only_records_in_scope(h: Harness) -> None:
    sd, network = group_id(h, "Service Desk"), group_id(h, "Network")
    old = agent_create(h, category="network", assignment_group=sd)
    h.clock.advance(600)
    cutoff = h.clock.now()
    wanted = {
        agent_create(h, category="network", assignment_group=sd),
        agent_create(h, category="hardware", assignment_group=sd),
    }
    agent_create(h, category="network", assignment_group=network)  # a branch, another group
    agent_create(h, category="hardware", assignment_group=network)
    agent_create(h, category="hardware")  # no group at all
    agent_create(h, category="software", assignment_group=sd)  # the group, no branch
    # a trailing ^NQ and a literal ^^NQ in a value are no extra branches
    scope = "category=network^NQcategory=hardware^short_description!=x^^NQy^NQ"
    ours, transport = counted(h, scope_query=scope)
    assert {r.id for r in ours.list_in_scope(created_since=cutoff)} == wanted
    assert {r.id for r in ours.list_in_scope()} == {old, *wanted}
    query = httpx.URL(transport.paths("/table/incident")[0]).params["sysparm_query"]
    since = f"sys_created_on>={cutoff:%Y-%m-%d %H:%M:%S}"
    assert query == (
        f"assignment_group={sd}^category=network^{since}"
        f"^NQassignment_group={sd}^category=hardware^short_description!=x^^NQy^{since}"
        "^ORDERBYsys_created_on^ORDERBYsys_id"
    )
    ours.close()


def test_in_scope_asks_for_sys_ids_in_every_branch_of_the_scope(h: Harness) -> None:
    sd, network = group_id(h, "Service Desk"), group_id(h, "Network")
    wanted = [
        agent_create(h, category="network", assignment_group=sd),
        agent_create(h, category="hardware", assignment_group=sd),
        agent_create(h, category="network", assignment_group=sd),
    ]
    hardware_elsewhere = agent_create(h, category="hardware", assignment_group=network)
    software_sd = agent_create(h, category="software", assignment_group=sd)
    ours, transport = counted(h, scope_query="category=network^NQcategory=hardware")
    missing = [f"{n:032x}" for n in range(98)]
    many = [*wanted, *missing, hardware_elsewhere, software_sd]
    assert ours.in_scope(many) == set(wanted)
    pages = [httpx.URL(u).params for u in transport.paths("/table/incident")]
    assert {p["sysparm_fields"] for p in pages} == {"sys_id"}
    # one query per 100 ids, paged as usual (two rows a page in this harness)
    batches = [many[:100], many[100:]]
    assert list(dict.fromkeys(p["sysparm_query"] for p in pages)) == [
        f"assignment_group={sd}^category=network^sys_idIN{','.join(batch)}"
        f"^NQassignment_group={sd}^category=hardware^sys_idIN{','.join(batch)}^ORDERBYsys_id"
        for batch in batches
    ]
    assert [p["sysparm_offset"] for p in pages] == ["0", "2", "0"]
    ours.close()


def test_the_business_rule_scope_puts_the_group_in_every_branch(clock: FrozenClock) -> None:
    settings = {"scope_query": "category=network^NQcategory=hardware"}
    expected = (
        "assignment_group.name=Service Desk^category=network"
        "^NQassignment_group.name=Service Desk^category=hardware"
    )
    instance = ServiceNowSimulator(clock=clock, webhook_url="http://127.0.0.1:9/w")
    ours = ServiceNowConnector(config_for(instance, clock, **settings))
    try:
        assert ours.webhook_scope() == expected
        assert json.dumps(expected) in ours.webhook_setup("https://im.example.com/w", None)
        # the rule with that condition sends in-scope saves only
        instance.webhook_query = ours.webhook_scope()
        with agent_client(instance) as agent:
            groups = {g["name"]: g["sys_id"] for g in instance.tables["sys_user_group"].values()}
            for category, group in [
                ("hardware", groups["Network"]),
                ("network", ""),
                ("software", groups["Service Desk"]),
            ]:
                body = {"short_description": "x", "category": category, "assignment_group": group}
                agent.post(TABLE, json=body).raise_for_status()
            assert instance.webhooks.pending == []
            body = {"category": "hardware", "assignment_group": groups["Service Desk"]}
            agent.post(TABLE, json={"short_description": "in", **body}).raise_for_status()
        assert len(instance.webhooks.pending) == 1
    finally:
        ours.close()
        instance.shutdown()


def test_journals_of_many_incidents_come_in_batches_of_ids(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("im.connectors.servicenow.ID_BATCH", 2)
    ids = [h.connector.create({"title": f"t{n}"}, KEY.format(n)).id for n in range(5)]
    for n, sys_id in enumerate(ids[:4]):
        h.clock.advance(1)
        h.agent_journal(sys_id, "work_notes", f"note {n}")
        h.clock.advance(1)
        h.agent_journal(sys_id, "comments", f"comment {n}")
    ours, transport = counted(h)
    journals = ours.list_journals(ids)
    assert [[e.body for e in journals[i]] for i in ids] == [
        [f"note {n}", f"comment {n}"] for n in range(4)
    ] + [[]]
    pages = [httpx.URL(u).params for u in transport.paths("/sys_journal_field")]
    # each batch paged as usual (two rows a page in this harness)
    assert [p["sysparm_offset"] for p in pages] == ["0", "2", "0", "2", "0"]
    assert list(dict.fromkeys(p["sysparm_query"] for p in pages)) == [
        f"element_idIN{','.join(ids[at : at + 2])}^elementINwork_notes,comments"
        "^ORDERBYsys_created_on^ORDERBYsys_id"
        for at in (0, 2, 4)
    ]
    ours.close()


def test_unknown_assignment_group_is_a_permanent_error_and_a_failed_check(h: Harness) -> None:
    ours, _ = counted(h, assignment_group="No Such Group")
    with pytest.raises(PermanentError, match="No Such Group"):
        list(ours.list_in_scope())
    scope = [c for c in ours.check() if c.name == "scope"]
    assert scope and not scope[0].ok
    ours.close()


def test_group_may_be_configured_by_sys_id(h: Harness) -> None:
    ours, _ = counted(h, assignment_group=group_id(h, "Network"))
    record = ours.create({"title": "network outage"}, KEY.format(5))
    assert sim(h).incident(record.id)["assignment_group"] == group_id(h, "Network")
    assert [r.id for r in ours.list_in_scope()] == [record.id]
    ours.close()


# -- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "impact", "urgency", "priority"),
    [
        ("sev1", "1", "1", "1"),
        ("sev2", "1", "2", "2"),
        ("sev3", "2", "2", "3"),
        ("sev4", "2", "3", "4"),
        ("sev5", "3", "3", "5"),
    ],
)
def test_severity_goes_out_as_impact_and_urgency_and_comes_back_by_priority(
    h: Harness, severity: str, impact: str, urgency: str, priority: str
) -> None:
    record = h.connector.create({"title": "t", "severity": severity}, KEY.format(1))
    row = sim(h).incident(record.id)
    assert (row["impact"], row["urgency"], row["priority"]) == (impact, urgency, priority)
    assert record.fields["severity"] == severity


def test_an_agents_impact_and_urgency_read_as_the_derived_priority(h: Harness) -> None:
    record = h.connector.create({"title": "t", "severity": "sev5"}, KEY.format(1))
    response = h.agent.patch(f"{TABLE}/{record.id}", json={"impact": "1", "urgency": "3"})
    assert response.json()["result"]["priority"] == "3"
    assert h.connector.get(record.id).fields["severity"] == "sev3"
    h.agent.patch(f"{TABLE}/{record.id}", json={"priority": "1"})  # read-only: derived
    assert h.connector.get(record.id).fields["severity"] == "sev3"


def test_resolving_sends_the_close_code_and_notes_from_the_settings(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    h.connector.update(record.id, {"status": "resolved"})
    row = sim(h).incident(record.id)
    assert (row["state"], row["close_code"], row["close_notes"]) == (
        "6",
        "Solved (Permanently)",
        "Resolved in im",
    )
    ours, _ = counted(h, close_code="Workaround provided", close_notes="Closed from im")
    ours.update(record.id, {"status": "closed"})
    row = sim(h).incident(record.id)
    assert (row["state"], row["close_code"], row["close_notes"], row["active"]) == (
        "7",
        "Workaround provided",
        "Closed from im",
        "false",
    )
    ours.close()


def test_resolving_without_resolution_fields_is_refused_by_the_data_policy(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    response = h.agent.patch(f"{TABLE}/{record.id}", json={"state": "6"})
    assert response.status_code == 403
    assert "Resolution code, Resolution notes" in response.json()["error"]["detail"]
    assert sim(h).incident(record.id)["state"] == "1"


@pytest.mark.parametrize(("state", "status"), [("3", "acknowledged"), ("8", "closed")])
def test_on_hold_and_canceled_map_in(h: Harness, state: str, status: str) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    h.agent.patch(f"{TABLE}/{record.id}", json={"state": state, "hold_reason": "1"})
    assert h.connector.get(record.id).fields["status"] == status


def test_an_unknown_state_skips_the_field_with_a_warning(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    h.agent.patch(f"{TABLE}/{record.id}", json={"state": "42"})
    fetched = h.connector.get(record.id)
    assert "status" not in fetched.fields
    assert fetched.fields["title"] == "t"
    assert any("state '42'" in w for w in fetched.warnings)


def test_long_titles_are_cut_to_160_characters_with_a_warning(h: Harness) -> None:
    title = "Disk full on db-01 " * 12
    record = h.connector.create({"title": title}, KEY.format(1))
    assert len(sim(h).incident(record.id)["short_description"]) == 160
    assert record.fields["title"] == h.connector.normalise("title", title)
    assert len(record.fields["title"]) <= 160
    assert any("truncated" in w for w in record.warnings)
    assert not h.connector.get(record.id).warnings


def test_assignees_map_by_email_with_cached_look_ups(h: Harness) -> None:
    ours, transport = counted(h)
    record = ours.create({"title": "t", "assigned_to": "Alice@Example.com"}, KEY.format(1))
    alice = user_id(h.agent, "alice@example.com")
    assert sim(h).incident(record.id)["assigned_to"] == alice
    assert record.fields["assigned_to"] == "alice@example.com"
    ours.update(record.id, {"assigned_to": "bob@example.com"})
    ours.update(record.id, {"assigned_to": "alice@example.com"})
    ours.update(record.id, {"assigned_to": ""})
    assert sim(h).incident(record.id)["assigned_to"] == ""
    assert ours.get(record.id).fields["assigned_to"] == ""
    assert len(transport.paths("/table/sys_user")) == 2  # alice once, bob once
    with pytest.raises(PermanentError, match=r"nobody@example\.com"):
        ours.update(record.id, {"assigned_to": "nobody@example.com"})
    ours.close()


def test_a_create_for_an_unknown_assignee_still_creates_the_incident(h: Harness) -> None:
    record = h.connector.create({"title": "t", "assigned_to": "nobody@example.com"}, KEY.format(1))
    assert sim(h).incident(record.id)["assigned_to"] == ""
    assert record.fields["assigned_to"] == ""
    assert any("nobody@example.com" in w for w in record.warnings)


def test_an_assignee_without_email_is_skipped_with_a_warning(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    h.agent.patch(f"{TABLE}/{record.id}", json={"assigned_to": "0" * 32})
    fetched = h.connector.get(record.id)
    assert "assigned_to" not in fetched.fields
    assert any("0" * 32 in w for w in fetched.warnings)


def test_versions_are_the_padded_mod_count_and_a_no_op_write_changes_nothing(
    h: Harness,
) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    assert record.version == "000000000000"
    assert record.updated_at == "2026-11-27T09:00:00.000Z"
    h.clock.advance(61.5)
    after = h.connector.update(record.id, {"title": "t2"})
    assert (after.version, after.updated_at) == ("000000000001", "2026-11-27T09:01:01.000Z")
    sim(h).webhooks.pending.clear()
    same = h.connector.update(record.id, {"title": "t2"})
    assert same.version == after.version and not sim(h).webhooks.pending


def test_display_values_and_journal_columns_read_like_the_instance(h: Harness) -> None:
    record = h.connector.create(
        {"title": "t", "severity": "sev2", "assigned_to": "alice@example.com"}, KEY.format(1)
    )
    h.connector.add_journal(record.id, "work_notes", "checked the relay")
    url = f"{TABLE}/{record.id}"
    raw = h.agent.get(url).json()["result"]
    assert raw["work_notes"] == "" and raw["comments"] == ""
    assert raw["assigned_to"]["link"].endswith(
        f"/api/now/table/sys_user/{raw['assigned_to']['value']}"
    )
    both = h.agent.get(
        url, params={"sysparm_display_value": "all", "sysparm_exclude_reference_link": "true"}
    ).json()["result"]
    assert both["state"] == {"display_value": "New", "value": "1"}
    assert both["priority"] == {"display_value": "2 - High", "value": "2"}
    assert both["assigned_to"]["display_value"] == "Alice Example"
    assert "link" not in both["assigned_to"]
    assert both["work_notes"]["value"] == ""
    assert both["work_notes"]["display_value"] == (
        "2026-11-27 09:00:00 - im integration (Work notes)\nchecked the relay"
    )
    walked = h.agent.get(url, params={"sysparm_fields": "number,assigned_to.email,nope"})
    assert walked.json()["result"] == {
        "number": "INC0010001",
        "assigned_to.email": "alice@example.com",
    }


def test_a_missing_correlation_column_is_caught_at_create(h: Harness) -> None:
    ours, _ = counted(h, correlation_field="u_im_key")
    with pytest.raises(PermanentError, match="u_im_key") as caught:
        ours.create({"title": "t"}, KEY.format(1))
    assert "INC0010001" in caught.value.message
    # the instance ignores the condition on the unknown column and answers every incident
    assert ours.find_by_correlation(KEY.format(1)) is None
    checks = {c.name: c for c in ours.check()}
    assert not checks["correlation field"].ok
    ours.close()


def test_a_custom_correlation_column_works_when_it_exists(clock: FrozenClock) -> None:
    harness = make_harness(clock, extra_columns=("u_im_key",), correlation_field="u_im_key")
    try:
        ours, _ = counted(harness, correlation_field="u_im_key")
        record = ours.create({"title": "t"}, KEY.format(1))
        assert ours.find_by_correlation(KEY.format(1)) == record
        assert sim(harness).incident(record.id)["correlation_id"] == ""
        ours.close()
    finally:
        harness.close()


# -- journals ---------------------------------------------------------------------------------


def test_add_journal_returns_the_sys_journal_field_id(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    entry = h.connector.add_journal(record.id, "comments", "Customer informed")
    stored = sim(h).tables["sys_journal_field"][entry.vendor_id]
    assert (stored["element"], stored["element_id"], stored["value"]) == (
        "comments",
        record.id,
        "Customer informed",
    )
    assert entry.author == "im-integration" and entry.created_at == "2026-11-27T09:00:00.000Z"


def test_a_journal_write_whose_answer_was_lost_is_found_not_written_twice(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    h.clock.advance(30)
    h.agent_journal(record.id, "work_notes", "same words")  # the agent's, not ours
    h.clock.advance(30)
    sim(h).faults.update({"timeout_rate": 1})
    with pytest.raises(RequestTimeoutError):
        h.connector.add_journal(record.id, "work_notes", "same words")
    sim(h).faults.update({"timeout_rate": 0})
    found = h.connector.find_journal_entry(
        record.id, "work_notes", "same words", written_on="2026-11-27 09:01:00"
    )
    assert found is not None and found.author == "im-integration"
    entries = h.connector.list_journal(record.id)
    assert [(e.author, e.body) for e in entries] == [
        ("agent", "same words"),
        ("im-integration", "same words"),
    ]
    assert entries[1].vendor_id == found.vendor_id


def test_list_journal_pages_oldest_first(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    for n in range(5):
        h.clock.advance(1)
        h.connector.add_journal(record.id, "work_notes" if n % 2 else "comments", f"note {n}")
    entries = h.connector.list_journal(record.id)
    assert [e.body for e in entries] == [f"note {n}" for n in range(5)]
    assert [e.field for e in entries] == ["comments", "work_notes"] * 2 + ["comments"]


# -- auth, errors, rate limits ----------------------------------------------------------------


def test_wrong_password_is_a_401_with_servicenows_body_and_challenge(h: Harness) -> None:
    intruder = agent_client(sim(h), "agent", "not-the-password")
    response = intruder.get(TABLE)
    intruder.close()
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Service-now"'
    assert response.json() == {
        "error": {
            "message": "User Not Authenticated",
            "detail": "Required to provide Auth information",
        },
        "status": "failure",
    }
    wrong = h.with_wrong_credentials()
    with pytest.raises(AuthError) as caught:
        wrong.get("0" * 32)
    assert "User Not Authenticated" in caught.value.message
    assert "wrong" not in caught.value.message
    checks = wrong.check()
    assert [(c.name, c.ok) for c in checks][-1] == ("credentials", False)
    wrong.close()


def test_acl_refusals_are_403_and_show_in_the_check(clock: FrozenClock) -> None:
    harness = make_harness(clock, denied={"im-integration": {"sys_journal_field"}})
    try:
        record = harness.connector.create({"title": "t"}, KEY.format(1))
        with pytest.raises(AuthError) as caught:
            harness.connector.list_journal(record.id)
        assert caught.value.status == 403
        assert "ACL Exception Read Failed" in caught.value.message
        checks = {c.name: c for c in harness.connector.check()}
        assert not checks["read journal"].ok
        assert checks["read incidents"].ok
    finally:
        harness.close()


def test_a_person_account_passes_the_check_with_a_warning(h: Harness) -> None:
    person = ServiceNowConnector(
        dataclasses.replace(
            config_for(sim(h), h.clock, username="agent"), secrets={"password": "agent"}
        )
    )
    checks = {c.name: c for c in person.check()}
    assert all(c.ok for c in checks.values())
    assert checks["service account"].warning
    assert "person" in checks["service account"].detail
    person.close()


def test_a_read_only_account_fails_the_write_check(clock: FrozenClock) -> None:
    users = [
        {
            "user_name": "im-integration",
            "email": "im@example.com",
            "name": "im",
            "web_service_access_only": "true",
            "roles": ("snc_read_only",),
        },
        {"user_name": "agent", "email": "agent@example.com", "name": "Agent", "roles": ("itil",)},
    ]
    instance = ServiceNowSimulator(clock=clock, users=users)
    ours = ServiceNowConnector(config_for(instance, clock))
    try:
        checks = {c.name: c for c in ours.check()}
        assert checks["read incidents"].ok
        assert not checks["write incidents"].ok
        assert "itil" in checks["write incidents"].detail
    finally:
        ours.close()
        instance.shutdown()


def test_injected_429_carries_servicenows_rate_limit_headers(h: Harness) -> None:
    response = h.agent.post("/_sim/faults", json={"rate_limit_rate": 1, "retry_after": 9})
    assert response.json()["rate_limit_rate"] == 1
    answer = h.agent.get(TABLE)
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "9"
    assert answer.headers["X-RateLimit-Limit"].isdigit()
    assert int(answer.headers["X-RateLimit-Reset"]) == int(h.clock.now().timestamp()) + 9
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-RateLimit-Rule"])
    assert answer.json()["status"] == "failure"
    with pytest.raises(RateLimitedError) as caught:
        list(h.connector.list_in_scope())
    assert caught.value.retry_after == 9


def test_the_per_hour_rule_answers_429_until_the_hour_ends(clock: FrozenClock) -> None:
    instance = ServiceNowSimulator(clock=clock, rate_limit_per_hour=4)
    ours = ServiceNowConnector(config_for(instance, clock))
    try:
        clock.advance(1200)  # 09:20:00
        record = ours.create({"title": "t"}, KEY.format(1))  # the group look-up, the POST
        first = ours.get(record.id)  # the third request this hour
        assert first.id == record.id
        with agent_client(instance) as agent:
            answer = agent.get(TABLE, params={"sysparm_limit": "1"})
        assert answer.status_code == 200  # the agent is counted apart
        assert answer.headers["X-RateLimit-Limit"] == "4"
        assert answer.headers["X-RateLimit-Reset"] == str(int(clock.now().timestamp()) + 2400)
        assert answer.headers["X-RateLimit-Rule"] == instance.rate_limit_rule
        ours.get(record.id)
        with pytest.raises(RateLimitedError) as caught:
            ours.get(record.id)
        assert caught.value.retry_after == 2400  # until the window opens at 10:00
        assert "4 requests per hour" in caught.value.message
        clock.advance(2400)
        assert ours.get(record.id).id == record.id
    finally:
        ours.close()
        instance.shutdown()


def test_run_time_faults_through_the_admin_api(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    h.agent.post("/_sim/faults", json={"error_rate": 1})
    with pytest.raises(RetryableError) as caught:
        h.connector.get(record.id)
    assert caught.value.status == 500 and "simulated internal error" in caught.value.message
    h.agent.post("/_sim/faults", json={"error_rate": 0, "permanent_error": 422})
    assert h.connector.get(record.id).id == record.id  # reads are not refused
    with pytest.raises(PermanentError):
        h.connector.update(record.id, {"title": "refused"})
    refused = h.agent.post("/_sim/faults", json={"no_such_fault": 1})
    assert refused.status_code == 400
    h.agent.post("/_sim/faults", json={"permanent_error": 0})
    assert h.connector.update(record.id, {"title": "accepted"}).fields["title"] == "accepted"


# -- webhooks ---------------------------------------------------------------------------------


class Receiver:
    """A daemon stand-in answering each delivery with the next status of a script."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[dict[str, Any]] = []

        async def hook(request: Request) -> Response:
            self.received.append({"headers": dict(request.headers), "body": await request.body()})
            return Response(status_code=self.statuses.pop(0) if self.statuses else 202)

        self.bridge = ASGIBridge(
            Starlette(routes=[Route("/webhooks/test", hook, methods=["POST"])])
        )
        self.client = httpx.Client(transport=self.bridge)

    def close(self) -> None:
        self.client.close()
        self.bridge.shutdown()


def test_deliveries_are_signed_and_never_retried(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    receiver = Receiver([503, 202])
    try:
        assert sim(h).webhooks.deliver(receiver.client) == 1
        h.clock.advance(3600)
        assert sim(h).webhooks.deliver(receiver.client) == 0  # the 503 is not sent again
        assert [d.outcome for d in sim(h).webhooks.log] == ["failed"]
        h.agent_edit(record.id, "title", "edited")
        assert sim(h).webhooks.deliver(receiver.client) == 1
        assert sim(h).webhooks.log[-1].outcome == "delivered"
    finally:
        receiver.close()
    delivered = receiver.received[-1]
    request = WebhookRequest("POST", "/webhooks/test", "", delivered["headers"], delivered["body"])
    h.connector.verify_webhook(request, [h.webhook_secret], h.clock.now())
    assert delivered["headers"]["user-agent"] == "ServiceNow/1.0"
    assert delivered["headers"]["webhook-id"].startswith("msg_")
    event = h.connector.parse_webhook(request)
    assert event is not None and event.changes == {"title": "edited"} and event.actor == "agent"


def test_a_delivery_older_than_five_minutes_is_refused(h: Harness) -> None:
    record = h.connector.create({"title": "t"}, KEY.format(1))
    h.agent_edit(record.id, "title", "edited")
    request = h.request_for(sim(h).webhooks.pending[-1])
    later = h.clock.now() + timedelta(minutes=6)
    with pytest.raises(SignatureError, match="5 minutes"):
        h.connector.verify_webhook(request, [h.webhook_secret], later)


def test_the_payload_is_the_business_rules(h: Harness) -> None:
    """What the simulator sends is what the script printed by webhook_setup builds: the
    watched columns in the script's order, then the journal entries in its order."""
    script = h.connector.webhook_setup("https://im.example.com/webhooks/test", None)
    fields = re.search(r"var FIELDS = (\[.*\]);", script)
    journals = re.search(r"var JOURNALS = (\[.*\]);", script)
    assert fields and journals
    record = h.connector.create({"title": "t", "assigned_to": "bob@example.com"}, KEY.format(1))
    created = json.loads(sim(h).webhooks.pending[-1].body)
    assert list(created) == [
        "type",
        "operation",
        "table",
        "sys_id",
        "number",
        "sys_mod_count",
        "sys_updated_on",
        "sys_updated_by",
        "correlation",
        "assigned_to",
        "changes",
        "journal",
    ]
    assert list(created["changes"]) == json.loads(fields.group(1))
    assert created["assigned_to"]["email"] == "bob@example.com"
    assert created["correlation"] == {"field": "correlation_id", "value": KEY.format(1)}
    h.clock.advance(1)
    h.agent.patch(
        f"{TABLE}/{record.id}", json={"comments": "to the caller", "work_notes": "internal"}
    )
    both = json.loads(sim(h).webhooks.pending[-1].body)
    assert [e["element"] for e in both["journal"]] == json.loads(journals.group(1))
    assert both["changes"] == {} and both["operation"] == "update"
    assert "<webhook-secret>" in script and "GlideCertificateEncryption" in script
    assert "whsec_" in h.connector.webhook_setup("https://x/webhooks/test", h.webhook_secret)


def test_the_webhook_scope_filters_like_the_rules_condition(clock: FrozenClock) -> None:
    harness = make_harness(clock, webhook_query="assignment_group.name=Service Desk")
    try:
        assert harness.connector.webhook_scope() == "assignment_group.name=Service Desk"
        harness.connector.create({"title": "in scope"}, KEY.format(1))
        assert len(sim(harness).webhooks.pending) == 1
        agent_create(harness, assignment_group=group_id(harness, "Network"))
        assert len(sim(harness).webhooks.pending) == 1
    finally:
        harness.close()


def test_an_insert_event_creates_and_carries_every_field(h: Harness) -> None:
    agent_id = agent_create(h, description="typed by hand", impact="2", urgency="3")
    event = h.connector.parse_webhook(h.request_for(sim(h).webhooks.pending[-1]))
    assert event is not None and event.created and not event.by_self
    assert event.external_id == agent_id and event.correlation_key is None
    assert event.changes == {
        "title": "by hand",
        "description": "typed by hand",
        "severity": "sev4",
        "status": "triggered",
        "assigned_to": "",
    }


def test_malformed_or_foreign_payloads(h: Harness) -> None:
    def request(body: bytes) -> WebhookRequest:
        return WebhookRequest("POST", "/webhooks/test", "", {"webhook-id": "msg_1"}, body)

    with pytest.raises(MalformedEventError):
        h.connector.parse_webhook(request(b"not json"))
    with pytest.raises(MalformedEventError):
        h.connector.parse_webhook(request(b'{"type": "incident.updated", "sys_id": "x"}'))
    assert (
        h.connector.parse_webhook(request(b'{"type": "problem.updated", "table": "problem"}'))
        is None
    )


def test_the_simulator_replays_exactly_from_a_seed(clock: FrozenClock) -> None:
    def run() -> list[str]:
        harness = make_harness(FrozenClock(clock.now()), seed=7)
        try:
            record = harness.connector.create({"title": "t"}, KEY.format(1))
            harness.agent_edit(record.id, "title", "x")
            return [record.id, *(d.id for d in sim(harness).webhooks.pending)]
        finally:
            harness.close()

    assert run() == run()


def test_describe_names_the_default_accounts_and_fixtures(h: Harness) -> None:
    described = sim(h).describe()
    accounts = {a["user"]: a for a in described["accounts (Basic auth)"]}
    assert accounts["im-integration"]["password"] == "im-integration"
    assert accounts["im-integration"]["web service access only"] == "true"
    assert accounts["agent"]["web service access only"] == "false"
    assert {"alice@example.com", "bob@example.com"} <= set(described["users"])
    assert "Service Desk" in described["assignment groups"]
    assert described["incidents"] == 0 == sim(h).record_count()
    assert described["business rule"]["retries"] == "none"
