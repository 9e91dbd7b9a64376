"""Conflicts (SPEC §6): a real simultaneous edit, on the platform and in the simulator within
the window, decided by each strategy; manual review holds one field while the rest flows; and
the pure decision table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from im.model import ConflictStrategy, Owner
from im.sync.conflicts import EXTERNAL, PLATFORM, Claim, Edit, decide
from tests.two_way import Two, new_incident

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def jira_title(two: Two, n: int) -> str:
    with two.agent("prod-jira") as agent:
        issue = agent.get(f"/rest/api/3/issue/{two.external_id('prod-jira', n)}").json()
    return str(issue["fields"]["summary"])


def simultaneous(two: Two, strategy: str, platform_first: bool = True) -> int:
    """A synced incident whose title is then changed on the platform and by an agent in
    Jira two seconds apart, before either side has seen the other."""
    two.im.ok("integration", "configure", "prod-jira", "--conflict-strategy", strategy)
    n = new_incident(two)
    two.sync()
    issue = two.external_id("prod-jira", n)
    two.clock.advance(10)

    def platform() -> None:
        two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")

    def agent() -> None:
        with two.agent("prod-jira") as client:
            client.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": "agent title"}})

    first, second = (platform, agent) if platform_first else (agent, platform)
    first()
    two.clock.advance(2)
    second()
    two.sync()
    return n


def conflicts(two: Two, status: str) -> list[dict[str, str]]:
    out = two.im.ok("conflict", "list", "--status", status, "--format", "json")
    return list(json.loads(out))


def test_last_write_wins_gives_the_later_edit_to_both_sides(two: Two) -> None:
    n = simultaneous(two, "last-write-wins", platform_first=True)
    assert two.incident(n)["title"] == "agent title"
    assert jira_title(two, n) == "agent title"
    [resolved] = conflicts(two, "resolved")
    assert (resolved["winner"], resolved["field"]) == ("external", "title")
    assert two.counters("prod-jira")["conflicts_detected"] == 1
    assert two.counters("prod-jira")["conflicts_resolved"] == 1
    # the winner went on to the other integrations too
    with two.agent("prod-pd") as agent:
        pd = agent.get(f"/incidents/{two.external_id('prod-pd', n)}").json()["incident"]
    assert pd["title"] == "agent title"


def test_last_write_wins_when_the_platform_was_later(two: Two) -> None:
    n = simultaneous(two, "last-write-wins", platform_first=False)
    assert two.incident(n)["title"] == "platform title"
    assert jira_title(two, n) == "platform title"
    [resolved] = conflicts(two, "resolved")
    assert resolved["winner"] == "platform"


def test_ownership_priority_gives_the_field_to_its_owner(two: Two) -> None:
    two.im.ok(
        "integration",
        "field-ownership",
        "set",
        "prod-jira",
        "title",
        "--owner",
        "platform",
        "--priority",
        "10",
    )
    n = simultaneous(two, "ownership-priority", platform_first=True)  # the agent was later
    assert two.incident(n)["title"] == "platform title"
    assert jira_title(two, n) == "platform title"
    assert conflicts(two, "resolved")[0]["winner"] == "platform"


def test_ownership_priority_across_two_integrations(two: Two) -> None:
    # Jira owns the title at 5, ServiceNow at 20: ServiceNow's claim is the stronger one
    two.im.ok(
        "integration",
        "field-ownership",
        "set",
        "prod-jira",
        "title",
        "--owner",
        "external",
        "--priority",
        "5",
    )
    two.im.ok(
        "integration",
        "field-ownership",
        "set",
        "prod-snow",
        "title",
        "--owner",
        "external",
        "--priority",
        "20",
    )
    n = simultaneous(two, "ownership-priority", platform_first=True)
    assert two.incident(n)["title"] == "platform title"
    assert (
        conflicts(two, "resolved")[0]["reason"] == "ownership priority: another integration owns it"
    )


def test_manual_review_holds_only_that_field_until_resolved(two: Two) -> None:
    n = simultaneous(two, "manual-review", platform_first=True)
    [pending] = conflicts(two, "pending")
    assert pending["field"] == "title" and pending["external_value"] == "agent title"
    assert two.incident(n)["title"] == "platform title"  # the platform keeps its value
    assert jira_title(two, n) == "agent title"  # and Jira keeps the agent's
    # other fields keep flowing to Jira, and the title still flows elsewhere
    two.clock.advance(5)
    two.im.ok("incident", "update", f"INC-{n}", "--priority", "p1", "--title", "platform title 2")
    two.sync()
    with two.agent("prod-jira") as agent:
        fields = agent.get(f"/rest/api/3/issue/{two.external_id('prod-jira', n)}").json()["fields"]
    assert fields["priority"]["name"] == "Highest"
    assert fields["summary"] == "agent title"
    # a later agent edit of the held field joins the same conflict
    two.clock.advance(5)
    with two.agent("prod-jira") as agent:
        agent.put(
            f"/rest/api/3/issue/{two.external_id('prod-jira', n)}",
            json={"fields": {"summary": "agent title 2"}},
        )
    two.sync()
    [pending] = conflicts(two, "pending")
    assert pending["external_value"] == "agent title 2"
    shown = json.loads(two.im.ok("conflict", "show", pending["id"], "--format", "json"))
    assert shown["platform_actor"] == "alice" and shown["external_actor"]
    out = two.im.ok("conflict", "resolve", pending["id"], "--use-platform")
    assert "platform value wins" in out
    two.sync()
    assert jira_title(two, n) == "platform title 2"
    assert conflicts(two, "pending") == []
    assert two.counters("prod-jira")["conflicts_manually_resolved"] == 1
    again = two.im("conflict", "resolve", pending["id"], "--use-external")
    assert again.exit_code == 1 and "already resolved" in again.stderr


def test_manual_review_resolved_with_the_external_value(two: Two) -> None:
    n = simultaneous(two, "manual-review", platform_first=True)
    [pending] = conflicts(two, "pending")
    two.im.ok("conflict", "resolve", pending["id"], "--use-external")
    two.sync()
    assert two.incident(n)["title"] == "agent title"
    assert jira_title(two, n) == "agent title"
    with two.agent("prod-pd") as agent:
        pd = agent.get(f"/incidents/{two.external_id('prod-pd', n)}").json()["incident"]
    assert pd["title"] == "agent title"


def test_manual_review_ignored_keeps_both_sides(two: Two) -> None:
    n = simultaneous(two, "manual-review", platform_first=True)
    [pending] = conflicts(two, "pending")
    two.im.ok("conflict", "resolve", pending["id"], "--ignore")
    two.sync()
    assert two.incident(n)["title"] == "platform title"
    assert jira_title(two, n) == "agent title"
    assert conflicts(two, "ignored")[0]["id"] == pending["id"]


def test_conflict_commands_refuse_what_is_wrong(two: Two) -> None:
    assert two.im("conflict", "show", "conflict-9").exit_code == 1
    assert "not a conflict id" in two.im("conflict", "resolve", "nine", "--ignore").stderr
    assert two.im("conflict", "resolve", "conflict-1").exit_code == 2


def _edit(value: str, seconds: float) -> Edit:
    return Edit(value, T0 + timedelta(seconds=seconds), "someone")


@pytest.mark.parametrize(
    ("strategy", "platform_at", "external_at", "claims", "detected", "winner"),
    [
        # outside the window: no conflict record, ownership decides, else the later change
        ("last-write-wins", 0, 10, [Claim(1, Owner.PLATFORM, 10)], False, PLATFORM),
        ("last-write-wins", 0, 10, [Claim(1, Owner.EXTERNAL, 5)], False, EXTERNAL),
        ("manual-review", 10, 0, [], False, PLATFORM),
        # within it: the strategy
        ("last-write-wins", 0, 2, [Claim(1, Owner.PLATFORM, 10)], True, EXTERNAL),
        ("last-write-wins", 2, 0, [], True, PLATFORM),
        ("last-write-wins", 0, 0, [Claim(1, Owner.EXTERNAL, 5)], True, EXTERNAL),
        ("last-write-wins", 0, 0, [], True, PLATFORM),
        ("ownership-priority", 0, 2, [Claim(1, Owner.PLATFORM, 10)], True, PLATFORM),
        ("ownership-priority", 2, 0, [Claim(1, Owner.EXTERNAL, 5)], True, EXTERNAL),
        ("ownership-priority", 0, 2, [], True, EXTERNAL),
        (
            "ownership-priority",
            2,
            0,
            [Claim(1, Owner.EXTERNAL, 5), Claim(2, Owner.EXTERNAL, 9)],
            True,
            PLATFORM,
        ),
        ("manual-review", 0, 2, [Claim(1, Owner.EXTERNAL, 5)], True, None),
    ],
)
def test_the_decision_table(
    strategy: str,
    platform_at: float,
    external_at: float,
    claims: list[Claim],
    detected: bool,
    winner: str | None,
) -> None:
    verdict = decide(
        ConflictStrategy(strategy), 5.0, _edit("p", platform_at), _edit("e", external_at), 1, claims
    )
    assert (verdict.detected, verdict.winner) == (detected, winner)


def test_conflicts_through_the_rest_api(two: Two) -> None:
    from im.api.app import create_api
    from im.sim.transport import ASGIBridge

    simultaneous(two, "manual-review", platform_first=True)
    token = two.im.ok("token", "create", "ops").strip()
    bridge = ASGIBridge(create_api(two.im.db_path, two.clock))
    try:
        with httpx.Client(
            transport=bridge, base_url="http://im", headers={"Authorization": f"Bearer {token}"}
        ) as api:
            [pending] = api.get("/conflicts").json()
            assert pending["field"] == "title" and pending["status"] == "pending"
            assert api.get(f"/conflicts/{pending['id']}").json() == pending
            assert api.get("/conflicts", params={"integration": "prod-jira"}).json() == [pending]
            assert api.get("/conflicts/conflict-99").status_code == 404
            assert (
                api.post(f"/conflicts/{pending['id']}/resolve", json={"use": "maybe"}).status_code
                == 422
            )
            done = api.post(f"/conflicts/{pending['id']}/resolve", json={"use": "external"})
            assert done.status_code == 200 and done.json()["winner"] == "external"
            again = api.post(f"/conflicts/{pending['id']}/resolve", json={"use": "platform"})
            assert again.status_code == 409
            assert api.get("/conflicts").json() == []
    finally:
        bridge.shutdown()
