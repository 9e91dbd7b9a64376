"""`im token create|list|revoke`: a token is shown once, stored only as a hash, listed by its
first characters, and refused by the API once revoked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Im

TOKEN = re.compile(r"imt_[A-Za-z0-9_-]{43}")


def create(im: Im, *args: str) -> str:
    token = im.ok("token", "create", *args)
    assert token.endswith("\n") and token.count("\n") == 1
    assert TOKEN.fullmatch(token.strip()), token
    return token.strip()


def listed(im: Im) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(im.ok("token", "list", "--format", "json"))
    return rows


def test_create_prints_only_the_token_and_says_to_store_it(initialised: Im) -> None:
    result = initialised("token", "create", "ci-deploy")
    assert result.exit_code == 0
    assert TOKEN.fullmatch(result.stdout.strip())
    assert result.stderr.splitlines() == [
        "created token ci-deploy (id 1) acting as alice; store it now: it is not shown again",
        'send it as the header "Authorization: Bearer <token>" to /api/v1 of `im daemon`',
    ]


def test_each_token_is_new(initialised: Im) -> None:
    assert create(initialised, "one") != create(initialised, "two")


def test_list_shows_the_prefix_never_the_token(initialised: Im) -> None:
    first = create(initialised, "ci-deploy")
    second = create(initialised, "grafana", "--for", "bob")
    assert listed(initialised) == [
        {
            "id": 1,
            "name": "ci-deploy",
            "principal": "alice",
            "prefix": first[:8],
            "created_at": "2026-11-27T09:00:00.000Z",
            "last_used_at": None,
            "revoked_at": None,
        },
        {
            "id": 2,
            "name": "grafana",
            "principal": "bob",
            "prefix": second[:8],
            "created_at": "2026-11-27T09:00:00.000Z",
            "last_used_at": None,
            "revoked_at": None,
        },
    ]
    table = initialised.ok("token", "list")
    assert table.splitlines() == [
        "id  name       principal  prefix    created_at                last_used_at  revoked_at",
        f"1   ci-deploy  alice      {first[:8]}  2026-11-27T09:00:00.000Z",
        f"2   grafana    bob        {second[:8]}  2026-11-27T09:00:00.000Z",
    ]
    for fmt in ("table", "json", "jsonl", "csv"):
        out = initialised.ok("token", "list", "--format", fmt)
        assert first not in out and second not in out


def test_the_database_never_holds_a_token_in_clear(initialised: Im) -> None:
    tokens = [create(initialised, f"t{n}") for n in range(3)]
    initialised.ok("token", "revoke", "t1")
    files = [p for p in initialised.db_path.parent.iterdir() if p.name.startswith("im.db")]
    assert files
    stored = b"".join(p.read_bytes() for p in files)
    for token in tokens:
        assert token.encode() not in stored
        assert token[4:].encode() not in stored  # not even without its imt_ prefix


def test_revoke_by_name_or_id(initialised: Im, clock: object) -> None:
    create(initialised, "ci-deploy")
    create(initialised, "grafana")
    assert initialised.ok("token", "revoke", "ci-deploy") == "revoked token ci-deploy (id 1)\n"
    assert initialised.ok("token", "revoke", "2") == "revoked token grafana (id 2)\n"
    assert [row["revoked_at"] for row in listed(initialised)] == [
        "2026-11-27T09:00:00.000Z",
        "2026-11-27T09:00:00.000Z",
    ]
    again = initialised("token", "revoke", "ci-deploy")
    assert again.exit_code == 1
    assert again.stderr == "error: token ci-deploy (id 1) was revoked already\n"


def test_a_revoked_name_can_be_used_again(initialised: Im) -> None:
    create(initialised, "ci-deploy")
    taken = initialised("token", "create", "ci-deploy")
    assert taken.exit_code == 1 and taken.stdout == ""
    assert "a token named 'ci-deploy' exists already" in taken.stderr
    assert "im token revoke ci-deploy" in taken.stderr
    initialised.ok("token", "revoke", "ci-deploy")
    create(initialised, "ci-deploy")
    assert [(r["id"], r["name"], r["revoked_at"] is None) for r in listed(initialised)] == [
        (1, "ci-deploy", False),
        (2, "ci-deploy", True),
    ]
    # the name means the live token
    assert initialised.ok("token", "revoke", "ci-deploy") == "revoked token ci-deploy (id 2)\n"


def test_revoking_an_unknown_token_lists_the_live_ones(initialised: Im) -> None:
    create(initialised, "grafana")
    result = initialised("token", "revoke", "grafan")
    assert result.exit_code == 1
    assert result.stderr == "error: no token 'grafan' (tokens: grafana; see `im token list`)\n"
    result = initialised("token", "revoke", "7")
    assert result.exit_code == 1 and "no token '7'" in result.stderr


@pytest.mark.parametrize("name", ["", "1abc", "has space", "x" * 65, "tab\there", "émoji"])
def test_bad_names_are_refused(initialised: Im, name: str) -> None:
    result = initialised("token", "create", name)
    assert result.exit_code == 2 and result.stdout == ""
    assert "is not valid" in result.stderr
    assert listed(initialised) == []


@pytest.mark.parametrize("principal", ["", "   ", "bell\x07", "x" * 201])
def test_bad_principals_are_refused(initialised: Im, principal: str) -> None:
    result = initialised("token", "create", "ci", "--for", principal)
    assert result.exit_code == 2 and result.stdout == ""
    assert "principal" in result.stderr


def test_an_empty_list(initialised: Im) -> None:
    assert listed(initialised) == []
    assert initialised.ok("token", "list", "--format", "csv") == (
        "id,name,principal,prefix,created_at,last_used_at,revoked_at\n"
    )


def test_token_commands_need_an_initialised_database(im: Im) -> None:
    result = im("token", "list")
    assert result.exit_code == 1 and "run `im init` first" in result.stderr


def test_token_help_loads_no_web_framework(tmp_path: Path) -> None:
    code = (
        "import sys; from im.cli import cli; "
        "cli.main(['token', 'create', '--help'], standalone_mode=False); "
        "print(sorted(m for m in ('fastapi', 'pydantic', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert "--for PRINCIPAL" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"
