"""SPEC §9's matrix, every row and column, through the CLI and through the API.

The world: the three simulators linked both ways; alice administers (she ran `im init`), bob
manages integrations matching prod-j*, carol is an incident_commander who commands INC-1,
vic is a viewer and nobody holds no role. INC-2 is commanded by someone else. conflict A is
on INC-1 in prod-jira (in bob's scope, carol's incident), conflict B on INC-2 in prod-snow
(neither). Each command is run as each principal: an allowed one gets past the policy (it
may still fail for its own reasons, e.g. a conflict resolved already), a denied one exits 1
(403 by the API) with the policy's reason, and lands in the audit log.

The expected answers come from the table below, written from SPEC §9 independently of the
Rego policy that decides them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from im.api.app import create_api
from im.sim.transport import ASGIBridge
from tests.test_reconcile import jira_put, snow_patch
from tests.two_way import Two, new_incident

PRINCIPALS = {
    "admin": "alice",
    "manager": "bob",
    "commander": "carol",
    "viewer": "vic",
    "none": "nobody",
}
IN, OUT = "prod-jira", "prod-snow"  # bob's scope is prod-j*

# row -> role -> which targets it may act on: "all", "in" (bob's scope), "own" (carol's
# incident or conflict), or nothing
MATRIX: dict[str, dict[str, str]] = {
    "read": {"admin": "all", "manager": "in", "commander": "all", "viewer": "all"},
    "resolve": {"admin": "all", "manager": "in", "commander": "own"},
    "manage": {"admin": "all", "manager": "in"},
    "create-delete": {"admin": "all", "manager": "in"},
    "incident-read": {"admin": "all", "manager": "all", "commander": "all", "viewer": "all"},
    "incident-create": {"admin": "all", "commander": "all"},
    "incident-update": {"admin": "all", "commander": "own"},
    "admin": {"admin": "all"},
    "own-token": {r: "all" for r in PRINCIPALS},
    "others-token": {"admin": "all"},
}


def expected(row: str, role: str, target: str) -> bool:
    """Whether ``role`` may act in ``row`` on a target that is ``target``: "in" (in bob's
    scope and carol's), "out" (neither), or "any" (no particular one)."""
    may = MATRIX[row].get(role)
    if may is None:
        return False
    if may == "all" or target == "any":
        return True
    return target == "in"


@dataclass
class World:
    two: Two
    conflict_in: str
    conflict_out: str
    api: httpx.Client
    tokens: dict[str, str]

    def cli(self, role: str, *args: str) -> Any:
        return self.two.im(*args, env={"IM_USER": PRINCIPALS[role]})

    def call(self, role: str, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        return self.api.request(method, path, json=body, headers=headers)


def _conflict(two: Two, n: int, name: str) -> str:
    """A real simultaneous edit of INC-n's title: here, and by an agent in ``name``."""
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", f"platform title {n}")
    two.clock.advance(2)
    if name == "prod-jira":
        jira_put(two, n, {"summary": f"agent title {n}"})
    else:
        snow_patch(two, n, {"short_description": f"agent title {n}"})
    two.sync()
    found = json.loads(two.im.ok("conflict", "list", "--format", "json"))
    (made,) = [c for c in found if c["incident"] == f"INC-{n}" and c["integration"] == name]
    return str(made["id"])


@pytest.fixture
def world(two: Two) -> Iterator[World]:
    im = two.im
    for name in ("prod-snow", "prod-jira"):
        im.ok("integration", "configure", name, "--conflict-strategy", "manual-review")
    im.ok("access", "grant", "bob", "--role", "integration.manager", "--scope", "prod-j*")
    im.ok("access", "grant", "carol", "--role", "incident_commander")
    im.ok("access", "grant", "vic", "--role", "viewer")
    assert new_incident(two, "--commander", "carol") == 1
    assert new_incident(two, "--commander", "erin") == 2
    two.sync()
    conflict_in = _conflict(two, 1, "prod-jira")
    conflict_out = _conflict(two, 2, "prod-snow")
    tokens = {
        role: im.ok("token", "create", f"{who}-token", "--for", who).strip()
        for role, who in PRINCIPALS.items()
    }
    bridge = ASGIBridge(create_api(im.db_path, two.clock, im.transport_for))
    client = httpx.Client(transport=bridge, base_url="http://im")
    yield World(two, conflict_in, conflict_out, client, tokens)
    client.close()
    bridge.shutdown()


# (row, target, argv); {in}/{out} are integrations, {cin}/{cout} conflicts
CLI_CASES: list[tuple[str, str, list[str]]] = [
    ("read", "any", ["integration", "list"]),
    *[
        (row, t, [*argv, "{" + t + "}"])
        for t in ("in", "out")
        for row, argv in [
            ("read", ["integration", "get"]),
            ("read", ["integration", "sync-status"]),
            ("read", ["integration", "events"]),
            ("read", ["integration", "dlq"]),
            ("read", ["integration", "reconcile", "history"]),
            ("read", ["integration", "reconcile", "schedule"]),
            ("read", ["integration", "field-ownership", "list"]),
            ("read", ["integration", "field-mapping", "list"]),
            ("manage", ["integration", "test"]),
            ("manage", ["integration", "webhook-setup"]),
            ("manage", ["integration", "reconcile", "run", "--dry-run"]),
            ("manage", ["integration", "rotate-secret", "--grace", "1h"]),
        ]
    ],
    ("read", "any", ["conflict", "list"]),
    ("read", "in", ["conflict", "show", "{cin}"]),
    ("read", "out", ["conflict", "show", "{cout}"]),
    ("resolve", "out", ["conflict", "resolve", "{cout}", "--ignore"]),
    ("resolve", "in", ["conflict", "resolve", "{cin}", "--ignore"]),
    *[
        ("manage", t, [a.replace("NAME", "{" + t + "}") for a in argv])
        for t in ("in", "out")
        for argv in [
            ["integration", "configure", "NAME", "--conflict-window", "60s"],
            ["integration", "field-ownership", "set", "NAME", "description", "--owner", "platform"],
            ["integration", "field-ownership", "unset", "NAME", "description"],
            ["integration", "field-mapping", "set", "NAME", "description", "description"],
            ["integration", "field-mapping", "unset", "NAME", "description"],
            ["integration", "reconcile", "schedule", "NAME", "--interval", "1h"],
            ["integration", "dlq-retry", "NAME", "--all"],
            ["integration", "dlq-discard", "NAME", "--all"],
        ]
    ],
    ("create-delete", "in", ["integration", "create", "prod-jx", "--type", "pagerduty",
                             "--from-email", "a@b.c", "--service", "P1"]),
    ("create-delete", "out", ["integration", "create", "dev-x", "--type", "pagerduty",
                              "--from-email", "a@b.c", "--service", "P1"]),
    ("create-delete", "in", ["integration", "delete", "prod-jx", "--yes"]),
    ("create-delete", "out", ["integration", "delete", "dev-x", "--yes"]),
    ("incident-read", "any", ["incident", "list"]),
    ("incident-read", "any", ["incident", "show", "INC-2"]),
    ("incident-read", "any", ["incident", "history", "INC-2"]),
    ("incident-create", "any", ["incident", "create", "--title", "new one"]),
    ("incident-update", "in", ["incident", "update", "INC-1", "--severity", "sev2"]),
    ("incident-update", "out", ["incident", "update", "INC-2", "--severity", "sev2"]),
    ("incident-update", "in", ["incident", "comment", "INC-1", "looking"]),
    ("incident-update", "out", ["incident", "comment", "INC-2", "looking"]),
    ("admin", "any", ["access", "grant", "zed", "--role", "viewer"]),
    ("admin", "any", ["access", "revoke", "zed", "--role", "viewer"]),
    ("admin", "any", ["audit"]),
    ("admin", "any", ["access", "policy", "use", "--builtin"]),
    ("admin", "any", ["key", "rotate"]),
    ("own-token", "any", ["token", "list"]),
    ("others-token", "any", ["token", "create", "for-alice", "--for", "alice"]),
    ("others-token", "any", ["token", "revoke", "alice-token"]),
]  # fmt: skip
ROLES = list(PRINCIPALS)


def _argv(world: World, argv: list[str]) -> list[str]:
    names = {"in": IN, "out": OUT, "cin": world.conflict_in, "cout": world.conflict_out}
    return [a.format(**names) if "{" in a else a for a in argv]


def test_every_cell_of_the_matrix_through_the_cli(world: World) -> None:
    env = {"IM_PASSWORD": "x", "IM_API_TOKEN": "x", "IM_WEBHOOK_SECRET": "x"}
    for row, target, argv in CLI_CASES:
        args = _argv(world, argv)
        # a delete is tried by those who may not first, so the integration is still there
        for role in ROLES[::-1] if "delete" in argv else ROLES:
            who = PRINCIPALS[role]
            done = world.two.im(*args, env={"IM_USER": who, **env})
            denied = "access denied" in done.stderr
            wanted = expected(row, role, target)
            where = f"{role} ({who}): im {' '.join(args)} -> {done.exit_code} {done.stderr}"
            assert denied == (not wanted), where
            if denied:
                assert done.exit_code == 1, where
                assert who in done.stderr, where  # the reason names the caller
    # one-token rows: everyone may make and revoke their own token
    for role, who in PRINCIPALS.items():
        world.cli(role, "token", "create", f"{who}-own")
        assert world.cli(role, "token", "revoke", f"{who}-own").exit_code == 0


def test_a_listing_shows_a_manager_only_its_scope(world: World) -> None:
    listed = json.loads(world.cli("manager", "integration", "list", "--format", "json").stdout)
    assert [i["name"] for i in listed] == ["prod-jira"]
    conflicts = json.loads(world.cli("manager", "conflict", "list", "--format", "json").stdout)
    assert {c["integration"] for c in conflicts} == {"prod-jira"}
    mine = json.loads(world.cli("viewer", "token", "list", "--format", "json").stdout)
    assert {t["principal"] for t in mine} == {"vic"}
    everyone = json.loads(world.cli("admin", "token", "list", "--format", "json").stdout)
    assert {t["principal"] for t in everyone} == set(PRINCIPALS.values())
    bindings = json.loads(world.cli("viewer", "access", "list", "--format", "json").stdout)
    assert [(b["principal"], b["role"]) for b in bindings] == [("vic", "viewer")]


# (row, target, method, path, body)
API_CASES: list[tuple[str, str, str, str, Any]] = [
    ("read", "any", "GET", "/integrations", None),
    *[
        (row, t, method, path.format(ref=ref), body)
        for t, ref in (("in", IN), ("out", OUT))
        for row, method, path, body in [
            ("read", "GET", "/integrations/{ref}", None),
            ("read", "GET", "/integrations/{ref}/sync-status", None),
            ("read", "GET", "/integrations/{ref}/dlq", None),
            ("read", "GET", "/integrations/{ref}/field-ownership", None),
            ("read", "GET", "/integrations/{ref}/reconcile/history", None),
            ("read", "GET", "/integrations/{ref}/reconcile/schedule", None),
            ("manage", "PATCH", "/integrations/{ref}", {"conflict_window": "60s"}),
            ("manage", "PUT", "/integrations/{ref}/field-ownership/description", {"owner": "platform"}),
            ("manage", "DELETE", "/integrations/{ref}/field-ownership/description", None),
            ("manage", "POST", "/integrations/{ref}/test", None),
            ("manage", "POST", "/integrations/{ref}/dlq/entry-99/retry", None),
            ("manage", "POST", "/integrations/{ref}/dlq/entry-99/discard", None),
            ("manage", "POST", "/integrations/{ref}/reconcile", {"auto_heal": False}),
            ("manage", "POST", "/integrations/{ref}/reconcile/schedule", {"interval": "1h"}),
        ]
    ],
    ("read", "any", "GET", "/conflicts", None),
    ("read", "in", "GET", "/conflicts/{cin}", None),
    ("read", "out", "GET", "/conflicts/{cout}", None),
    ("resolve", "out", "POST", "/conflicts/{cout}/resolve", {"use": "ignore"}),
    ("resolve", "in", "POST", "/conflicts/{cin}/resolve", {"use": "ignore"}),
    ("incident-read", "any", "GET", "/incidents", None),
    ("incident-read", "any", "GET", "/incidents/INC-2", None),
    ("incident-read", "any", "GET", "/incidents/INC-2/history", None),
    ("incident-create", "any", "POST", "/incidents", {"title": "from the api"}),
    ("incident-update", "in", "PATCH", "/incidents/INC-1", {"severity": "sev2"}),
    ("incident-update", "out", "PATCH", "/incidents/INC-2", {"severity": "sev2"}),
    ("incident-update", "in", "POST", "/incidents/INC-1/comments", {"text": "looking"}),
    ("incident-update", "out", "POST", "/incidents/INC-2/comments", {"text": "looking"}),
]  # fmt: skip


def _template(path: str, world: World) -> str:
    """The route a concrete path goes to, as the app names its parameters."""
    parts = path.split("/")
    names = {
        IN: "{ref}",
        OUT: "{ref}",
        world.conflict_in: "{ref}",
        world.conflict_out: "{ref}",
        "INC-1": "{incident_id}",
        "INC-2": "{incident_id}",
        "entry-99": "{entry}",
        "description": "{field}",
    }
    return "/".join(names.get(p, p) for p in parts)


def test_every_route_decides_by_the_matrix_through_the_api(world: World) -> None:
    document = create_api(world.two.im.db_path, world.two.clock).openapi()
    routes = {(m.upper(), path) for path, ops in document["paths"].items() for m in ops}
    covered = set()
    for row, target, method, path, body in API_CASES:
        path = path.format(cin=world.conflict_in, cout=world.conflict_out)
        covered.add((method, _template(path, world)))
        for role in ROLES:
            answer = world.call(role, method, path, body)
            wanted = expected(row, role, target)
            where = f"{role}: {method} {path} -> {answer.status_code} {answer.text[:300]}"
            if wanted:
                assert answer.status_code != 403 and answer.status_code < 500, where
            else:
                assert answer.status_code == 403, where
                error = answer.json()["error"]
                assert error["code"] == "forbidden", where
                assert PRINCIPALS[role] in error["message"], where
    assert covered == routes  # every route of the API is in the table


def test_denials_and_changes_are_in_the_audit_log(world: World) -> None:
    world.cli("viewer", "incident", "update", "INC-2", "--severity", "sev1")
    world.call("manager", "PATCH", "/integrations/prod-snow", {"conflict_window": "60s"})
    world.cli("commander", "incident", "update", "INC-1", "--severity", "sev1")
    world.call("commander", "PATCH", "/incidents/INC-1", {"status": "closed"})
    world.call("commander", "PATCH", "/incidents/INC-1", {"status": "triggered"})  # refused
    log = json.loads(world.cli("admin", "audit", "--format", "json", "--limit", "5").stdout)
    assert [
        (e["principal"], e["via"], e["action"], e["target"], e["decision"], e["outcome"])
        for e in log
    ] == [
        ("vic", "cli", "incident.update", "on INC-2", "deny", "denied"),
        ("bob", "api", "integration.configure", "on prod-snow", "deny", "denied"),
        ("carol", "cli", "incident.update", "on INC-1", "allow", "ok"),
        ("carol", "api", "incident.update", "on INC-1", "allow", "ok"),
        ("carol", "api", "incident.update", "on INC-1", "allow", "failed"),
    ]
    assert log[0]["reason"] == "vic (viewer) may not incident.update on INC-2"
    assert log[2]["reason"] == "carol commands INC-1 (incident_commander)"
    assert "closed" in log[4]["error"] and log[3]["error"] is None
    denied = json.loads(world.cli("admin", "audit", "--denied", "--format", "json").stdout)
    assert {e["decision"] for e in denied} == {"deny"}
    bobs = json.loads(world.cli("admin", "audit", "--principal", "bob", "--format", "json").stdout)
    assert [e["action"] for e in bobs] == ["integration.configure"]
