"""``GET /metrics`` through the daemon's app (in-process), after real traffic in the two-way
world: counters equal the database's, gauges follow the backlog and the DLQ, propagation
histograms count each finished change once, and the token rule off loopback."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from im.clock import parse_time
from im.daemon.app import create_app
from im.daemon.metrics import COUNTERS, MetricsEndpoint
from im.sim.transport import ASGIBridge
from tests.conftest import Im
from tests.two_way import Two, new_incident

NAMES = ("prod-snow", "prod-jira", "prod-pd")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Scrape = Callable[[], Samples]


@contextmanager
def metrics_client(db_path: Path, im: Im, loopback: bool = True) -> Iterator[httpx.Client]:
    """The daemon's app with only /metrics, over the database at ``db_path``."""
    endpoint = MetricsEndpoint(db_path, im.clock, loopback)
    bridge = ASGIBridge(create_app(lambda: (True, ""), metrics=endpoint.handle))
    try:
        yield httpx.Client(transport=bridge, base_url="http://im")
    finally:
        bridge.shutdown()


@pytest.fixture
def daemon(two: Two) -> Iterator[httpx.Client]:
    with metrics_client(two.im.db_path, two.im) as client:
        yield client


@pytest.fixture
def scrape(daemon: httpx.Client) -> Scrape:
    def run() -> Samples:
        answer = daemon.get("/metrics")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text)
            for s in family.samples
        }

    return run


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


TYPES = {"prod-snow": "servicenow", "prod-jira": "jira", "prod-pd": "pagerduty"}


def of(integration: str) -> dict[str, str]:
    return {"integration": integration, "type": TYPES[integration]}


def live_rows(two: Two, name: str) -> int:
    return int(
        two.db()
        .execute(
            "SELECT count(*) FROM outbox o JOIN integrations i ON i.id = o.integration_id "
            "WHERE i.name = ? AND o.state IN ('pending', 'in_flight', 'in_doubt')",
            [name],
        )
        .fetchone()[0]
    )


def done(two: Two, sql: str) -> list[float]:
    """Seconds between the two times each row of ``sql`` selects."""
    return [
        (parse_time(end) - parse_time(start)).total_seconds()
        for start, end in two.db().execute(sql).fetchall()
    ]


OUTBOUND = "SELECT created_at, done_at FROM outbox WHERE state = 'done'"
INBOUND = "SELECT received_at, applied_at FROM inbound_events WHERE state = 'applied'"


def edit_in_jira(two: Two, n: int, summary: str) -> None:
    with two.agent("prod-jira") as agent:
        answer = agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}",
            json={"fields": {"summary": summary}},
        )
    assert answer.status_code == 204


def test_counters_are_the_databases_after_sends_echoes_and_ignored_events(
    two: Two, scrape: Scrape
) -> None:
    before = scrape()
    for name in NAMES:  # every counter is there from the start, at 0
        assert all(one(before, f"im_sync_{c}_total", **of(name)) == 0 for c in COUNTERS)
    n = new_incident(two)
    two.sync()
    two.im.ok("integration", "configure", "prod-jira", "--direction", "outbound")
    two.clock.advance(10)
    edit_in_jira(two, n, "ignored")
    two.deliver()
    samples = scrape()
    for name in NAMES:
        stored = two.counters(name)
        for counter in COUNTERS:
            assert one(samples, f"im_sync_{counter}_total", **of(name)) == stored.get(counter, 0), (
                name,
                counter,
            )
    assert one(samples, "im_sync_outbound_success_total", **of("prod-snow")) >= 1
    assert one(samples, "im_sync_inbound_echo_total", **of("prod-snow")) >= 1
    assert one(samples, "im_sync_inbound_ignored_total", **of("prod-jira")) >= 1


def test_backlog_and_its_oldest_age_follow_the_queue(two: Two, scrape: Scrape) -> None:
    new_incident(two)
    two.clock.advance(90)
    waiting = scrape()
    for name in NAMES:
        assert one(waiting, "im_sync_backlog", **of(name)) == live_rows(two, name) == 1
        assert one(waiting, "im_sync_backlog_oldest_seconds", **of(name)) == 90
    two.sync()
    sent = scrape()
    for name in NAMES:
        assert one(sent, "im_sync_backlog", **of(name)) == 0
        assert one(sent, "im_sync_backlog_oldest_seconds", **of(name)) == 0


def test_a_permanent_error_shows_in_the_dlq_size(two: Two, scrape: Scrape) -> None:
    two.sims["prod-snow"].faults.update({"permanent_error": 422})
    new_incident(two)
    two.sync()
    samples = scrape()
    dead = two.db().execute(
        "SELECT count(*) FROM dead_letters d JOIN integrations i ON i.id = d.integration_id "
        "WHERE i.name = 'prod-snow' AND d.state = 'dead'"
    )
    assert one(samples, "im_sync_dlq_size", **of("prod-snow")) == dead.fetchone()[0] >= 1
    assert one(samples, "im_sync_dlq_size", **of("prod-jira")) == 0
    assert one(samples, "im_sync_backlog", **of("prod-snow")) == 0


def histogram(samples: Samples, direction: str) -> tuple[float, float, float]:
    """count, sum, and the count of observations of at most 2.5 s."""
    return (
        one(samples, "im_sync_propagation_seconds_count", direction=direction),
        one(samples, "im_sync_propagation_seconds_sum", direction=direction),
        one(samples, "im_sync_propagation_seconds_bucket", direction=direction, le="2.5"),
    )


def test_propagation_counts_each_finished_change_once(two: Two, scrape: Scrape) -> None:
    assert histogram(scrape(), "outbound") == (0, 0, 0)
    n = new_incident(two)
    two.clock.advance(3)
    queued = scrape()  # the rows are newer than the watermark but not sent yet
    assert histogram(queued, "outbound")[0] == 0
    two.sync()
    sent = scrape()
    outbound = done(two, OUTBOUND)
    assert len(outbound) == 3 and all(s >= 3 for s in outbound)
    assert histogram(sent, "outbound") == (3, sum(outbound), 0)
    # echoes are not applied changes; PagerDuty's escalation policy, news to us, is
    assert histogram(sent, "inbound")[0] == len(done(two, INBOUND)) == 1
    assert histogram(scrape(), "outbound") == (3, sum(outbound), 0)  # no double count

    two.clock.advance(10)
    edit_in_jira(two, n, "Checkout API recovering")
    two.sync()
    later = scrape()
    inbound = done(two, INBOUND)
    assert len(inbound) == 2
    assert histogram(later, "inbound") == (2, sum(inbound), 2)
    outbound = done(two, OUTBOUND)  # the new title went on to the other integrations
    assert len(outbound) > 3
    assert histogram(later, "outbound")[:2] == (len(outbound), sum(outbound))
    assert scrape() == later


def propagation_counts(client: httpx.Client) -> dict[str, float]:
    return {
        s.labels["direction"]: s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        for s in f.samples
        if s.name == "im_sync_propagation_seconds_count"
    }


def test_a_restart_observes_only_what_finishes_after_its_first_scrape(two: Two) -> None:
    # a daemon observed the first incident's sends and the webhooks back
    with metrics_client(two.im.db_path, two.im) as client:
        assert propagation_counts(client) == {"outbound": 0, "inbound": 0}
        n = new_incident(two)
        two.sync()
        assert propagation_counts(client) == {"outbound": 3, "inbound": 1}
    # restarted a minute later, with a second incident queued but not sent yet: what
    # finished before it is not taken again, however recent
    two.clock.advance(60)
    new_incident(two, "--title", "later")
    assert [live_rows(two, name) for name in NAMES] == [1, 1, 1]
    with metrics_client(two.im.db_path, two.im) as restarted:
        assert propagation_counts(restarted) == {"outbound": 0, "inbound": 0}
        # the rows open at the first scrape are observed once they finish, and what comes
        # after (PagerDuty's escalation policy for the second incident); nothing earlier
        two.sync()
        assert len(done(two, OUTBOUND)) == 6 and len(done(two, INBOUND)) == 2
        assert propagation_counts(restarted) == {"outbound": 3, "inbound": 1}
        two.clock.advance(10)
        edit_in_jira(two, n, "Checkout API recovering")
        two.sync()
        outbound, inbound = len(done(two, OUTBOUND)), len(done(two, INBOUND))
        assert (outbound, inbound) == (8, 3)  # the new title went on to ServiceNow, PagerDuty
        assert propagation_counts(restarted) == {"outbound": outbound - 3, "inbound": inbound - 1}


def test_off_loopback_the_endpoint_needs_a_token(two: Two) -> None:
    token = two.im.ok("token", "create", "scraper").strip()
    with metrics_client(two.im.db_path, two.im, loopback=False) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert set(refused.json()["error"]) == {"code", "message"}
        wrong = client.get("/metrics", headers={"Authorization": "Bearer imt_nope"})
        assert wrong.status_code == 401
        fine = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert fine.status_code == 200 and "im_sync_backlog" in fine.text


def test_a_broken_database_is_a_503_in_the_error_shape(tmp_path: Path, im: Im) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with metrics_client(junk, im) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "database_unavailable"


def test_a_locked_database_is_a_503_in_the_error_shape(
    initialised: Im, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IM_BUSY_TIMEOUT", "0")
    holder = sqlite3.connect(initialised.db_path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE meta SET value = value")  # takes the lock until the connection ends
    try:
        with metrics_client(initialised.db_path, initialised) as client:
            answer = client.get("/metrics")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert answer.status_code == 503
    assert set(answer.json()["error"]) == {"code", "message"}
