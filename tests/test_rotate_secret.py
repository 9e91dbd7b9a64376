"""`im integration rotate-secret`: two webhook secrets are valid until the grace ends (SPEC §9).

End to end: the simulators sign their deliveries with whichever secret a test gives them and
send them through the daemon's real webhook route; the applier applies them on a frozen clock.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

from im.clock import format_time
from im.store import integrations as integration_rows
from im.store import sync_state
from tests.conftest import Result
from tests.two_way import SECRET, Two, new_incident

PUBLIC = ("--public-url", "http://im")


def rotate(two: Two, name: str, *args: str, input: str | None = None) -> Result:
    return two.im("integration", "rotate-secret", name, *args, input=input)


def change(two: Two, name: str, n: int, text: str) -> str:
    """An agent changes INC-n's record in ``name``; its webhook goes through the daemon and
    is applied. The daemon's answer to that delivery (e.g. "202")."""
    external = two.external_id(name, n)
    with two.agent(name) as agent:
        if name == "prod-snow":
            made = agent.patch(f"/api/now/table/incident/{external}", json={"work_notes": text})
        elif name == "prod-jira":
            made = agent.put(f"/rest/api/3/issue/{external}", json={"fields": {"summary": text}})
        else:
            made = agent.post(f"/incidents/{external}/notes", json={"note": {"content": text}})
        assert made.is_success, made.text
    log = two.sims[name].webhooks.log
    before = len(log)
    two.deliver()
    assert len(log) == before + 1, "one delivery, settled"
    return log[-1].answers[-1].rsplit(" ", 1)[-1]


def shown_secret(two: Two, name: str) -> str:
    """The webhook secret, as the one command that shows it shows it."""
    out = two.im.ok("integration", "webhook-setup", name, *PUBLIC, "--show-secret")
    pattern = r"whsec_[A-Za-z0-9+/=]+" if name == "prod-snow" else r"Secret:\s+(\S+)"
    found = re.search(pattern, out)
    assert found, out
    return found.group(found.lastindex or 0)


def previous_until(two: Two, name: str) -> str | None:
    view = json.loads(two.im.ok("integration", "get", name, "--format", "json"))
    until: str | None = view["webhook_secret_previous_until"]
    return until


def failed(two: Two, name: str) -> int:
    return two.counters(name).get("inbound_failed", 0)


def no_secret_in(result: Result, *secrets: str) -> None:
    for value in secrets:
        assert value not in result.stdout and value not in result.stderr


def test_both_secrets_apply_during_the_grace_and_only_the_new_one_after_it(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    old = SECRET["prod-snow"]
    until = format_time(two.clock.now() + timedelta(hours=24))
    rotated = rotate(two, "prod-snow")
    assert rotated.exit_code == 0, rotated.stderr
    assert rotated.stdout.splitlines() == [
        "prod-snow: new webhook secret generated; deliveries signed with it are accepted",
        f"deliveries signed with the old secret are accepted until {until}",
        "next:",
        "  - configure the new secret in servicenow: `im integration webhook-setup prod-snow "
        "--show-secret` prints it with where it goes",
        "  - then stop accepting the old one: `im integration rotate-secret prod-snow --finish` "
        f"(it stops by itself at {until})",
    ]
    new = shown_secret(two, "prod-snow")
    assert new.startswith("whsec_") and new != old
    no_secret_in(rotated, old, new)
    assert previous_until(two, "prod-snow") == until

    sim = two.sims["prod-snow"]
    assert change(two, "prod-snow", n, "signed with the old secret") == "202"
    sim.webhook_secret = new
    assert change(two, "prod-snow", n, "signed with the new secret") == "202"
    # the last moment of the grace still counts
    two.clock.advance(24 * 3600 - 1)
    sim.webhook_secret = old
    assert change(two, "prod-snow", n, "old, just in time") == "202"
    assert failed(two, "prod-snow") == 0

    two.clock.advance(1)  # now == expires_at: the grace is over
    assert previous_until(two, "prod-snow") is None
    assert change(two, "prod-snow", n, "old, too late") == "401"
    assert failed(two, "prod-snow") == 1
    row = integration_rows.find(two.db(), "prod-snow")
    assert row is not None
    state = sync_state.get(two.db(), row["id"])
    assert state["last_rejection"].startswith("not authentic")
    sim.webhook_secret = new
    assert change(two, "prod-snow", n, "new, still fine") == "202"

    journal = two.incident(n)["journal"]
    assert [j["body"] for j in journal] == [
        "signed with the old secret",
        "signed with the new secret",
        "old, just in time",
        "new, still fine",
    ]


def test_finish_stops_accepting_the_old_secret_at_once(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    assert rotate(two, "prod-jira", "--grace", "2h").exit_code == 0
    assert change(two, "prod-jira", n, "old during the grace") == "202"
    until = previous_until(two, "prod-jira")
    finished = rotate(two, "prod-jira", "--finish")
    assert finished.exit_code == 0, finished.stderr
    assert finished.stdout.splitlines() == [
        f"prod-jira: the old webhook secret is no longer accepted (it was until {until})",
        "only the current webhook secret is accepted",
    ]
    assert previous_until(two, "prod-jira") is None
    assert change(two, "prod-jira", n, "old after finish") == "401"
    assert failed(two, "prod-jira") == 1
    two.sims["prod-jira"].webhook_secret = shown_secret(two, "prod-jira")
    assert change(two, "prod-jira", n, "new after finish") == "202"
    assert two.incident(n)["title"] == "new after finish"
    again = rotate(two, "prod-jira", "--finish")
    assert again.exit_code == 1
    assert again.stderr == (
        "error: prod-jira has no rotation of its webhook secret in progress "
        "(start one with `im integration rotate-secret prod-jira`)\n"
    )


def test_finish_goes_alone(two: Two) -> None:
    for extra in (("--grace", "1h"), ("--new-secret", "x-y-z")):
        result = rotate(two, "prod-jira", "--finish", *extra)
        assert result.exit_code == 2
        assert result.stderr == (
            "error: --finish cannot be combined with --grace or --new-secret\n"
        )
    assert shown_secret(two, "prod-jira") == SECRET["prod-jira"]


def test_grace_zero_refuses_the_old_secret_at_once(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    result = rotate(two, "prod-snow", "--grace", "0")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[:3] == [
        "prod-snow: new webhook secret generated; deliveries signed with it are accepted",
        "deliveries signed with the old secret are refused from now on (no grace)",
        "next:",
    ]
    assert "--finish" not in result.stdout  # nothing left to finish
    assert previous_until(two, "prod-snow") is None
    stored = two.db().execute("SELECT name FROM integration_secrets WHERE integration_id = 1")
    assert sorted(r[0] for r in stored) == ["password", "webhook_secret"]
    assert change(two, "prod-snow", n, "old") == "401"
    two.sims["prod-snow"].webhook_secret = shown_secret(two, "prod-snow")
    assert change(two, "prod-snow", n, "new") == "202"


def test_a_second_rotation_drops_the_oldest_secret_and_says_so(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    oldest = SECRET["prod-snow"]
    assert rotate(two, "prod-snow").exit_code == 0
    middle = shown_secret(two, "prod-snow")
    first_until = previous_until(two, "prod-snow")
    two.clock.advance(3600)
    second = rotate(two, "prod-snow", "--grace", "30m")
    assert second.exit_code == 0, second.stderr
    newest = shown_secret(two, "prod-snow")
    until = format_time(two.clock.now() + timedelta(minutes=30))
    assert second.stdout.splitlines()[:3] == [
        "prod-snow: new webhook secret generated; deliveries signed with it are accepted",
        f"deliveries signed with the old secret are accepted until {until}",
        f"the secret before it (accepted until {first_until}) is no longer accepted: "
        "only two are valid at once",
    ]
    no_secret_in(second, oldest, middle, newest)
    assert previous_until(two, "prod-snow") == until
    sim = two.sims["prod-snow"]
    assert change(two, "prod-snow", n, "oldest") == "401"
    sim.webhook_secret = middle
    assert change(two, "prod-snow", n, "middle") == "202"
    sim.webhook_secret = newest
    assert change(two, "prod-snow", n, "newest") == "202"
    assert [j["body"] for j in two.incident(n)["journal"]] == ["middle", "newest"]


def test_pagerduty_takes_the_secret_pagerduty_generated(two: Two) -> None:
    n = new_incident(two)
    two.sync()
    old, new = SECRET["prod-pd"], "pd-regenerated-secret-9f8e7d6c5b4a"
    refused = rotate(two, "prod-pd")
    assert refused.exit_code == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith(
        "error: prod-pd is a PagerDuty integration: --new-secret is required (PagerDuty "
        "generates webhook secrets itself"
    )
    assert "delivery_method.secret" in refused.stderr
    assert "webhook-setup prod-pd" in refused.stderr
    assert previous_until(two, "prod-pd") is None

    rotated = rotate(two, "prod-pd", "--new-secret", "-", input=new + "\n")
    assert rotated.exit_code == 0, rotated.stderr
    assert rotated.stderr == ""
    no_secret_in(rotated, old, new)
    assert rotated.stdout.splitlines()[0] == (
        "prod-pd: new webhook secret stored; deliveries signed with it are accepted"
    )
    assert "make sure PagerDuty no longer signs deliveries with the old secret" in rotated.stdout
    pd = two.sims["prod-pd"]
    # while PagerDuty rotates, it signs with both: v1=<new>,v1=<old>
    pd.webhook_secret, pd.old_webhook_secrets = new, (old,)
    assert change(two, "prod-pd", n, "both signatures") == "202"
    pd.webhook_secret, pd.old_webhook_secrets = old, ()
    assert change(two, "prod-pd", n, "old only") == "202"
    two.clock.advance(24 * 3600)
    assert change(two, "prod-pd", n, "old only, too late") == "401"
    pd.webhook_secret, pd.old_webhook_secrets = new, (old,)
    assert change(two, "prod-pd", n, "both, after the grace") == "202"
    bodies = [j["body"] for j in two.incident(n)["journal"]]
    assert bodies == ["both signatures", "old only", "both, after the grace"]


def test_a_given_secret_on_the_command_line_warns_and_is_checked(two: Two) -> None:
    flagged = rotate(two, "prod-jira", "--new-secret", "jira-new-secret-123456")
    assert flagged.exit_code == 0
    assert flagged.stderr == (
        "warning: --new-secret on the command line shows in `ps` and shell history; "
        "prefer --new-secret - (a hidden prompt)\n"
    )
    assert "jira-new-secret-123456" not in flagged.stdout
    assert shown_secret(two, "prod-jira") == "jira-new-secret-123456"
    same = rotate(two, "prod-jira", "--new-secret", "-", input="jira-new-secret-123456\n")
    assert same.exit_code == 2
    assert same.stderr.startswith("error: the new secret is the one in use")
    broken = rotate(two, "prod-jira", "--new-secret", "-", input="tab\there\n")
    assert broken.exit_code == 2
    assert "printable ASCII" in broken.stderr
    # nothing changed: the first rotation's grace is still the one in force
    assert shown_secret(two, "prod-jira") == "jira-new-secret-123456"


def test_grace_must_be_a_duration_of_at_most_a_week(two: Two) -> None:
    for grace, message in (
        ("8d", "error: --grace must be between 0 and 7d"),
        ("soon", "error: --grace takes a duration"),
    ):
        result = rotate(two, "prod-snow", "--grace", grace)
        assert result.exit_code == 2
        assert result.stderr.startswith(message), result.stderr
    assert rotate(two, "prod-snow", "--grace", "7d").exit_code == 0
    assert previous_until(two, "prod-snow") == format_time(two.clock.now() + timedelta(days=7))


def test_get_and_sync_status_show_a_rotation_in_progress_without_values(two: Two) -> None:
    def status() -> dict[str, object]:
        out = two.im.ok("integration", "sync-status", "prod-jira", "--format", "json")
        shown: dict[str, object] = json.loads(out)
        return shown

    before = status()
    assert before["webhook_secret_previous_until"] is None
    assert rotate(two, "prod-jira", "--grace", "90m").exit_code == 0
    until = format_time(two.clock.now() + timedelta(minutes=90))
    new = shown_secret(two, "prod-jira")
    after = status()
    assert after["webhook_secret_previous_until"] == until
    # informational: the verdict is what it was
    assert (after["health"], after["reasons"]) == (before["health"], before["reasons"])
    outputs = [
        two.im("integration", "get", "prod-jira"),
        two.im("integration", "get", "prod-jira", "--format", "json"),
        two.im("integration", "sync-status", "prod-jira"),
    ]
    assert f"webhook_secret_previous_until  {until}" in outputs[0].stdout.splitlines()
    assert until in outputs[2].stdout
    for result in outputs:
        assert result.exit_code == 0
        no_secret_in(result, SECRET["prod-jira"], new)
    two.clock.advance(90 * 60)
    assert previous_until(two, "prod-jira") is None
    assert status()["webhook_secret_previous_until"] is None
    # the expired row is gone at the next finish, which says it had ended already
    late = rotate(two, "prod-jira", "--finish")
    assert late.exit_code == 0
    assert late.stdout.splitlines()[0] == (
        "prod-jira: the old webhook secret had already stopped being accepted; removed"
    )
