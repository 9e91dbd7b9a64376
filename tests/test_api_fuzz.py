"""The REST API fuzzed from its own OpenAPI document (SPEC §14 "Bad input") with schemathesis,
in-process through the daemon's app (the API mounted under /api/v1), over a database with
integrations, linked incidents, journal entries, a pending and a resolved conflict, DLQ
entries, a reconcile run and schedule, and tokens for an administrator and a viewer.

Each operation is fuzzed with generated valid and invalid requests (the path ids drawn half
of the time from ids that exist, so routes reach real data) as the administrator, as a
viewer and without a token. Every answer must be declared by the document for that
operation, with a body that matches its schema and the declared content type, and must never
be a 5xx: nothing here makes the database busy, so a 503 is a bug too.

A longer campaign: ``IM_FUZZ_EXAMPLES=250 python -m pytest -q tests/test_api_fuzz.py``
(see tests/fuzzing.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from im.api.app import PREFIX, create_api
from im.clock import FrozenClock
from im.daemon.app import create_app
from im.sim.transport import ASGIBridge
from tests.conftest import START
from tests.fuzzing import fuzz_settings, home_env, shared_two
from tests.two_way import Two, new_incident

# The document does not depend on the database: load it once, to parametrize by operation.
DOCUMENT = create_api(Path("never-opened.db"), FrozenClock(START)).openapi()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = [op.ok() for op in SCHEMA.get_all_operations()]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class World:
    two: Two
    app: Any
    tokens: dict[str, str | None]
    ids: dict[str, list[str]]


def _seed(two: Two) -> dict[str, list[str]]:
    """Real data behind every route; returns ids that exist, by path parameter."""
    im = two.im
    for title in ("Checkout API 5xx", "Login latency"):
        new_incident(two, "--title", title)
    im.ok("incident", "comment", "INC-1", "looking into it")
    two.sync()
    # a pending conflict (manual review) and a resolved one (last write wins)
    im.ok("integration", "configure", "prod-jira", "--conflict-strategy", "manual-review")
    for n, strategy in ((1, "manual-review"), (2, "last-write-wins")):
        im.ok("integration", "configure", "prod-jira", "--conflict-strategy", strategy)
        two.clock.advance(10)
        im.ok("incident", "update", f"INC-{n}", "--title", f"platform title {n}")
        two.clock.advance(2)
        with two.agent("prod-jira") as agent:
            issue = two.external_id("prod-jira", n)
            agent.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": f"agent {n}"}})
        two.sync()
    # DLQ entries: PagerDuty refuses two changes for good
    two.sims["prod-pd"].faults.update({"permanent_error": 422})
    new_incident(two, "--title", "never reaches PagerDuty")
    im.ok("incident", "update", "INC-2", "--severity", "sev1")
    two.sync(1)
    two.sims["prod-pd"].faults.update({"permanent_error": 0})
    two.sync()
    im.ok("integration", "reconcile", "prod-snow", "--dry-run")
    im.ok("integration", "reconcile", "schedule", "prod-snow", "--interval", "1h")
    im.ok("integration", "field-ownership", "set", "prod-pd", "title", "--owner", "external")
    dead = two.db().execute("SELECT id FROM dead_letters ORDER BY id").fetchall()
    conflicts = two.db().execute("SELECT id FROM conflicts ORDER BY id").fetchall()
    assert dead and len(conflicts) >= 2, (dead, conflicts)
    return {
        "incident_id": ["INC-1", "INC-2", "3"],
        "integration": ["prod-snow", "prod-jira", "prod-pd", "1"],
        "field": ["title", "severity", "short_description", "status", "description"],
        "entry": [f"entry-{row[0]}" for row in dead] + [str(dead[0][0])],
        "conflict": [f"conflict-{row[0]}" for row in conflicts] + [str(conflicts[0][0])],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("api-fuzz")
    with shared_two(home) as two:
        ids = _seed(two)
        im = two.im
        im.ok("access", "grant", "victor", "--role", "viewer")
        tokens = {
            "administrator": im.ok("token", "create", "fuzz-admin").strip(),
            "viewer": im.ok("token", "create", "fuzz-viewer", "--for", "victor").strip(),
            "anonymous": None,
        }
        assert im.transport_for is not None
        api = create_api(im.db_path, two.clock, im.transport_for)
        yield World(two, create_app(lambda: (True, ""), api=api), tokens, ids)


@pytest.fixture
def shared(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    home_env(monkeypatch, world.two.im.db_path.parent)
    return world


def _known(operation: Any, ids: dict[str, list[str]]) -> st.SearchStrategy[dict[str, str]]:
    """Path parameters that exist, for this operation's path."""
    kinds = {"incident_id": "incident_id", "field": "field", "entry": "entry"}
    kinds["ref"] = "conflict" if operation.path.startswith("/conflicts") else "integration"
    names = [p.name for p in operation.path_parameters]
    return st.fixed_dictionaries({name: st.sampled_from(ids[kinds[name]]) for name in names})


def _cases(operation: Any, mode: GenerationMode, ids: dict[str, list[str]]) -> Any:
    generated = operation.as_strategy(generation_mode=mode)
    if not operation.path_parameters:
        return generated
    real = _known(operation, ids).flatmap(
        lambda given: operation.as_strategy(generation_mode=mode, path_parameters=given)
    )
    return st.one_of(real, generated)


@pytest.mark.parametrize(
    ("who", "mode", "examples"),
    [
        ("administrator", GenerationMode.POSITIVE, 25),
        ("administrator", GenerationMode.NEGATIVE, 20),
        ("viewer", GenerationMode.POSITIVE, 8),
        ("anonymous", GenerationMode.POSITIVE, 4),
    ],
)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_the_api_answers_as_its_openapi_document_says(
    shared: World, operation: Any, who: str, mode: GenerationMode, examples: int
) -> None:
    world = shared
    token = world.tokens[who]
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS

    @fuzz_settings(examples)
    @given(case=_cases(operation, mode, world.ids))
    def fuzz(case: Any) -> None:
        headers = dict(case.headers or {})
        headers.pop("Authorization", None)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        case.headers = headers
        response = case.call(app=world.app, base_url=f"http://im{PREFIX}")
        case.validate_response(response, checks=checks)

    fuzz()


# -- what the fuzzer found, kept as examples --------------------------------------------------


@pytest.fixture
def client(shared: World) -> Iterator[httpx.Client]:
    token = shared.tokens["administrator"]
    bridge = ASGIBridge(shared.app)
    with httpx.Client(
        transport=bridge,
        base_url=f"http://im{PREFIX}",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client
    bridge.shutdown()


def _declared(method: str, path: str, status: int) -> dict[str, Any]:
    """The document's schema for that answer; fails when the status is not declared."""
    responses = DOCUMENT["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, (method, path, status, sorted(responses))
    schema: dict[str, Any] = responses[str(status)]["content"]["application/json"]["schema"]
    return schema


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"], body
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def test_every_operation_declares_its_errors_with_the_one_error_shape() -> None:
    """Found: 404, 409, 400 and 413 answers were not declared, 401, 403 and 503 had no
    body, and 422 was declared as FastAPI's {"detail": [...]}, which the API never sends."""
    error = {"$ref": "#/components/schemas/ErrorOut"}
    assert "HTTPValidationError" not in DOCUMENT["components"]["schemas"]
    for path, operations in DOCUMENT["paths"].items():
        for method in operations:
            for status in ("401", "403", "413", "422", "503"):
                assert _declared(method, path, int(status)) == error, (method, path, status)
            if "{" in path:
                assert _declared(method, path, 404) == error, (method, path)


@pytest.mark.parametrize(
    "content",
    [b'{"title": "\xff\xfe"}', b"\xff", b"[" * 50_000 + b"]" * 50_000],
    ids=["not-utf-8", "one-byte", "nested-too-deep"],
)
def test_a_body_that_is_not_even_readable_json_is_a_422(
    client: httpx.Client, content: bytes
) -> None:
    """Found: FastAPI answered these 400 "There was an error parsing the body", a status
    the document did not declare and the README does not give for malformed JSON."""
    response = client.post(
        "/incidents", content=content, headers={"Content-Type": "application/json"}
    )
    assert _error(response, 422, "invalid") == "the request body is not valid JSON"


@pytest.mark.parametrize(
    ("method", "path", "body", "where"),
    [
        ("PUT", "/integrations/prod-snow/field-ownership/title", {"owner": "external", "priority": True}, "priority"),
        ("PUT", "/integrations/prod-snow/field-ownership/title", {"owner": "external", "priority": "5"}, "priority"),
        ("PATCH", "/integrations/prod-pd", {"enabled": "yes"}, "enabled"),
        ("PATCH", "/integrations/prod-pd", {"conflict_window": True}, "conflict_window"),
        ("POST", "/integrations/prod-pd/reconcile", {"auto_heal": 1}, "auto_heal"),
        ("POST", "/integrations/prod-pd/reconcile/schedule", {"enabled": "false"}, "enabled"),
        ("POST", "/incidents/INC-1/comments", {"text": "x", "work_note": "no"}, "work_note"),
    ],
)  # fmt: skip
def test_numbers_and_booleans_must_be_json_numbers_and_booleans(
    client: httpx.Client, method: str, path: str, body: dict[str, Any], where: str
) -> None:
    """Found: ``"priority": true`` was taken as priority 1, ``"enabled": "yes"`` as true."""
    response = client.request(method, path, json=body)
    assert where in _error(response, 422, "invalid")


@pytest.mark.parametrize(
    "path", ["/incidents/a%0Ab", "/integrations/prod-snow%0A/dlq", "/conflicts/%0A/resolve"]
)
def test_an_id_no_route_takes_is_a_404_in_the_error_shape(client: httpx.Client, path: str) -> None:
    """Found: an id with a newline matched no route of the daemon, which answered Starlette's
    plain-text "Not Found" instead of the API's error shape."""
    message = _error(client.get(path), 404, "not_found")
    assert message.startswith("no such resource: ")
