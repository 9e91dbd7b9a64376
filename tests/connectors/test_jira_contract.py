"""The Jira connector pinned to Jira-shaped exchanges: vcrpy cassettes built by hand from the
documented examples (``fixtures/cassettes/jira``, each naming its sources), played back with
nothing ever recorded, and the documented signature vectors and webhook deliveries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import vcr
import yaml

from im.config.mapping import mappings
from im.connectors.base import ConnectorConfig, WebhookRequest
from im.connectors.http import AuthError, PermanentError, RateLimitedError, RecordNotFoundError
from im.connectors.jira import JiraConnector
from im.errors import SignatureError

ROOT = Path(__file__).parent.parent.parent
CASSETTES = ROOT / "fixtures" / "cassettes" / "jira"
VECTORS = ROOT / "fixtures" / "vectors"
# unchanged copies of the vendor research's payloads (vendor/payloads/) the tests read directly
PAYLOADS = CASSETTES / "documented"
URL = "https://your-domain.atlassian.net"
SETTINGS = {
    "email": "im-integration@example.com",
    "project": "ITSM",
    "issue_type": "Incident",
    # the example's "Urgency" select: its value High is not a Sev-N, so it cannot be mapped
    "severity_field": "customfield_10042",
}


def _json_body(r1: Any, r2: Any) -> None:
    """Request bodies are equal as JSON (key order and spacing do not matter)."""

    def load(body: bytes | str | None) -> Any:
        return json.loads(body) if body else None

    assert load(r1.body) == load(r2.body), (r1.body, r2.body)


def _recorder() -> vcr.VCR:
    recorder = vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        record_mode="none",
        match_on=["method", "scheme", "host", "port", "path", "query", "json_body"],
    )
    recorder.register_matcher("json_body", _json_body)
    return recorder


def _connector(**settings: str) -> JiraConnector:
    merged = {**SETTINGS, **settings}
    return JiraConnector(
        ConnectorConfig(
            name="contract-jira",
            url=URL,
            settings=merged,
            secrets={"api_token": "contract-api-token"},
            fields=mappings("jira", merged, {}),
            sleep=lambda seconds: None,
        )
    )


@pytest.fixture
def jira() -> Iterator[JiraConnector]:
    connector = _connector()
    yield connector
    connector.close()


def _cassette(name: str) -> Any:
    return _recorder().use_cassette(name, allow_playback_repeats=False)


def _played_all(cassette: Any) -> None:
    assert cassette.all_played, "not every documented exchange was used"


def test_cassettes_name_their_sources() -> None:
    for path in sorted(CASSETTES.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# "), path.name
        assert "vendor/" in path.read_text().split("interactions:")[0], path.name
        assert yaml.safe_load(path.read_text())["interactions"], path.name


def test_get_parses_the_documented_jsm_incident(jira: JiraConnector) -> None:
    with _cassette("get_issue.yaml") as cassette:
        record = jira.get("10042")
        _played_all(cassette)
    assert (record.id, record.key) == ("10042", "ITSM-42")
    assert record.url == f"{URL}/browse/ITSM-42"
    assert record.version == "2024-05-14T10:31:47.902Z"
    assert record.created_at == "2024-05-14T10:15:02.118Z"  # fields.created, +0000
    assert record.fields == {
        "title": "Checkout API returning 502 for EU customers",
        "description": "Error rate on /checkout above 20% since 10:12 UTC. "
        "Synced from PagerDuty incident PGR0VU2.",
        "priority": "p2",  # High
        "status": "acknowledged",  # JSM's "Work in progress"
        "assigned_to": "mia@example.com",  # accountId -> email via GET /user
    }
    assert record.correlation_key is None  # labels pagerduty, sync: not ours
    assert record.warnings == ("severity: Jira value 'High' has no platform value",)


def test_create_sends_the_documented_request_shape(jira: JiraConnector) -> None:
    documented = json.loads((PAYLOADS / "jira-cloud-v3-create-issue.json").read_text())
    with _cassette("create_issue.yaml") as cassette:
        record = jira.create(
            {
                "title": "Main order flow broken",
                "description": "Order entry fails when selecting supplier.",
                "priority": "p2",
                "status": "triggered",
            },
            "im:0f3c2a9e-test:INC-7",
        )
        _played_all(cassette)
        sent = json.loads(cassette.requests[0].body)
    # every field we send is one the documented request has, in the same representation
    assert set(sent) <= set(documented["request"])
    assert set(sent["fields"]) <= set(documented["request"]["fields"])
    assert sent["fields"]["description"] == documented["request"]["fields"]["description"]
    assert (record.id, record.key) == ("10000", "ED-24")
    assert record.correlation_key == "im:0f3c2a9e-test:INC-7"
    assert record.fields["status"] == "triggered"
    assert record.fields["description"] == "Order entry fails when selecting supplier."


def test_update_edits_then_walks_the_offered_transition(jira: JiraConnector) -> None:
    with _cassette("update_issue.yaml") as cassette:
        record = jira.update(
            "10042",
            {"title": "Checkout API recovering", "priority": "p1", "status": "acknowledged"},
        )
        _played_all(cassette)
    assert record.fields["title"] == "Checkout API recovering"
    assert record.fields["priority"] == "p1"
    assert record.fields["status"] == "acknowledged"
    assert record.version == "2024-05-14T10:40:12.345Z"


def test_comment_add_and_list(jira: JiraConnector) -> None:
    text = (
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Pellentesque eget venenatis "
        "elit. Duis eu justo eget augue iaculis fermentum. Sed semper quam laoreet nisi egestas "
        "at posuere augue semper."
    )
    with _cassette("comments.yaml") as cassette:
        entry = jira.add_journal("10010", "comments", text)
        listed = jira.list_journal("10010")
        _played_all(cassette)
    assert entry.vendor_id == "10000"
    assert entry.field == "comments"
    assert entry.author == "mia@example.com"
    assert entry.created_at == "2021-01-17T12:34:00.000Z"
    # a comment restricted to a role is internal: a work note
    assert [(e.vendor_id, e.field, e.author) for e in listed] == [
        ("10000", "work_notes", "mia@example.com")
    ]
    assert listed[0].body == text


def test_search_pages_with_next_page_token(jira: JiraConnector) -> None:
    with _cassette("search.yaml") as cassette:
        records = list(jira.list_in_scope())
        _played_all(cassette)
    assert [(r.id, r.key, r.fields["title"]) for r in records] == [
        ("10042", "ITSM-42", "Checkout API returning 502 for EU customers")
    ]
    assert records[0].fields["status"] == "acknowledged"
    assert records[0].version == "2024-05-14T10:31:47.902Z"
    assert records[0].created_at == "2024-05-14T10:15:02.118Z"
    # the listing carries every comment, so reconciliation needs no comment read
    assert records[0].journal is not None
    [note] = records[0].journal
    assert (note.vendor_id, note.field, note.author) == ("10000", "work_notes", "mia@example.com")
    assert note.body == "Lorem ipsum dolor sit amet."


def test_documented_errors_become_typed_errors_with_jiras_text(jira: JiraConnector) -> None:
    with _cassette("errors.yaml") as cassette:
        with pytest.raises(PermanentError) as refused:
            jira.create({"title": "No priority"}, "im:0f3c2a9e-test:INC-8")
        assert refused.value.status == 400
        assert "Field 'priority' is required" in refused.value.message

        with pytest.raises(RecordNotFoundError) as missing:
            jira.get("99999")
        assert "Issue does not exist or you do not have permission to see it." in (
            missing.value.message
        )

        with pytest.raises(RateLimitedError) as limited:
            jira.get("10043")
        assert limited.value.retry_after == 12

        checks = jira.check()
        credentials = next(c for c in checks if c.name == "credentials")
        assert not credentials.ok
        assert "You are not authenticated" in credentials.detail
        assert "contract-api-token" not in credentials.detail

        with pytest.raises(AuthError) as password:
            jira.get("10044")
        assert password.value.status == 401
        assert "contract-api-token" not in str(password.value)
        _played_all(cassette)


def _vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def test_connect_jwt_vector_verifies() -> None:
    vector = _vector("jira-connect-jwt-vector.json")
    path, _, query = vector["url"].removeprefix("https://im.example.com").partition("?")
    request = WebhookRequest(
        "POST", path, query, {"authorization": f"JWT {vector['token']}"}, b'{"webhookEvent":"x"}'
    )
    now = datetime.fromtimestamp(vector["claims"]["iat"] + 30, UTC)
    connector = _connector(client_key=vector["claims"]["iss"])
    try:
        connector.verify_webhook(request, ["old-secret", vector["shared_secret"]], now)
        with pytest.raises(SignatureError):  # another site's token
            _connector(client_key="jira:another-site").verify_webhook(
                request, [vector["shared_secret"]], now
            )
        with pytest.raises(SignatureError):  # signed for another URL
            moved = WebhookRequest("POST", "/webhooks/other", query, request.headers, b"")
            connector.verify_webhook(moved, [vector["shared_secret"]], now)
        with pytest.raises(SignatureError):  # expired
            late = datetime.fromtimestamp(vector["claims"]["exp"] + 61, UTC)
            connector.verify_webhook(request, [vector["shared_secret"]], late)
        # the token may travel in the query instead; the jwt parameter is not part of the qsh
        in_query = WebhookRequest("POST", path, f"{query}&jwt={vector['token']}", {}, b"")
        connector.verify_webhook(in_query, [vector["shared_secret"]], now)
    finally:
        connector.close()


def _hub_request() -> tuple[WebhookRequest, dict[str, Any]]:
    vector = _vector("jira-webhook-hub-signature-vector.json")
    body = (VECTORS / vector["raw_body_file"]).read_bytes().rstrip(b"\n")
    headers = {"x-hub-signature": vector["header_value"], "x-atlassian-webhook-identifier": "d-1"}
    return WebhookRequest("POST", "/webhooks/prod-jira", "", headers, body), vector


def test_hub_signature_vector_verifies_and_the_delivery_parses() -> None:
    request, vector = _hub_request()
    connector = _connector(project="API", issue_type="Database Change")
    try:
        now = datetime(2024, 10, 8, 8, 38, 4, tzinfo=UTC)
        connector.verify_webhook(request, [vector["secret"]], now)
        with pytest.raises(SignatureError):
            connector.verify_webhook(request, ["not the secret"], now)
        with _cassette("webhook_users.yaml") as cassette:
            event = connector.parse_webhook(request)
            _played_all(cassette)
    finally:
        connector.close()
    assert event is not None
    assert (event.event_type, event.external_id, event.external_key) == (
        "jira:issue_updated",
        "10005",
        "API-1",
    )
    assert event.delivery_id == "d-1"
    assert event.changes == {"status": "acknowledged"}  # To Do -> In Progress
    assert event.version == "2024-10-08T08:38:03.790Z"  # 16:38:03.790+0800 in UTC
    assert event.event_time == "2024-10-08T08:38:03.790Z"
    assert event.actor == "adela@example.com"
    assert not event.by_self


def test_documented_priority_changelog_parses() -> None:
    body = (PAYLOADS / "jira-webhook-issue-updated-priority-changelog.json").read_bytes()
    connector = _connector(project="TEST", issue_type="New Feature")
    try:
        with _cassette("webhook_users.yaml") as cassette:
            event = connector.parse_webhook(WebhookRequest("POST", "/w", "", {}, body))
            assert cassette.play_count == 1  # only our own account: the actor's email is given
    finally:
        connector.close()
    assert event is not None
    assert event.changes == {"priority": "p2"}  # Critical -> Major, an older priority scheme
    assert event.actor == "leo@zulip.com"
    assert event.version == "2014-02-26T19:57:13.139Z"
    assert event.delivery_id == "10000-1393444633145-10102"  # no header: issue, time, changelog


def test_deliveries_of_other_projects_or_events_are_not_ours() -> None:
    request, _ = _hub_request()
    connector = _connector()  # project ITSM: the vector is project API
    try:
        assert connector.parse_webhook(request) is None
        other = WebhookRequest("POST", "/w", "", {}, b'{"webhookEvent":"worklog_created"}')
        assert connector.parse_webhook(other) is None
    finally:
        connector.close()


def test_a_listing_that_cut_the_comments_short_leaves_them_to_list_journals(
    jira: JiraConnector,
) -> None:
    with _cassette("search.yaml"):
        [record] = list(jira.list_in_scope())
    issue = {"fields": {"comment": {"comments": [], "maxResults": 0, "total": 3, "startAt": 0}}}
    assert jira._with_journal(record, issue).journal is None
