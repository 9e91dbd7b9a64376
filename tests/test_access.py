"""Role bindings, the Rego policy and the audit log (SPEC §9): `im access ...`, `im audit`,
principals, and the policy's own cases run by the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from im.security import rbac
from tests.conftest import Im


def test_the_shipped_policy_passes_its_cases() -> None:
    """The policy's tests (rbac_test.rego: SPEC §9's matrix, cell by cell, with the exact
    reasons) run through regopy."""
    results = rbac.run_cases(rbac.compiled(rbac.shipped()), rbac.cases())
    assert len(results) > 100
    failed = [(r.name, r.decision) for r in results if not r.passed]
    assert failed == []


def test_a_case_that_expects_otherwise_fails() -> None:
    case = {
        "name": "viewer may rotate keys",
        "allow": True,
        "input": {"principal": "vic", "action": "key.rotate", "bindings": [], "target": {}},
    }
    (result,) = rbac.run_cases(rbac.compiled(rbac.shipped()), [case])
    assert not result.passed
    assert result.decision.reason.startswith("vic has no role")


def test_init_makes_its_caller_the_only_administrator(initialised: Im) -> None:
    rows = json.loads(initialised.ok("access", "list", "--format", "json"))
    assert [(r["principal"], r["role"], r["granted_by"]) for r in rows] == [
        ("alice", "platform.administrator", "im init")
    ]
    again = initialised("init", env={"IM_USER": "mallory"})
    assert again.exit_code == 0
    assert "mallory" not in initialised.ok("access", "list")


def test_grant_list_and_revoke(initialised: Im) -> None:
    im = initialised
    assert im.ok(
        "access", "grant", "bob", "--role", "integration.manager", "--scope", "prod-*"
    ) == ("granted integration.manager for prod-* to bob\n")
    assert "holds integration.manager for prod-* already" in im.ok(
        "access", "grant", "bob", "--role", "integration.manager", "--scope", "prod-*"
    )
    im.ok("access", "grant", "bob", "--role", "integration.manager", "--scope", "stage-db")
    rows = json.loads(im.ok("access", "list", "--principal", "bob", "--format", "json"))
    assert [r["scope"] for r in rows] == ["prod-*", "stage-db"]
    im.ok("access", "revoke", "bob", "--role", "integration.manager", "--scope", "prod-*")
    rows = json.loads(im.ok("access", "list", "--principal", "bob", "--format", "json"))
    assert [r["scope"] for r in rows] == ["stage-db"]
    missing = im("access", "revoke", "bob", "--role", "viewer")
    assert missing.exit_code == 1
    assert "bob does not hold viewer (bob holds: integration.manager (stage-db))" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bob", "--role", "integration.manager"], "an integration.manager needs --scope"),
        (["bob", "--role", "viewer", "--scope", "prod-*"], "--scope applies to"),
        (["bob", "--role", "root"], "'root' is not one of"),
        (["bo b", "--role", "viewer"], "the principal 'bo b' is not valid"),
        (['a"b', "--role", "viewer"], "is not valid"),
    ],
)
def test_bad_grants_are_usage_errors(initialised: Im, args: list[str], message: str) -> None:
    done = initialised("access", "grant", *args)
    assert done.exit_code == 2, done.stderr
    assert message in done.stderr
    assert done.stderr.count("\n") == 1


def test_the_last_administrator_cannot_be_revoked(initialised: Im) -> None:
    done = initialised("access", "revoke", "alice", "--role", "platform.administrator")
    assert done.exit_code == 1
    assert "alice is the last platform.administrator" in done.stderr
    initialised.ok("access", "grant", "ann", "--role", "platform.administrator")
    initialised.ok("access", "revoke", "alice", "--role", "platform.administrator")
    # alice can no longer administer; ann can
    assert initialised("access", "list").exit_code == 0  # her own (now empty) bindings
    assert initialised("audit").exit_code == 1
    assert initialised("audit", env={"IM_USER": "ann"}).exit_code == 0


def test_a_bad_im_user_is_refused_before_anything_runs(initialised: Im) -> None:
    done = initialised("incident", "list", env={"IM_USER": "x'; drop"})
    assert done.exit_code == 2
    assert done.stderr.startswith("error: $IM_USER ")


def test_policy_test_decides_for_a_principal_with_its_real_bindings(initialised: Im) -> None:
    im = initialised
    im.ok("access", "grant", "carol", "--role", "incident_commander")
    im.ok("incident", "create", "--title", "db down", "--commander", "carol")
    im.ok("incident", "create", "--title", "cache cold")
    mine = json.loads(
        im.ok("access", "policy", "test", "incident.update", "--as", "carol", "--incident",
              "INC-1", "--format", "json")
    )  # fmt: skip
    assert mine == {
        "principal": "carol",
        "action": "incident.update",
        "decision": "allow",
        "reason": "carol commands INC-1 (incident_commander)",
    }
    other = im.ok(
        "access", "policy", "test", "incident.update", "--as", "carol", "--incident", "INC-2"
    )
    assert (
        "deny" in other and "carol (incident_commander) may not incident.update on INC-2" in other
    )
    # deciding for someone else is an administrator's business
    done = im(
        "access", "policy", "test", "incident.update", "--as", "alice", env={"IM_USER": "carol"}
    )
    assert done.exit_code == 1 and "access denied" in done.stderr


def test_policy_test_runs_the_cases_against_the_policy_in_force(initialised: Im) -> None:
    done = initialised("access", "policy", "test")
    assert done.exit_code == 0
    assert done.stderr.strip().endswith("cases pass")
    assert done.stdout == ""  # on a table, only failures are listed


# the shipped policy, except that any role may create incidents
LAX = rbac.shipped().replace(
    '\trow == "incident-create"\n\t"incident_commander" in roles',
    '\trow == "incident-create"\n\tcount(roles) > 0',
)


def test_a_custom_policy_is_tested_then_put_in_force(initialised: Im, tmp_path: Path) -> None:
    im = initialised
    assert rbac.shipped() != LAX
    lax = tmp_path / "lax.rego"
    lax.write_text(LAX)
    im.ok("access", "grant", "vic", "--role", "viewer")
    assert im("incident", "create", "--title", "x", env={"IM_USER": "vic"}).exit_code == 1
    # the shipped cases show exactly which decisions the new policy changes
    tested = im("access", "policy", "test", "--policy", str(lax), "--format", "json")
    assert tested.exit_code == 1
    failing = [c for c in json.loads(tested.stdout) if c["result"] == "FAIL"]
    assert [c["name"] for c in failing] == [
        "manager may not create incidents",
        "viewer may not create incidents",
    ]
    assert failing[0]["reason"] == "bob is an incident_commander"  # the reason it was given
    assert im.ok("access", "policy", "use", str(lax)) == "the policy in force is now lax.rego\n"
    assert im("incident", "create", "--title", "x", env={"IM_USER": "vic"}).exit_code == 0
    shown = im("access", "policy", "show")
    assert shown.stdout == LAX and "lax.rego" in shown.stderr
    im.ok("access", "policy", "use", "--builtin")
    assert im("incident", "create", "--title", "y", env={"IM_USER": "vic"}).exit_code == 1


def test_a_policy_that_does_not_compile_is_refused_in_one_line(
    initialised: Im, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.rego"
    broken.write_text("package im.rbac\n\ndecision := {\n")
    done = initialised("access", "policy", "use", str(broken))
    assert done.exit_code == 1
    assert done.stdout == ""  # the engine's own listing does not leak onto stdout
    assert done.stderr.startswith("error: the policy broken.rego does not compile: ")
    assert "broken.rego:" in done.stderr
    assert done.stderr.count("\n") == 1
    assert initialised("incident", "list").exit_code == 0  # the shipped policy still decides


def test_a_policy_that_would_lock_the_administrator_out_is_refused(
    initialised: Im, tmp_path: Path
) -> None:
    closed = tmp_path / "closed.rego"
    closed.write_text(
        'package im.rbac\n\ndecision := {"allow": false, "reason": "closed for maintenance"}\n'
    )
    done = initialised("access", "policy", "use", str(closed))
    assert done.exit_code == 1
    assert "alice could no longer change the policy: closed for maintenance" in done.stderr


def test_a_policy_without_a_decision_denies_and_says_why(initialised: Im, tmp_path: Path) -> None:
    empty = tmp_path / "empty.rego"
    empty.write_text("package im.rbac\n\nallow := true\n")
    done = initialised(
        "access", "policy", "test", "incident.list", "--policy", str(empty), "--format", "json"
    )
    answer = json.loads(done.stdout)
    assert answer["decision"] == "deny"
    assert "gave no decision" in answer["reason"]


def test_audit_records_a_failed_change_with_its_error(initialised: Im) -> None:
    im = initialised
    im.ok("incident", "create", "--title", "db down")
    im.ok("incident", "update", "INC-1", "--status", "closed")
    assert im("incident", "update", "INC-1", "--status", "triggered").exit_code == 1
    assert im("incident", "list", env={"IM_USER": "nobody"}).exit_code == 1
    log = json.loads(im.ok("audit", "--format", "json"))
    assert [(e["action"], e["decision"], e["outcome"]) for e in log] == [
        ("access.grant", "allow", "ok"),  # im init made alice the administrator
        ("incident.create", "allow", "ok"),
        ("incident.update", "allow", "ok"),
        ("incident.update", "allow", "failed"),
        ("incident.list", "deny", "denied"),
    ]
    assert "closed" in log[3]["error"]
    assert log[4]["principal"] == "nobody"
    assert json.loads(im.ok("audit", "--action", "incident", "--since", "1h", "--format", "json"))
    assert im("audit", "--since", "yesterday").exit_code == 2


def test_tokens_act_with_their_owners_roles(initialised: Im) -> None:
    im = initialised
    done = im("token", "create", "mine", env={"IM_USER": "nobody"})
    assert done.exit_code == 0  # everyone may hold tokens of their own
    refused = im("token", "create", "theirs", "--for", "alice", env={"IM_USER": "nobody"})
    assert refused.exit_code == 1 and "access denied" in refused.stderr
    assert im("token", "revoke", "mine", env={"IM_USER": "bob"}).exit_code == 1
    assert im("token", "revoke", "mine", env={"IM_USER": "nobody"}).exit_code == 0


def test_only_an_administrator_starts_the_daemon(initialised: Im) -> None:
    initialised.ok("access", "grant", "vic", "--role", "viewer")
    done = initialised("daemon", "--port", "18089", env={"IM_USER": "vic"})
    assert done.exit_code == 1
    assert done.stderr == (
        "error: access denied: vic (viewer) may not daemon.run (ask a platform.administrator; "
        "`im access list` shows your roles)\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("package im.rbac\n\ndecision := d if { d := data.x with input as {} }\n", "uses `with`"),
        ('package im.rbac\n\ndecision := {"allow": true, "reason": "x"} if { print("hi") }\n',
         "uses `print`"),
    ],
)  # fmt: skip
def test_policies_using_what_the_engine_cannot_run_are_refused(
    initialised: Im, tmp_path: Path, text: str, message: str
) -> None:
    policy = tmp_path / "p.rego"
    policy.write_text(text)
    for args in (["use", str(policy)], ["test", "--policy", str(policy)]):
        done = initialised("access", "policy", *args)
        assert done.exit_code == 1, done.stderr
        assert message in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "cases",
    [
        "package im.rbac_test\n\ncases := [1, 2]\n",
        'package im.rbac_test\n\ncases := [{"name": "x", "allow": true}]\n',
        'package im.rbac_test\n\ncases := [{"name": "x", "allow": true, "input": [1]}]\n',
    ],
)
def test_malformed_cases_are_one_line_errors(initialised: Im, tmp_path: Path, cases: str) -> None:
    path = tmp_path / "cases.rego"
    path.write_text(cases)
    done = initialised("access", "policy", "test", "--cases", str(path))
    assert done.exit_code == 1
    assert done.stderr.startswith("error: case 1 of the cases is not ")


def test_a_policy_file_that_is_not_text_is_a_usage_error(initialised: Im, tmp_path: Path) -> None:
    path = tmp_path / "p.rego"
    path.write_bytes(b"\xff\xfe\x00package")
    done = initialised("access", "policy", "use", str(path))
    assert done.exit_code == 2
    assert "p.rego is not UTF-8 text" in done.stderr


def test_a_slow_policy_is_refused(initialised: Im, tmp_path: Path) -> None:
    slow = tmp_path / "slow.rego"
    slow.write_text(
        rbac.shipped().replace(
            "administrator if", "administrator if count(numbers.range(1, 300000)) > 0\n\n_x if"
        )
    )
    done = initialised("access", "policy", "use", str(slow))
    assert done.exit_code == 1
    assert "ms for one decision" in done.stderr


def test_an_unknown_integration_names_only_what_the_caller_may_see(initialised: Im) -> None:
    im = initialised
    env = {"IM_PASSWORD": "x"}
    for name in ("prod-snow", "dev-snow"):
        im.ok("integration", "create", name, "--type", "servicenow", "--url",
              "https://acme.service-now.com", "--username", "u", env=env)  # fmt: skip
    im.ok("access", "grant", "bob", "--role", "integration.manager", "--scope", "prod-*")
    for args in (["integration", "get", "prod-snoww"], ["integration", "delete", "prod-x", "--yes"],
                 ["integration", "reconcile", "schedule", "prod-snox"]):  # fmt: skip
        done = im(*args, env={"IM_USER": "bob"})
        assert done.exit_code == 1, done.stderr
        assert "dev-snow" not in done.stderr and "prod-snow" in done.stderr
    nobody = im("integration", "reconcile", "schedule", "dev-snox", env={"IM_USER": "nobody"})
    assert "dev-snow" not in nobody.stderr


def test_the_policy_is_shown_to_those_with_a_role(initialised: Im) -> None:
    assert initialised("access", "policy", "show", env={"IM_USER": "nobody"}).exit_code == 1
    initialised.ok("access", "grant", "vic", "--role", "viewer")
    shown = initialised("access", "policy", "show", env={"IM_USER": "vic"})
    assert shown.exit_code == 0 and "package im.rbac" in shown.stdout


def test_showing_a_webhook_secret_is_audited(initialised: Im) -> None:
    initialised.ok(
        "integration", "create", "prod-snow", "--type", "servicenow", "--url",
        "https://acme.service-now.com", "--username", "u",
        env={"IM_PASSWORD": "x", "IM_WEBHOOK_SECRET": "whsec_c2VjcmV0LXdlYmhvb2s="},
    )  # fmt: skip
    initialised.ok("integration", "webhook-setup", "prod-snow", "--show-secret")
    log = json.loads(initialised.ok("audit", "--format", "json"))
    assert [e["action"] for e in log] == [
        "access.grant",  # im init
        "integration.create",
        "integration.show-secret",
    ]
    assert "whsec_" not in json.dumps(log)
