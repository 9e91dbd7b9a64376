"""The PagerDuty connector against PagerDuty's documented exchanges: vcrpy cassettes built by
hand from the API reference examples (fixtures/cassettes/pagerduty, each naming its source),
played back with a real httpx client and nothing recorded. A request the connector sends
must match the documented one (method, URL, query, JSON body, auth, Accept and From)."""

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
from im.connectors.pagerduty import PagerDutyConnector
from im.errors import SignatureError

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
CASSETTES = FIXTURES / "cassettes" / "pagerduty"
TOKEN = "pd-contract-token"
FROM = "im-integration@example.com"
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
KEY = "baf7cf21b1da41b4b0221008339ff357"
DOCUMENTED_DETAILS = (
    "A disk is getting full on this machine. You should investigate what is causing the disk "
    "to fill, and ensure that there is an automated process in place for ensuring data is "
    "rotated (eg. logs should have logrotate around them). If data is expected to stay on this "
    "disk forever, you should start planning to scale up to a larger disk."
)


def _json_body(r1: Any, r2: Any) -> None:
    if r1.method in ("POST", "PUT") and r2.method == r1.method:
        assert r2.body is not None and json.loads(r1.body) == json.loads(r2.body)


def _pagerduty_headers(r1: Any, r2: Any) -> None:
    names = ["Authorization", "Accept"] + (["From"] if r1.method in ("POST", "PUT") else [])
    for name in names:
        assert r1.headers.get(name) == r2.headers.get(name), name


PLAYER = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="none",
    match_on=["method", "scheme", "host", "port", "path", "query", "json_body", "pd_headers"],
)
PLAYER.register_matcher("json_body", _json_body)
PLAYER.register_matcher("pd_headers", _pagerduty_headers)


def connector(**settings: str) -> PagerDutyConnector:
    chosen = {"from_email": FROM, "service": "PIJ90N7", "escalation_policy": "PT20YPA", **settings}
    return PagerDutyConnector(
        ConnectorConfig(
            name="prod-pd",
            url="https://api.pagerduty.com",
            settings=chosen,
            secrets={"api_token": TOKEN},
            fields=mappings("pagerduty", chosen, {}),
        )
    )


@pytest.fixture
def pd() -> Iterator[PagerDutyConnector]:
    connection = connector()
    yield connection
    connection.close()


def test_get_parses_the_documented_incident(pd: PagerDutyConnector) -> None:
    with PLAYER.use_cassette("get_incident.yaml") as cassette:
        record = pd.get("PT4KHLK")
    assert cassette.all_played
    assert (record.id, record.key, record.url) == (
        "PT4KHLK",
        "1234",
        "https://subdomain.pagerduty.com/incidents/PT4KHLK",
    )
    assert record.version == record.updated_at == "2015-10-06T21:40:23.000Z"
    assert record.correlation_key == KEY
    assert dict(record.fields) == {
        "title": "The server is on fire.",
        "description": "A disk is getting full on this machine.",
        "severity": "sev2",  # urgency high
        "priority": "p2",
        "status": "acknowledged",
        "assigned_to": "125.greenholt.earline@graham.name",
        "escalation_policy": "PT20YPA",
    }
    assert record.warnings == ()


def test_create_sends_the_documented_request() -> None:
    pd = connector(service="PWIXJZS")
    values = {
        "title": "The server is on fire.",
        "description": DOCUMENTED_DETAILS,
        "severity": "sev1",
        "priority": "p2",
        "status": "triggered",
        "escalation_policy": "PT20YPA",
    }
    with PLAYER.use_cassette("create_incident.yaml") as cassette:
        record = pd.create(values, KEY)
    pd.close()
    assert cassette.all_played  # priorities looked up, the documented POST sent
    assert record.id == "PT4KHLK" and record.correlation_key == KEY
    assert record.fields["description"] == DOCUMENTED_DETAILS
    assert record.fields["priority"] == "p2" and record.fields["status"] == "triggered"


def test_a_duplicate_key_answer_returns_the_existing_incident(pd: PagerDutyConnector) -> None:
    values = {"title": "The server is on fire.", "severity": "sev2"}
    with PLAYER.use_cassette("duplicate_key.yaml") as cassette:
        record = pd.create(values, KEY)
    assert cassette.all_played
    assert record.id == "PT4KHLK" and record.correlation_key == KEY


def test_update_sends_the_documented_request(pd: PagerDutyConnector) -> None:
    with PLAYER.use_cassette("update_incident.yaml") as cassette:
        record = pd.update("PT4KHLK", {"status": "acknowledged"})
    assert cassette.all_played
    # the documented answer happens to show the incident resolved
    assert record.fields["status"] == "resolved"
    assert record.version == "2015-10-06T21:40:23.000Z"


def test_notes_are_added_and_listed_with_their_ids(pd: PagerDutyConnector) -> None:
    with PLAYER.use_cassette("notes.yaml") as cassette:
        note = pd.add_journal("PT4KHLK", "work_notes", "Firefighters are on the scene.")
        listed = pd.list_journal("PT4KHLK")
    assert cassette.all_played
    assert (note.vendor_id, note.field, note.body, note.author, note.created_at) == (
        "PWL7QXS",
        "work_notes",
        "Firefighters are on the scene.",
        "125.greenholt.earline@graham.name",
        "2013-03-06T20:28:51.000Z",  # 15:28:51-05:00
    )
    assert [(e.vendor_id, e.created_at) for e in listed] == [
        ("PCQC25", "2013-03-06T20:28:42.000Z"),
        ("PWL7QXS", "2013-03-06T20:28:51.000Z"),
    ]


def test_documented_errors_become_typed_errors_with_pagerdutys_text(
    pd: PagerDutyConnector,
) -> None:
    with PLAYER.use_cassette("errors.yaml") as cassette:
        with pytest.raises(AuthError) as refused:
            pd.get("PAUTH01")
        with pytest.raises(AuthError) as denied:
            pd.get("PDENY01")
        with pytest.raises(RecordNotFoundError):
            pd.get("PGONE01")
        with pytest.raises(PermanentError) as invalid:
            pd.update("PT4KHLK", {"title": ""})
        with pytest.raises(RateLimitedError) as limited:
            pd.get("PBUSY01")
    assert cassette.all_played
    assert refused.value.status == 401 and "Authentication failed" in refused.value.message
    assert denied.value.status == 403 and "Access Denied" in denied.value.message
    assert invalid.value.status == 400
    assert "Invalid Input Provided: Title cannot be empty." in invalid.value.message
    assert limited.value.retry_after == 20  # ratelimit-reset
    for error in (refused, denied, invalid, limited):
        assert TOKEN not in str(error.value)


def _vector() -> tuple[dict[str, Any], bytes]:
    vector = json.loads(
        (FIXTURES / "vectors" / "pagerduty-webhook-v3-signature-vector.json").read_text()
    )
    body = (FIXTURES / "vectors" / "pagerduty-webhook-v3-signature-vector.body.txt").read_bytes()
    return vector, body


def _request(body: bytes, headers: dict[str, str]) -> WebhookRequest:
    return WebhookRequest(
        "POST", "/webhooks/prod-pd", "", {k.lower(): v for k, v in headers.items()}, body
    )


def test_the_signature_vector_verifies(pd: PagerDutyConnector) -> None:
    vector, body = _vector()
    secret = vector["secret"]
    for header in (vector["valid_header"], vector["multi_signature_header_example"]):
        pd.verify_webhook(_request(body, {"X-PagerDuty-Signature": header}), [secret], NOW)
    pd.verify_webhook(
        _request(body, {"X-PagerDuty-Signature": vector["valid_header"]}), ["old", secret], NOW
    )
    for headers in ({"X-PagerDuty-Signature": vector["invalid_header_mismatch"]}, {}):
        with pytest.raises(SignatureError):
            pd.verify_webhook(_request(body, headers), [secret], NOW)
    with pytest.raises(SignatureError):
        pd.verify_webhook(
            _request(body + b" ", {"X-PagerDuty-Signature": vector["valid_header"]}), [secret], NOW
        )


def test_the_documented_webhooks_parse(pd: PagerDutyConnector) -> None:
    delivery = yaml.safe_load((CASSETTES / "webhook_deliveries.yaml").read_text())["deliveries"][0]
    _, vector_body = _vector()
    with PLAYER.use_cassette("webhook_lookups.yaml") as cassette:
        event = pd.parse_webhook(_request(delivery["body"].encode(), delivery["headers"]))
        signed = pd.parse_webhook(_request(vector_body, {}))
    assert cassette.all_played  # the agent's email and our own user, once each
    assert event is not None and signed is not None
    assert event.delivery_id == "5ac64822-4adc-4fda-ade0-410becf0de4f"
    assert (event.event_type, event.external_id, event.external_key) == (
        "incident.priority_updated",
        "PGR0VU2",
        "2",
    )
    assert dict(event.changes) == {"priority": "p1"}
    assert event.version == event.event_time == "2020-10-02T18:45:22.169Z"
    assert (event.actor, event.by_self) == ("tenex@acme.example", False)
    assert event.correlation_key == "d3640fbd41094207a1c11e58e46b1662"
    assert not event.created and not event.journals
    assert signed.delivery_id == "01BWDWL3NYY7LUFPZCC28QUCMK"
    assert dict(signed.changes) == {"priority": "p1"}
    assert signed.version == "2021-04-26T17:36:27.458Z"
