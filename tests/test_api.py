"""The REST API in-process (an httpx client over the ASGI app) on a real database with a frozen
clock: bearer tokens, every route with its success and error answers, one error shape and
never a 500."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from im.api.app import create_api
from im.clock import FrozenClock
from im.sim.pagerduty import PagerDutySimulator
from im.sim.server import free_port, serve_in_thread
from im.sim.transport import ASGIBridge
from im.store import open_database
from im.sync.dispatcher import Dispatcher
from tests.conftest import SECRETS, Im

PD_ARGS = [
    "--type", "pagerduty", "--from-email", "im-integration@example.com", "--service", "PSVC001",
    "--escalation-policy", "PEP0001",
]  # fmt: skip
PD_SECRET = {"IM_API_TOKEN": "im-integration-token"}


@dataclass
class Api:
    client: httpx.Client
    token: str
    im: Im
    clock: FrozenClock

    def call(self, method: str, url: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}", **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)

    def ok(self, method: str, url: str, status: int = 200, **kw: Any) -> Any:
        response = self.call(method, url, **kw)
        assert response.status_code == status, response.text
        return response.json()

    def token_for(self, name: str, *extra: str) -> str:
        return self.im.ok("token", "create", name, *extra).strip()


def serve(im: Im, clock: FrozenClock, db_path: Path | None = None) -> Iterator[Api]:
    token = im.ok("token", "create", "tester").strip()
    bridge = ASGIBridge(create_api(db_path or im.db_path, clock))
    client = httpx.Client(transport=bridge, base_url="http://im")
    yield Api(client, token, im, clock)
    client.close()
    bridge.shutdown()


@pytest.fixture
def api(three: Im, clock: FrozenClock) -> Iterator[Api]:
    yield from serve(three, clock)


@pytest.fixture
def bare(initialised: Im, clock: FrozenClock) -> Iterator[Api]:
    """An API over a database without integrations (nothing is sent anywhere)."""
    yield from serve(initialised, clock)


def error(response: httpx.Response, status: int, code: str) -> str:
    """The message of an error answer, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"]
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    assert "Traceback" not in message
    return message


def new_incident(api: Api, title: str = "Checkout API 5xx", **fields: Any) -> str:
    created = api.ok("POST", "/incidents", 201, json={"title": title, **fields})
    incident_id: str = created["incident"]["id"]
    return incident_id


# -- tokens ----------------------------------------------------------------------------------


def test_every_route_needs_a_token_and_the_401_says_how_to_get_one(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    values = {"incident_id": "INC-1", "ref": "prod-snow", "field": "title", "entry": "entry-1"}
    routes = [(m.upper(), path.format(**values)) for path, ops in paths.items() for m in ops]
    assert len(routes) == 24
    for method, path in routes:
        response = api.client.request(method, path, json={})
        message = error(response, 401, "unauthorized")
        assert "im token create NAME" in message and "Authorization: Bearer" in message
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    ["Bearer imt_not-a-real-token", "Bearer something-else", "Basic YWxpY2U6c2VjcmV0", "Bearer"],
)
def test_a_wrong_token_or_scheme_is_refused(api: Api, header: str) -> None:
    response = api.client.get("/incidents", headers={"Authorization": header})
    error(response, 401, "unauthorized")


def test_a_revoked_token_is_refused(api: Api) -> None:
    token = api.token_for("short-lived")
    assert api.call("GET", "/incidents", token=token).status_code == 200
    api.im.ok("token", "revoke", "short-lived")
    message = error(api.call("GET", "/incidents", token=token), 401, "unauthorized")
    assert "short-lived was revoked" in message
    assert api.call("GET", "/incidents").status_code == 200  # other tokens still work


def test_requests_act_as_the_tokens_principal(api: Api) -> None:
    api.im.ok("access", "grant", "bob", "--role", "incident_commander")
    bob = api.token_for("bobs", "--for", "bob")
    body = {"title": "db down", "commander": "bob"}
    created = api.call("POST", "/incidents", token=bob, json=body).json()
    assert created["incident"]["created_by"] == "bob"
    api.call("PATCH", "/incidents/INC-1", token=bob, json={"severity": "sev1"})
    history = api.ok("GET", "/incidents/INC-1/history")
    assert {change["actor"] for change in history} == {"bob"}


def _last_used(api: Api) -> dict[str, Any]:
    rows = json.loads(api.im.ok("token", "list", "--format", "json"))
    return {row["name"]: row["last_used_at"] for row in rows}


def test_last_use_is_recorded_at_most_once_a_minute(api: Api) -> None:
    assert _last_used(api) == {"tester": None}
    api.ok("GET", "/incidents")
    assert _last_used(api) == {"tester": "2026-11-27T09:00:00.000Z"}
    api.clock.advance(59)
    api.ok("GET", "/incidents")
    assert _last_used(api) == {"tester": "2026-11-27T09:00:00.000Z"}
    api.clock.advance(1)
    api.ok("GET", "/incidents")
    assert _last_used(api) == {"tester": "2026-11-27T09:01:00.000Z"}


# -- incidents -------------------------------------------------------------------------------


def test_create_show_list_and_history(api: Api) -> None:
    created = api.ok(
        "POST",
        "/incidents",
        201,
        json={"title": "Checkout API 5xx", "severity": "sev1", "assigned_to": "Bob@Example.com"},
    )
    incident = created["incident"]
    assert incident["id"] == "INC-1" and incident["status"] == "triggered"
    assert incident["assigned_to"] == "bob@example.com" and incident["created_by"] == "alice"
    assert incident["created_at"] == "2026-11-27T09:00:00.000Z"
    assert {"field": "severity", "old": None, "new": "sev1"} in created["changes"]
    assert sorted(q["integration"] for q in created["queued"]) == [
        "prod-jira",
        "prod-pd",
        "prod-snow",
    ]
    shown = api.ok("GET", "/incidents/INC-1")
    assert shown == api.ok("GET", "/incidents/1")
    assert {k: shown[k] for k in incident} == incident
    assert shown["journal"] == [] and shown["links"] == []
    assert {q["integration"] for q in shown["queued"]} == {"prod-jira", "prod-pd", "prod-snow"}
    assert all(q["state"] == "pending" and q["operation"] == "create" for q in shown["queued"])
    history = api.ok("GET", "/incidents/INC-1/history")
    assert [(h["field"], h["new_value"]) for h in history] == [
        ("title", "Checkout API 5xx"),
        ("severity", "sev1"),
        ("priority", "p3"),
        ("status", "triggered"),
        ("assigned_to", "bob@example.com"),
    ]
    assert all(h["source"] == "platform" for h in history)


def test_list_is_newest_first_with_limit_and_status(api: Api) -> None:
    for title in ("one", "two", "three"):
        new_incident(api, title)
    api.ok("PATCH", "/incidents/INC-2", json={"status": "acknowledged"})
    assert [i["title"] for i in api.ok("GET", "/incidents")] == ["three", "two", "one"]
    assert [i["id"] for i in api.ok("GET", "/incidents", params={"limit": 2})] == [
        "INC-3",
        "INC-2",
    ]
    acknowledged = api.ok("GET", "/incidents", params={"status": "acknowledged"})
    assert [i["id"] for i in acknowledged] == ["INC-2"]
    message = error(api.call("GET", "/incidents", params={"limit": 0}), 422, "invalid")
    assert message.startswith("limit:")
    message = error(api.call("GET", "/incidents", params={"status": "open"}), 422, "invalid")
    assert message.startswith("status:") and "triggered" in message


@pytest.mark.parametrize("limit", ["0", "-1", "10001", "many"])
def test_a_reconcile_history_limit_out_of_range_is_a_422_not_clamped(api: Api, limit: str) -> None:
    """It was silently clamped to 1..10000: a caller asking for 0 got one run."""
    url = "/integrations/prod-jira/reconcile/history"
    assert error(api.call("GET", url, params={"limit": limit}), 422, "invalid").startswith("limit:")
    assert api.ok("GET", url, params={"limit": 10000}) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "title: Field required"),
        ({"title": "x", "severity": "sev9"}, "severity: Input should be"),
        ({"title": "x", "status": "closed"}, "status: Extra inputs are not permitted"),
        ({"title": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"title": "x" * 300}, "title is 300 characters; the limit is 255"),
        ({"title": "x", "assigned_to": "bob"}, "assigned_to must be a user's email address"),
        ({"title": "bell\x07"}, "title must not contain control characters"),
        ({"title": 5}, "title: Input should be a valid string"),
        ([{"title": "x"}], "body: Input should be a valid dictionary"),
    ],
)
def test_create_refuses_bad_values_with_422(api: Api, body: Any, expected: str) -> None:
    assert expected in error(api.call("POST", "/incidents", json=body), 422, "invalid")
    assert api.ok("GET", "/incidents") == []


@pytest.mark.parametrize(
    "content", [b"{not json", b"", b'{"title": "x"', b"\xff\xfe", b"null", b"[1, 2"]
)
def test_malformed_json_is_a_422_not_a_500(api: Api, content: bytes) -> None:
    response = api.call(
        "POST", "/incidents", content=content, headers={"Content-Type": "application/json"}
    )
    error(response, 422, "invalid")


def test_a_body_over_one_mebibyte_is_refused_with_413(api: Api) -> None:
    big = {"title": "big", "description": "x" * (1024 * 1024)}
    message = error(api.call("POST", "/incidents", json=big), 413, "too_large")
    assert "1 MiB" in message
    assert api.ok("GET", "/incidents") == []
    just_under = {"title": "fits", "description": "x" * (1024 * 1024 - 100)}
    message = error(api.call("POST", "/incidents", json=just_under), 422, "invalid")
    assert message == "description is 1048476 characters; the limit is 65536"


def test_a_streamed_body_is_cut_off_once_it_passes_one_mebibyte(api: Api) -> None:
    """Without a Content-Length the body is counted as it arrives, and no more is read."""
    app = create_api(api.im.db_path, api.clock)
    chunk = {"type": "http.request", "body": b"x" * 65536, "more_body": True}
    incoming = [dict(chunk) for _ in range(40)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/incidents",
        "raw_path": b"/incidents",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {api.token}".encode())],
        "server": ("im", 80),
        "client": ("127.0.0.1", 5000),
    }
    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "too_large"
    assert len(incoming) == 40 - 17  # 16 chunks are exactly 1 MiB; the 17th is too many
    assert api.ok("GET", "/incidents") == []


def test_update_changes_fields_and_refuses_bad_status_moves(api: Api) -> None:
    incident = new_incident(api)
    updated = api.ok("PATCH", f"/incidents/{incident}", json={"status": "resolved", "title": "ok"})
    assert updated["incident"]["status"] == "resolved"
    assert updated["changes"] == [
        {"field": "title", "old": "Checkout API 5xx", "new": "ok"},
        {"field": "status", "old": "triggered", "new": "resolved"},
    ]
    same = api.ok("PATCH", "/incidents/1", json={"title": "ok", "description": None})
    assert same["changes"] == [] and same["queued"] == []
    api.ok("PATCH", "/incidents/1", json={"status": "triggered"})  # reopen
    api.ok("PATCH", "/incidents/1", json={"status": "closed"})
    message = error(
        api.call("PATCH", "/incidents/1", json={"status": "triggered"}), 409, "conflict"
    )
    assert "closed is final" in message
    assert api.ok("GET", "/incidents/1")["status"] == "closed"


def test_update_errors(api: Api) -> None:
    new_incident(api)
    assert "nothing to update" in error(
        api.call("PATCH", "/incidents/INC-1", json={}), 400, "bad_request"
    )
    error(api.call("PATCH", "/incidents/INC-1", json={"priority": "urgent"}), 422, "invalid")
    error(api.call("PATCH", "/incidents/INC-1", json={"created_by": "eve"}), 422, "invalid")
    message = error(api.call("PATCH", "/incidents/INC-9", json={"title": "x"}), 404, "not_found")
    assert (
        message == "no incident INC-9 (incidents run from INC-1 to INC-1; see `im incident list`)"
    )


def test_comments_and_work_notes(api: Api) -> None:
    incident = new_incident(api)
    made = api.ok("POST", f"/incidents/{incident}/comments", 201, json={"text": "Looking."})
    assert made["changes"] == [{"field": "comments", "old": None, "new": "Looking."}]
    api.ok(
        "POST",
        f"/incidents/{incident}/comments",
        201,
        json={"text": "Restarted pods\nstep 2", "work_note": True},
    )
    journal = api.ok("GET", f"/incidents/{incident}")["journal"]
    assert [(j["kind"], j["body"], j["actor"]) for j in journal] == [
        ("comments", "Looking.", "alice"),
        ("work_notes", "Restarted pods\nstep 2", "alice"),
    ]
    empty = api.call("POST", f"/incidents/{incident}/comments", json={"text": "  "})
    assert "must not be empty" in error(empty, 422, "invalid")
    error(api.call("POST", f"/incidents/{incident}/comments", json={}), 422, "invalid")
    missing = api.call("POST", "/incidents/INC-7/comments", json={"text": "hello"})
    error(missing, 404, "not_found")


@pytest.mark.parametrize("path", ["/incidents/INC-5", "/incidents/abc", "/incidents/0/history"])
def test_unknown_incidents_are_404(api: Api, path: str) -> None:
    new_incident(api)
    error(api.call("GET", path), 404, "not_found")


def test_unknown_paths_and_methods_keep_the_error_shape(api: Api) -> None:
    error(api.call("GET", "/nothing-here"), 404, "not_found")
    error(api.call("DELETE", "/incidents"), 405, "method_not_allowed")


# -- integrations ----------------------------------------------------------------------------


def test_list_and_get_integrations_without_secrets(api: Api) -> None:
    listed = api.ok("GET", "/integrations")
    assert [i["name"] for i in listed] == ["prod-snow", "prod-jira", "prod-pd"]
    snow = api.ok("GET", "/integrations/prod-snow")
    assert snow == listed[0] == api.ok("GET", f"/integrations/{snow['id']}")
    assert snow["secrets"] == {"password": "set", "webhook_secret": "set"}
    assert snow["settings"]["username"] == "im-integration"
    for path in ("/integrations", "/integrations/prod-snow", "/integrations/prod-pd"):
        text = api.call("GET", path).text
        assert not [secret for secret in SECRETS.values() if secret in text]
    message = error(api.call("GET", "/integrations/prod-snwo"), 404, "not_found")
    assert message.startswith("no integration 'prod-snwo' (did you mean prod-snow")


def test_configure_changes_only_the_non_secret_settings(api: Api) -> None:
    body = {
        "direction": "bidirectional",
        "rate_limit": "10/s",
        "conflict_window": 2,
        "enabled": False,
    }
    outcome = api.ok("PATCH", "/integrations/prod-jira", json=body)
    assert outcome["changes"] == [
        "direction outbound -> bidirectional",
        "conflict_window 5s -> 2s",
        "rate_limit off -> 10/s",
        "enabled on -> off",
    ]
    assert outcome["warnings"] and "field ownership is still the defaults" in outcome["warnings"][0]
    shown = api.ok("GET", "/integrations/prod-jira")
    assert (shown["direction"], shown["rate_limit"], shown["conflict_window"]) == (
        "bidirectional",
        "10/s",
        "2s",
    )
    assert shown["enabled"] is False
    assert api.ok("PATCH", "/integrations/prod-jira", json={"rate_limit": "off"})["changes"] == [
        "rate_limit 10/s -> off"
    ]
    assert api.ok("PATCH", "/integrations/prod-jira", json={})["changes"] == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"password": "hunter2"}, "password: Extra inputs are not permitted"),
        ({"api_token": "x"}, "api_token: Extra inputs are not permitted"),
        ({"url": "https://evil.example.com"}, "url: Extra inputs are not permitted"),
        ({"direction": "sideways"}, "direction: Input should be"),
        ({"rate_limit": "fast"}, "--rate-limit takes N/s"),
        ({"conflict_window": "forever"}, "--conflict-window takes a duration"),
        ({"conflict_window": 99999}, "--conflict-window must be between"),
    ],
)
def test_configure_refuses_secrets_and_bad_values(api: Api, body: Any, expected: str) -> None:
    before = api.ok("GET", "/integrations/prod-pd")
    message = error(api.call("PATCH", "/integrations/prod-pd", json=body), 422, "invalid")
    assert expected in message and "hunter2" not in message
    assert api.ok("GET", "/integrations/prod-pd") == before


def test_configure_an_unknown_integration_is_404(api: Api) -> None:
    error(api.call("PATCH", "/integrations/nope", json={"enabled": False}), 404, "not_found")


def test_field_ownership_list_set_and_unset(api: Api) -> None:
    rules = {r["field"]: r for r in api.ok("GET", "/integrations/prod-jira/field-ownership")}
    assert rules["title"]["external_field"] == "summary"
    rule = api.ok(
        "PUT",
        "/integrations/prod-jira/field-ownership/summary",
        json={"owner": "external", "priority": 5},
    )
    assert rule == {
        "integration": "prod-jira",
        "field": "title",
        "owner": "external",
        "priority": 5,
    }
    rules = {r["field"]: r for r in api.ok("GET", "/integrations/prod-jira/field-ownership")}
    assert rules["title"] == {
        "field": "title",
        "external_field": "summary",
        "owner": "external",
        "priority": 5,
        "default": False,
    }
    removed = api.ok("DELETE", "/integrations/prod-jira/field-ownership/title")
    assert removed == {
        "integration": "prod-jira",
        "field": "title",
        "owner": "none",
        "priority": None,
    }
    rules = {r["field"]: r for r in api.ok("GET", "/integrations/prod-jira/field-ownership")}
    assert rules["title"]["owner"] == "none"
    again = api.call("DELETE", "/integrations/prod-jira/field-ownership/title")
    assert "has no ownership rule for title" in error(again, 409, "conflict")


def test_field_ownership_errors(api: Api) -> None:
    path = "/integrations/prod-jira/field-ownership"
    error(api.call("PUT", f"{path}/title", json={"owner": "nobody"}), 422, "invalid")
    error(api.call("PUT", f"{path}/title", json={}), 422, "invalid")
    error(
        api.call("PUT", f"{path}/title", json={"owner": "external", "priority": 10**9}),
        422,
        "invalid",
    )
    message = error(api.call("PUT", f"{path}/colour", json={"owner": "external"}), 422, "invalid")
    assert "unknown field 'colour'" in message
    error(api.call("GET", "/integrations/nope/field-ownership"), 404, "not_found")
    error(api.call("DELETE", "/integrations/nope/field-ownership/title"), 404, "not_found")


def test_connection_test_reports_each_check(bare: Api) -> None:
    with serve_in_thread(PagerDutySimulator()) as running:
        bare.im.ok("integration", "create", "sim-pd", *PD_ARGS, "--url", running.url, env=PD_SECRET)
        report = bare.ok("POST", "/integrations/sim-pd/test")
    assert report["integration"] == "sim-pd" and report["type"] == "pagerduty"
    assert report["ok"] is True and report["checks"]
    assert all(c["ok"] for c in report["checks"])
    closed = f"http://127.0.0.1:{free_port()}"
    bare.im.ok("integration", "create", "gone-pd", *PD_ARGS, "--url", closed, env=PD_SECRET)
    report = bare.ok("POST", "/integrations/gone-pd/test")
    assert report["ok"] is False
    assert report["checks"][-1]["check"] == "reachability" and not report["checks"][-1]["ok"]
    assert "im-integration-token" not in json.dumps(report)
    error(bare.call("POST", "/integrations/nope/test"), 404, "not_found")


def test_dead_letter_queue_list_retry_and_discard(bare: Api) -> None:
    bare.im.ok(
        "integration", "create", "prod-pd", *PD_ARGS, "--url", "http://127.0.0.1:3", env=PD_SECRET
    )
    sim = PagerDutySimulator(clock=bare.clock)
    db = open_database(bare.im.db_path)
    dispatcher = Dispatcher(
        db, bare.clock, transport_for=lambda _: sim.transport(), sleep=bare.clock.advance
    )
    try:
        assert bare.ok("GET", "/integrations/prod-pd/dlq") == []
        new_incident(bare, "first")
        new_incident(bare, "second")
        sim.faults.update({"permanent_error": 422})
        dispatcher.step()
        entries = bare.ok("GET", "/integrations/prod-pd/dlq")
        assert [e["incident"] for e in entries] == ["INC-1", "INC-2"]
        first, second = entries
        assert first["operation"] == "create" and "422" in first["error"]
        assert len(first["attempts"]) == 1 and first["attempts"][0]["charged"] is True
        sim.faults.update({"permanent_error": 0})
        bare.ok("PATCH", "/incidents/INC-1", json={"title": "first, renamed"})
        retried = bare.ok("POST", f"/integrations/prod-pd/dlq/{first['id']}/retry")
        assert retried == {"entry": first["id"], "action": "retried"}
        discarded = bare.ok("POST", f"/integrations/prod-pd/dlq/{second['id']}/discard")
        assert discarded == {"entry": second["id"], "action": "discarded"}
        assert bare.ok("GET", "/integrations/prod-pd/dlq") == []
        dispatcher.step()
        assert sim.record_count() == 1
        again = bare.call("POST", f"/integrations/prod-pd/dlq/{first['id']}/retry")
        assert f"no DLQ entry {first['id']}" in error(again, 404, "not_found")
    finally:
        dispatcher.close()
        db.close()
        sim.shutdown()
    error(bare.call("POST", "/integrations/prod-pd/dlq/garbage/discard"), 404, "not_found")
    error(bare.call("GET", "/integrations/nope/dlq"), 404, "not_found")
    error(bare.call("POST", "/integrations/nope/dlq/entry-1/retry"), 404, "not_found")


# -- failures of the service itself ----------------------------------------------------------


def test_a_locked_database_is_503_with_retry_after(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.ok("GET", "/incidents")  # its last use is recorded: the next reads do not write
    monkeypatch.setenv("IM_BUSY_TIMEOUT", "0")
    holder = sqlite3.connect(api.im.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert api.call("GET", "/incidents").status_code == 200  # readers do not wait
        response = api.call("POST", "/incidents", json={"title": "during a lock"})
        assert "locked" in error(response, 503, "busy")
        assert response.headers["Retry-After"] == "5"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert api.call("POST", "/incidents", json={"title": "after the lock"}).status_code == 201


def test_a_missing_database_is_503_without_its_path(api: Api, tmp_path: Path) -> None:
    gone = tmp_path / "private-dir" / "gone.db"
    bridge = ASGIBridge(create_api(gone, api.clock))
    with httpx.Client(transport=bridge, base_url="http://im") as client:
        response = client.get("/incidents", headers={"Authorization": f"Bearer {api.token}"})
    bridge.shutdown()
    message = error(response, 503, "database_unavailable")
    assert "private-dir" not in message


def test_an_unexpected_error_is_503_internal_without_detail(api: Api) -> None:
    app = create_api(api.im.db_path, api.clock)

    def broken() -> None:
        raise RuntimeError("password=hunter2 leaked")

    app.add_api_route("/broken", broken)
    bridge = ASGIBridge(app)
    with httpx.Client(transport=bridge, base_url="http://im") as client:
        response = client.get("/broken")
    bridge.shutdown()
    assert error(response, 503, "internal") == "internal error; see the daemon's log"
    assert "hunter2" not in response.text and "RuntimeError" not in response.text


# -- the OpenAPI document --------------------------------------------------------------------


def test_the_openapi_document_describes_every_route_and_body(api: Api) -> None:
    response = api.client.get("/openapi.json")  # no token needed: it holds no data
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    paths = {path: sorted(ops) for path, ops in doc["paths"].items()}
    assert paths == {
        "/incidents": ["get", "post"],
        "/incidents/{incident_id}": ["get", "patch"],
        "/incidents/{incident_id}/comments": ["post"],
        "/incidents/{incident_id}/history": ["get"],
        "/integrations": ["get"],
        "/integrations/{ref}": ["get", "patch"],
        "/integrations/{ref}/field-ownership": ["get"],
        "/integrations/{ref}/field-ownership/{field}": ["delete", "put"],
        "/integrations/{ref}/test": ["post"],
        "/integrations/{ref}/sync-status": ["get"],
        "/integrations/{ref}/dlq": ["get"],
        "/integrations/{ref}/dlq/{entry}/retry": ["post"],
        "/integrations/{ref}/dlq/{entry}/discard": ["post"],
        "/integrations/{ref}/reconcile": ["post"],
        "/integrations/{ref}/reconcile/history": ["get"],
        "/integrations/{ref}/reconcile/schedule": ["get", "post"],
        "/conflicts": ["get"],
        "/conflicts/{ref}": ["get"],
        "/conflicts/{ref}/resolve": ["post"],
    }
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["security"] == [{"HTTPBearer": []}]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    assert schemas["IncidentCreate"]["required"] == ["title"]
    assert "status" in schemas["IncidentUpdate"]["properties"]
    assert set(schemas["IntegrationUpdate"]["properties"]) == {
        "direction",
        "conflict_strategy",
        "conflict_window",
        "rate_limit",
        "rate_limit_backoff",
        "enabled",
    }
    assert "password" not in json.dumps(schemas["IntegrationOut"])


def test_a_body_without_the_json_content_type_says_so(api: Api) -> None:
    response = api.client.post(
        "/incidents",
        content=b'{"title": "x"}',
        headers={
            "Authorization": f"Bearer {api.token}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert error(response, 422, "invalid") == (
        "send the request body as JSON, with Content-Type: application/json"
    )
