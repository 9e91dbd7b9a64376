"""Hostile and odd input: clear one-line errors, nothing deleted, nothing leaked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import PD, SECRETS, Im


def test_a_failed_init_never_deletes_a_file_it_did_not_create(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from im.cli import cli

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = CliRunner().invoke(cli, ["--db", str(fifo), "init"])
    assert result.exit_code == 1
    assert result.stderr == f"error: {fifo} is not a regular file (pass --db with a file path)\n"
    assert fifo.exists()


def test_init_adopts_an_empty_file_privately(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from im.cli import cli

    empty = tmp_path / "made-by-mktemp.db"
    empty.touch(mode=0o644)
    assert CliRunner().invoke(cli, ["--db", str(empty), "init"]).exit_code == 0
    assert oct(empty.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("title", ["a\nb", "bell\a", "\x1b[31mred", "nul\x00", "\ud800 surrogate"])
def test_titles_with_control_characters_or_bad_unicode_are_refused(
    initialised: Im, title: str
) -> None:
    result = initialised("incident", "create", "--title", title)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1


def test_multi_line_text_keeps_its_lines(initialised: Im) -> None:
    initialised.ok("incident", "create", "--title", "t", "--description", "line 1\nline 2\ttab")
    assert (
        json.loads(initialised.ok("incident", "show", "INC-1", "--format", "json"))["description"]
        == "line 1\nline 2\ttab"
    )


def test_markup_in_data_is_shown_as_text(initialised: Im, monkeypatch: pytest.MonkeyPatch) -> None:
    from im.cli import output

    monkeypatch.setattr(output, "_is_terminal", lambda: True)
    initialised.ok("incident", "create", "--title", "[/] closing tag [bold]x")
    listed = initialised("incident", "list")
    assert listed.exit_code == 0, listed.stderr
    assert "[/] closing tag" in listed.stdout and "[bold]x" in listed.stdout  # literal, folded


@pytest.mark.parametrize(
    "url",
    [
        "svc:TOPSECRET@acme.service-now.com",
        "ftp://svc:TOPSECRET@acme.example",
        "https://acme.example/?api_key=TOPSECRET",
    ],
)
def test_url_errors_never_echo_the_url(three: Im, url: str) -> None:
    result = three("integration", "configure", "prod-snow", "--url", url)
    assert result.exit_code == 2
    assert "TOPSECRET" not in result.stderr + result.stdout


def test_a_trailing_newline_does_not_make_a_name(initialised: Im) -> None:
    result = initialised("integration", "create", "evil\n", *PD, env=SECRETS)
    assert result.exit_code == 2
    assert initialised.ok("integration", "list", "--format", "json").strip() == "[]"


@pytest.mark.parametrize("ref", ["²", "INC-99999999999999999999999", "INC-0"])
def test_odd_incident_ids_are_not_found(initialised: Im, ref: str) -> None:
    result = initialised("incident", "show", ref)
    assert result.exit_code == 1
    assert "incident ids look like INC-12" in result.stderr


def test_a_very_long_db_path_is_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from im.cli import cli

    result = CliRunner().invoke(cli, ["--db", str(tmp_path / ("x" * 5000)), "incident", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_insecure_http_can_be_turned_off_again(initialised: Im) -> None:
    initialised.ok(
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
    result = initialised("integration", "configure", "lab", "--no-allow-insecure-http")
    assert result.exit_code == 2
    assert "plain http to a host that is not loopback" in result.stderr


def test_pagerduty_description_is_sent_on_create_only(three: Im) -> None:
    three.ok("incident", "create", "--title", "t", "--description", "first")
    db = three.db()
    db.execute("UPDATE outbox SET state = 'done'")
    db.execute(
        "INSERT INTO links (incident_id, integration_id, external_id, created_at) VALUES (1, 3, 'P1', 'now')"
    )
    db.conn.commit()
    out = three.ok("incident", "update", "INC-1", "--description", "second")
    assert "prod-pd" not in out  # PagerDuty cannot update a description


def test_a_waiting_create_drops_fields_cleared_before_it_was_sent(three: Im) -> None:
    three.ok(
        "incident",
        "create",
        "--title",
        "t",
        "--assigned-to",
        "bob@example.com",
        "--escalation-policy",
        "PEP0001",
    )
    three.ok("incident", "update", "INC-1", "--assigned-to", "", "--escalation-policy", "")
    fields = json.loads(
        three.db().execute("SELECT fields FROM outbox WHERE integration_id = 3").fetchone()[0]
    )
    assert "assigned_to" not in fields and "escalation_policy" not in fields
    assert fields["title"] == "t"


def test_configure_never_echoes_a_secret_given_by_mistake_as_a_setting(three: Im) -> None:
    result = three(
        "integration", "configure", "prod-snow", "--url", "https://u:hunter2@acme.service-now.com"
    )
    assert result.exit_code == 2 and "hunter2" not in result.stderr
