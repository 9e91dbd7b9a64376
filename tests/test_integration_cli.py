"""`im integration create|configure|get|list|delete`: options, secrets, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import JIRA, PD, SECRETS, SNOW, Im


def test_create_takes_secrets_from_env_and_says_so(initialised: Im) -> None:
    result = initialised("integration", "create", "prod-snow", *SNOW, env=SECRETS)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "created servicenow integration prod-snow\n"
    assert result.stderr == (
        "password taken from $IM_PASSWORD\nwebhook secret taken from $IM_WEBHOOK_SECRET\n"
    )


def test_get_shows_every_setting_and_only_whether_secrets_are_set(three: Im) -> None:
    view = json.loads(three.ok("integration", "get", "prod-pd", "--format", "json"))
    assert view == {
        "id": 3,
        "name": "prod-pd",
        "type": "pagerduty",
        "url": "https://api.pagerduty.com",
        "enabled": True,
        "direction": "outbound",
        "conflict_strategy": "last-write-wins",
        "conflict_window": "5s",
        "rate_limit": "off",
        "rate_limit_backoff": True,
        "scope": {"service": "PSVC001"},
        "settings": {"from_email": "im@acme.com"},
        "secrets": {"api_token": "set", "webhook_secret": "set"},
        "webhook_secret_previous_until": None,
        "ca_bundle": None,
        "allow_insecure_http": False,
        "created_at": "2026-11-27T09:00:00.000Z",
        "updated_at": "2026-11-27T09:00:00.000Z",
        "created_by": "alice",
    }
    # An integration is found by id as well as by name.
    assert json.loads(three.ok("integration", "get", "3", "--format", "json"))["name"] == "prod-pd"


def test_list_in_every_format(three: Im) -> None:
    table = three.ok("integration", "list")
    assert table.splitlines() == [
        "id  name       type        enabled  direction  conflict_strategy  url",
        "1   prod-snow  servicenow  yes      outbound   last-write-wins    https://acme.service-now.com",
        "2   prod-jira  jira        yes      outbound   last-write-wins    https://acme.atlassian.net",
        "3   prod-pd    pagerduty   yes      outbound   last-write-wins    https://api.pagerduty.com",
    ]
    as_json = json.loads(three.ok("integration", "list", "--format", "json"))
    assert [i["name"] for i in as_json] == ["prod-snow", "prod-jira", "prod-pd"]
    lines = three.ok("integration", "list", "--format", "jsonl").splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["servicenow", "jira", "pagerduty"]
    csv_out = three.ok("integration", "list", "--format", "csv").splitlines()
    assert csv_out[0] == "id,name,type,enabled,direction,conflict_strategy,url"
    assert csv_out[1].startswith("1,prod-snow,servicenow,yes,outbound")


def test_no_secret_value_is_in_outputs_or_the_database_file(three: Im, tmp_path: Path) -> None:
    outputs = [
        three("integration", "get", name, "--format", fmt)
        for name in ("prod-snow", "prod-jira", "prod-pd")
        for fmt in ("table", "json", "csv")
    ]
    outputs.append(three("integration", "list", "--format", "json"))
    outputs.append(three("integration", "configure", "prod-snow", "--password", "fresh-pass-0c1d"))
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("im.db*"))
    for value in [*SECRETS.values(), "fresh-pass-0c1d"]:
        assert value.encode() not in raw
        for result in outputs:
            assert value not in result.stdout and value not in result.stderr


def test_secret_from_file_and_flag_with_warning(initialised: Im, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("file-token-123\n")
    result = initialised("integration", "create", "j", *JIRA, "--api-token-file", str(token))
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    flagged = initialised("integration", "create", "p", *PD, "--api-token", "flag-token-456")
    assert flagged.exit_code == 0
    assert flagged.stderr == (
        "warning: --api-token on the command line shows in `ps` and shell history; "
        "prefer $IM_API_TOKEN or --api-token-file\n"
    )


def test_missing_required_secret_without_a_terminal_is_a_usage_error(initialised: Im) -> None:
    result = initialised("integration", "create", "prod-snow", *SNOW)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --password is required for servicenow integrations "
        "(set $IM_PASSWORD, pass --password-file PATH, or run in a terminal)\n"
    )
    assert initialised.ok("integration", "list", "--format", "json").strip() == "[]"


def test_dash_reads_a_secret_from_standard_input(initialised: Im) -> None:
    result = initialised(
        "integration", "create", "s", *SNOW, "--password", "-", input="stdin-pass\n"
    )
    assert result.exit_code == 0, result.stderr
    assert "stdin-pass" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--url", "http://acme.service-now.com"),
            "uses plain http to a host that is not loopback",
        ),
        (("--url", "ftp://x"), "--url must be an http(s) URL"),
        (("--url", "https://user:pw@acme.service-now.com"), "must not carry credentials"),
        (("--rate-limit", "fast"), "--rate-limit takes N/s"),
        (("--conflict-window", "soon"), "--conflict-window takes a duration"),
        (("--project", "OPS"), "--project does not apply to servicenow integrations"),
        (("--api-token", "x"), "--api-token does not apply to servicenow integrations"),
        (("--ca-bundle", "/nonexistent.pem"), "--ca-bundle /nonexistent.pem: no such file"),
    ],
)
def test_bad_options_fail_with_one_line_and_write_nothing(
    initialised: Im, args: tuple[str, ...], message: str
) -> None:
    base = ["--type", "servicenow", "--url", "https://acme.service-now.com", "--username", "u"]
    result = initialised("integration", "create", "bad", *base, *args, env=SECRETS)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 or result.stderr.startswith("password taken")
    assert initialised.ok("integration", "list", "--format", "json").strip() == "[]"


def test_plain_http_is_fine_on_loopback_and_can_be_forced_elsewhere(initialised: Im) -> None:
    ok = initialised(
        "integration",
        "create",
        "local",
        "--type",
        "servicenow",
        "--url",
        "http://127.0.0.1:8081",
        "--username",
        "u",
        env=SECRETS,
    )
    assert ok.exit_code == 0, ok.stderr
    forced = initialised(
        "integration",
        "create",
        "lab",
        "--type",
        "servicenow",
        "--url",
        "http://snow.lab",
        "--username",
        "u",
        "--allow-insecure-http",
        env=SECRETS,
    )
    assert forced.exit_code == 0
    assert "warning: http://snow.lab is plain http" in forced.stderr


@pytest.mark.parametrize("name", ["history", "schedule", "Prod", "1abc", "a" * 64, "has space"])
def test_reserved_and_malformed_names_are_refused(initialised: Im, name: str) -> None:
    result = initialised("integration", "create", name, *SNOW, env=SECRETS)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")


def test_a_name_can_be_used_once(three: Im) -> None:
    result = three("integration", "create", "prod-snow", *SNOW, env=SECRETS)
    assert result.exit_code == 2
    assert "an integration named 'prod-snow' exists already" in result.stderr


def test_unknown_integration_lists_what_exists(three: Im) -> None:
    result = three("integration", "get", "prod-snw")
    assert result.exit_code == 1
    assert result.stderr == "error: no integration 'prod-snw' (did you mean prod-snow, prod-pd?)\n"
    result = three("integration", "get", "staging")
    assert result.stderr == (
        "error: no integration 'staging' (integrations: prod-jira, prod-pd, prod-snow)\n"
    )


def test_configure_changes_only_what_is_given(three: Im) -> None:
    result = three(
        "integration",
        "configure",
        "prod-snow",
        "--direction",
        "bidirectional",
        "--conflict-strategy",
        "manual-review",
        "--conflict-window",
        "10s",
        "--rate-limit",
        "20/s",
        "--no-rate-limit-backoff",
        "--disable",
        "--assignment-group",
        "Network",
        env=SECRETS,  # env vars never change a secret on configure
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "direction outbound -> bidirectional",
        "conflict_strategy last-write-wins -> manual-review",
        "conflict_window 5s -> 10s",
        "rate_limit off -> 20/s",
        "rate_limit_backoff on -> off",
        "enabled on -> off",
        "assignment_group (none) -> Network",
    ]
    assert "field ownership is still the defaults" in result.stderr
    view = json.loads(three.ok("integration", "get", "prod-snow", "--format", "json"))
    assert (view["direction"], view["enabled"], view["rate_limit"]) == (
        "bidirectional",
        False,
        "20/s",
    )
    assert view["scope"] == {"assignment_group": "Network"}
    assert three.ok("integration", "configure", "prod-snow") == "prod-snow unchanged\n"


def test_switching_to_inbound_cancels_waiting_outbound_changes(three: Im) -> None:
    three.ok("incident", "create", "--title", "Disk full")
    result = three("integration", "configure", "prod-jira", "--direction", "inbound")
    assert result.stdout.splitlines()[-1] == "1 waiting outbound change(s) cancelled"
    shown = json.loads(three.ok("incident", "show", "INC-1", "--format", "json"))
    assert sorted(q["integration"] for q in shown["queued"]) == ["prod-pd", "prod-snow"]
    assert three.db().execute(
        "SELECT state, last_error FROM outbox WHERE integration_id = 2"
    ).fetchall() == [("cancelled", "cancelled: direction set to inbound by alice")]


def test_delete_needs_confirmation_and_drops_queued_changes(three: Im) -> None:
    three.ok("incident", "create", "--title", "Disk full")
    refused = three("integration", "delete", "prod-pd")
    assert refused.exit_code == 2
    assert "pass --yes" in refused.stderr
    done = three("integration", "delete", "prod-pd", "--yes")
    assert done.stdout == "deleted integration prod-pd (1 unsent change(s) dropped)\n"
    assert (
        three.db()
        .execute("SELECT count(*) FROM integration_secrets WHERE integration_id = 3")
        .fetchone()[0]
        == 0
    )
    assert three("integration", "get", "prod-pd").exit_code == 1


@pytest.mark.parametrize("value", ["zq9\\r\\nX-Evil: 1", "zq9\\u20ac", "zq9\\x07"])
def test_secrets_http_cannot_carry_are_refused_at_input(
    initialised: Im, tmp_path: Path, value: str
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(value.encode().decode("unicode_escape"), encoding="utf-8")
    result = initialised(
        "integration", "create", "pd", "--type", "pagerduty", "--from-email", "im@example.com",
        "--service", "PSVC001", "--api-token-file", str(secret_file),
    )  # fmt: skip
    assert result.exit_code == 2
    assert "printable ASCII" in result.stderr and "zq9" not in result.stderr
