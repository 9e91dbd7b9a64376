"""`im integration test NAME` and `im integration webhook-setup NAME` against the simulators
served on real loopback sockets, as a user would run them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from im.sim.server import Served, free_port, serve_in_thread
from tests.conftest import Im

SIM_SECRET = {
    "servicenow": "whsec_c2ltdWxhdG9yLXdlYmhvb2stc2VjcmV0",
    "jira": "jira-sim-webhook-secret",
    "pagerduty": "pd-sim-webhook-secret",
}


def _simulator(kind: str):  # type: ignore[no-untyped-def]
    if kind == "servicenow":
        from im.sim.servicenow import ServiceNowSimulator

        return ServiceNowSimulator()
    if kind == "jira":
        from im.sim.jira import JiraSimulator

        return JiraSimulator()
    from im.sim.pagerduty import PagerDutySimulator

    return PagerDutySimulator()


def _create_args(kind: str, url: str, secret: str) -> tuple[list[str], dict[str, str]]:
    env = {"IM_WEBHOOK_SECRET": SIM_SECRET[kind]}
    if kind == "servicenow":
        return ["--type", kind, "--url", url, "--username", "im-integration"], {
            **env,
            "IM_PASSWORD": secret,
        }
    if kind == "jira":
        args = ["--type", kind, "--url", url, "--email", "im-integration@example.com"]
        return [*args, "--project", "OPS"], {**env, "IM_API_TOKEN": secret}
    args = ["--type", kind, "--url", url, "--from-email", "im-integration@example.com"]
    return [*args, "--service", "PSVC001", "--escalation-policy", "PEP0001"], {
        **env,
        "IM_API_TOKEN": secret,
    }


GOOD = {
    "servicenow": "im-integration",
    "jira": "im-integration-token",
    "pagerduty": "im-integration-token",
}


@pytest.fixture(params=["servicenow", "jira", "pagerduty"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, Served]]:
    with serve_in_thread(_simulator(request.param)) as running:
        yield request.param, running


def test_integration_test_passes_against_each_simulator(
    initialised: Im, served: tuple[str, Served]
) -> None:
    kind, running = served
    args, env = _create_args(kind, running.url, GOOD[kind])
    initialised.ok("integration", "create", "sim", *args, env=env)
    out = initialised.ok("integration", "test", "sim")
    assert out.splitlines()[-1] == f"sim ({kind}, {running.url}): passed"
    assert not [line for line in out.splitlines() if line.startswith(("FAIL", "warn"))]
    report = json.loads(initialised.ok("integration", "test", "sim", "--format", "json"))
    assert report["ok"] is True and report["checks"]


def test_a_wrong_password_fails_with_a_credentials_error(
    initialised: Im, served: tuple[str, Served]
) -> None:
    kind, running = served
    args, env = _create_args(kind, running.url, "wrong-secret")
    initialised.ok("integration", "create", "sim", *args, env=env)
    result = initialised("integration", "test", "sim")
    assert result.exit_code == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failed and "401" in failed[0]
    assert "wrong-secret" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].endswith(": failed")


@pytest.mark.parametrize("kind", ["servicenow", "jira", "pagerduty"])
def test_a_closed_port_fails_saying_nothing_answers(initialised: Im, kind: str) -> None:
    args, env = _create_args(kind, f"http://127.0.0.1:{free_port()}", GOOD[kind])
    initialised.ok("integration", "create", "sim", *args, env=env)
    result = initialised("integration", "test", "sim")
    assert result.exit_code == 1
    assert result.stdout.startswith("FAIL  reachability: ")
    assert "cannot connect" in result.stdout


def test_a_wrong_url_path_fails_saying_the_api_is_not_there(
    initialised: Im, served: tuple[str, Served]
) -> None:
    kind, running = served
    args, env = _create_args(kind, running.url + "/not-the-api", GOOD[kind])
    initialised.ok("integration", "create", "sim", *args, env=env)
    result = initialised("integration", "test", "sim")
    assert result.exit_code == 1
    assert "404" in result.stdout and "check --url" in result.stdout


def test_the_agent_account_passes_with_a_warning_that_it_looks_personal(
    initialised: Im, served: tuple[str, Served]
) -> None:
    kind, running = served
    args, env = _create_args(
        kind,
        running.url,
        {"servicenow": "agent", "jira": "agent-token", "pagerduty": "agent-token"}[kind],
    )
    if kind == "servicenow":
        args[args.index("im-integration")] = "agent"
    elif kind == "jira":
        args[args.index("im-integration@example.com")] = "agent@example.com"
    initialised.ok("integration", "create", "sim", *args, env=env)
    out = initialised.ok("integration", "test", "sim")
    assert [line for line in out.splitlines() if line.startswith("warn")]


def test_webhook_setup_prints_the_url_and_hides_the_secret_unless_asked(
    initialised: Im, served: tuple[str, Served]
) -> None:
    kind, running = served
    args, env = _create_args(kind, running.url, GOOD[kind])
    initialised.ok("integration", "create", "prod", *args, env=env)
    shown = initialised(
        "integration", "webhook-setup", "prod", "--public-url", "https://im.example.com/"
    )
    assert shown.exit_code == 0
    assert "https://im.example.com/webhooks/prod" in shown.stdout
    assert SIM_SECRET[kind] not in shown.stdout
    revealed = initialised.ok(
        "integration",
        "webhook-setup",
        "prod",
        "--public-url",
        "https://im.example.com",
        "--show-secret",
    )
    assert SIM_SECRET[kind] in revealed


def test_webhook_setup_without_a_public_url_warns_and_uses_the_daemon_default(three: Im) -> None:
    result = three("integration", "webhook-setup", "prod-pd")
    assert result.exit_code == 0
    assert "http://127.0.0.1:8080/webhooks/prod-pd" in result.stdout
    assert "no public URL known" in result.stderr


@pytest.mark.parametrize("url", ["ftp://x", "im.example.com", "https://x.example?a=1"])
def test_webhook_setup_refuses_a_public_url_that_is_not_one(three: Im, url: str) -> None:
    result = three("integration", "webhook-setup", "prod-pd", "--public-url", url)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --public-url must be")


def test_integration_test_of_an_unknown_name(three: Im, tmp_path: Path) -> None:
    result = three("integration", "test", "prod-snw")
    assert result.exit_code == 1
    assert "did you mean prod-snow" in result.stderr


def test_a_private_ca_is_trusted_only_through_ca_bundle(initialised: Im, tmp_path: Path) -> None:
    with serve_in_thread(_simulator("pagerduty"), tls_dir=tmp_path / "tls") as running:
        assert running.url.startswith("https://") and running.cafile
        args, env = _create_args("pagerduty", running.url, GOOD["pagerduty"])
        initialised.ok("integration", "create", "pd", *args, env=env)
        untrusted = initialised("integration", "test", "pd")
        assert untrusted.exit_code == 1
        assert "TLS certificate is not trusted" in untrusted.stdout
        assert "--ca-bundle" in untrusted.stdout
        initialised.ok("integration", "configure", "pd", "--ca-bundle", str(running.cafile))
        assert initialised.ok("integration", "test", "pd").splitlines()[-1].endswith(": passed")
