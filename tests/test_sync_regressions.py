"""Regressions found by reviewing the sync engine against SPEC §4-§6: each was a lost
update, a duplicate, or a stall before it was fixed."""

from __future__ import annotations

from pathlib import Path

from tests.two_way import Two, new_incident


def snow_title(two, n):
    with two.agent("prod-snow") as a:
        return a.get(f"/api/now/table/incident/{two.external_id('prod-snow', n)}").json()["result"][
            "short_description"
        ]


def jira_title(two, n):
    with two.agent("prod-jira") as a:
        return a.get(f"/rest/api/3/issue/{two.external_id('prod-jira', n)}").json()["fields"][
            "summary"
        ]


def test_an_ignored_edit_of_a_platform_owned_field_does_not_block_later_pushes(two: Two):
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    with two.agent("prod-snow") as a:
        r = a.patch(
            f"/api/now/table/incident/{two.external_id('prod-snow', n)}",
            json={"short_description": "agent edit"},
        )
        assert r.status_code == 200
    two.sync()
    two.clock.advance(60)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title v2")
    two.sync()
    assert snow_title(two, n) == "platform title v2"


def test_a_reordered_late_echo_does_not_roll_the_snapshot_back(two: Two):
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "A")
    two.dispatcher.step()  # push A to jira (echo queued in sim)
    two.clock.advance(5)
    two.sims["prod-jira"].faults.update({"reorder_webhooks": 1})
    with two.agent("prod-jira") as a:
        a.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}",
            json={"fields": {"summary": "H"}},
        )
    two.sync()
    two.sims["prod-jira"].faults.update({"reorder_webhooks": 0})
    two.clock.advance(60)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "P2")
    two.sync()
    assert jira_title(two, n) == two.incident(n)["title"]


def test_a_dead_lettered_in_doubt_create_is_looked_up_before_a_new_create(two: Two):
    two.sims["prod-snow"].faults.update({"timeout_rate": 1})
    n = new_incident(two)
    for wait in (0, 30, 120, 480, 1800, 1):
        two.clock.advance(wait + 1)
        two.dispatcher.step()
    two.sims["prod-snow"].faults.update({"timeout_rate": 0})
    two.im.ok("incident", "update", f"INC-{n}", "--title", "later edit")
    two.sync()
    assert two.sims["prod-snow"].record_count() == 1


def test_a_human_edit_between_our_write_and_its_read_back_is_not_dropped_as_stale(
    two: Two, monkeypatch
):
    from im.connectors import jira as jira_mod

    n = new_incident(two)
    two.sync()
    issue = two.external_id("prod-jira", n)
    original = jira_mod.JiraConnector._remember
    fired = []

    def remember(self, external_id):
        if not fired:
            fired.append(1)
            two.clock.advance(1)
            with two.agent("prod-jira") as a:
                a.put(
                    f"/rest/api/3/issue/{issue}",
                    json={"fields": {"summary": "human after our PUT"}},
                )
        return original(self, external_id)

    monkeypatch.setattr(jira_mod.JiraConnector, "_remember", remember)
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "ours")
    two.dispatcher.step()
    two.sync()
    two.clock.advance(60)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "ours v2")
    two.sync()
    assert two.incident(n)["title"] == jira_title(two, n)


def test_one_integration_with_a_missing_ca_bundle_does_not_stop_the_others(
    two: Two, tmp_path: Path
) -> None:
    new_incident(two)
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    two.db().execute(
        "UPDATE integrations SET ca_bundle = ?, updated_at = '2026-11-27T09:00:00.500Z' WHERE name = 'prod-pd'",
        [str(bundle)],
    )
    bundle.unlink()
    for _ in range(3):
        two.dispatcher.step()
    assert [two.sims[k].record_count() for k in ("prod-snow", "prod-jira", "prod-pd")] == [1, 1, 0]


def test_a_rate_limit_pauses_the_rest_of_the_batch(two: Two):
    for _ in range(5):
        new_incident(two)
    two.sync()
    two.clock.advance(10)
    for i in range(1, 6):
        two.im.ok("incident", "update", f"INC-{i}", "--title", f"t{i}")
    two.sims["prod-jira"].faults.update({"rate_limit_rate": 1})
    two.dispatcher.step()
    paused = (
        two.db()
        .execute(
            "SELECT o.pauses FROM outbox o JOIN integrations i ON i.id = o.integration_id "
            "WHERE i.name = 'prod-jira' AND o.state = 'pending' ORDER BY o.id"
        )
        .fetchall()
    )
    assert [p for (p,) in paused] == [1, 0, 0, 0, 0]
