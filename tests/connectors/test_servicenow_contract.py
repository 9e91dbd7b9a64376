"""The ServiceNow connector against ServiceNow's documented exchanges: vcrpy cassettes built by
hand from the documented examples (fixtures/cassettes/servicenow, each naming its source),
played back with a real httpx client and nothing recorded. A request the connector sends must
match the documented one (method, URL, query, JSON body, Basic auth and Accept)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import vcr

from im.config.mapping import mappings
from im.connectors.base import ConnectorConfig, WebhookRequest
from im.connectors.http import AuthError, RateLimitedError, RecordNotFoundError
from im.connectors.servicenow import ServiceNowConnector
from im.errors import SignatureError

FIXTURES = Path(__file__).parent.parent.parent / "fixtures"
CASSETTES = FIXTURES / "cassettes" / "servicenow"
URL = "https://dev112093.service-now.com"
SYS_ID = "1c741bd70b2322007518478d83673af3"
OTHER_SYS_ID = "9d385017c611228701d22104cc95c371"  # INC0010001 of create_incident.yaml
KEY = "im:0f3c2a9e-contract:INC-60"
PASSWORD = "contract-password"


def _json_body(r1: Any, r2: Any) -> None:
    if r1.method in ("POST", "PATCH", "PUT"):
        assert r2.body is not None and json.loads(r1.body) == json.loads(r2.body)


def _servicenow_headers(r1: Any, r2: Any) -> None:
    names = ["Authorization", "Accept"] + (["Content-Type"] if r1.body else [])
    for name in names:
        assert r1.headers.get(name) == r2.headers.get(name), name


PLAYER = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="none",
    match_on=["method", "scheme", "host", "port", "path", "query", "json_body", "sn_headers"],
)
PLAYER.register_matcher("json_body", _json_body)
PLAYER.register_matcher("sn_headers", _servicenow_headers)


def connector(password: str = PASSWORD, **settings: str) -> ServiceNowConnector:
    chosen = {"username": "im-integration", **settings}
    return ServiceNowConnector(
        ConnectorConfig(
            name="prod-snow",
            url=URL,
            settings=chosen,
            secrets={"password": password},
            fields=mappings("servicenow", chosen, {}),
        )
    )


@pytest.fixture
def snow() -> Iterator[ServiceNowConnector]:
    connection = connector()
    yield connection
    connection.close()


def test_get_parses_the_documented_incident(snow: ServiceNowConnector) -> None:
    with PLAYER.use_cassette("get_incident.yaml") as cassette:
        record = snow.get(SYS_ID)
    assert cassette.all_played
    assert (record.id, record.key) == (SYS_ID, "INC0000060")
    assert record.url == f"{URL}/incident.do?sys_id={SYS_ID}"
    assert record.version == "000000000015"
    assert record.updated_at == "2016-12-14T02:46:44.000Z"
    assert record.created_at == "2016-12-12T15:19:57.000Z"  # sys_created_on, UTC
    assert record.updated_by == "employee"
    assert record.correlation_key is None
    assert dict(record.fields) == {
        "title": "Unable to connect to email",
        "description": "I am unable to connect to the email server. It appears to be down.",
        "severity": "sev3",  # priority 3 (impact 2, urgency 2)
        "status": "closed",  # state 7
        "assigned_to": "beth.anglin@example.com",
    }
    assert record.warnings == ()


def test_create_sends_the_documented_request(snow: ServiceNowConnector) -> None:
    values = {
        "title": "Unable to connect to email",
        "description": "I am unable to connect to the email server. It appears to be down.",
        "severity": "sev3",
        "status": "triggered",
        "assigned_to": "beth.anglin@example.com",
    }
    with PLAYER.use_cassette("create_incident.yaml") as cassette:
        record = snow.create(values, KEY)
    assert cassette.all_played
    assert (record.id, record.key, record.version) == (
        "9d385017c611228701d22104cc95c371",
        "INC0010001",
        "000000000000",
    )
    assert record.correlation_key == KEY
    assert record.created_at == "2016-12-12T15:19:57.000Z"
    assert dict(record.fields) == {**values, "assigned_to": "beth.anglin@example.com"}


def test_update_resolves_with_the_close_code_and_notes() -> None:
    snow = connector(close_notes="This incident is resolved.")
    with PLAYER.use_cassette("update_incident.yaml") as cassette:
        record = snow.update(SYS_ID, {"status": "resolved"})
    snow.close()
    assert cassette.all_played
    assert record.fields["status"] == "resolved"
    assert record.version == "000000000016"
    assert record.updated_by == "im-integration"


def test_a_work_note_is_appended_and_found_in_sys_journal_field() -> None:
    snow = connector(username="beth.anglin")
    text = "Restarted the mail relay. [synced from PagerDuty note P2LA89X]"
    with PLAYER.use_cassette("work_notes.yaml") as cassette:
        entry = snow.add_journal(SYS_ID, "work_notes", text)
        listed = snow.list_journal(SYS_ID)
        batched = snow.list_journals([SYS_ID, OTHER_SYS_ID])
    snow.close()
    assert cassette.all_played
    assert entry.vendor_id == "9a1d7e3e1b2a4210a1b2c3d4e5f60718"
    assert (entry.field, entry.body, entry.author, entry.created_at) == (
        "work_notes",
        text,
        "beth.anglin",
        "2016-12-14T02:40:02.000Z",
    )
    assert listed == [entry]
    assert batched == {SYS_ID: [entry], OTHER_SYS_ID: []}


def test_documented_errors_become_typed_errors_with_servicenows_text() -> None:
    snow, wrong = connector(), connector(password="wrong-password")
    with PLAYER.use_cassette("errors.yaml") as cassette:
        with pytest.raises(RecordNotFoundError) as missing:
            snow.get("0" * 32)
        with pytest.raises(AuthError) as refused:
            wrong.get(SYS_ID)
        with pytest.raises(AuthError) as forbidden:
            snow.update(SYS_ID, {"title": "Unable to connect to email (eu-west)"})
        with pytest.raises(RateLimitedError) as limited:
            snow.get(SYS_ID)
    snow.close()
    wrong.close()
    assert cassette.all_played
    assert "No Record found: Record doesn't exist or ACL restricts" in missing.value.message
    assert refused.value.status == 401
    assert "User Not Authenticated: Required to provide Auth information" in refused.value.message
    assert "wrong-password" not in refused.value.message
    assert forbidden.value.status == 403
    assert "ACL Exception Update Failed due to security constraints" in forbidden.value.message
    assert limited.value.retry_after == 42
    assert "Rate limit exceeded" in limited.value.message


def test_the_standard_webhooks_vector_verifies(snow: ServiceNowConnector) -> None:
    vector = json.loads(
        (FIXTURES / "vectors" / "servicenow-standard-webhooks-vector.json").read_text()
    )
    headers = {k.lower(): v for k, v in vector["headers"].items()}
    request = WebhookRequest("POST", "/webhooks/prod-snow", "", headers, vector["body"].encode())
    moment = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    snow.verify_webhook(request, ["whsec_bm90LXRoaXMtb25l", vector["secret"]], moment)
    with pytest.raises(SignatureError):
        snow.verify_webhook(request, ["whsec_bm90LXRoaXMtb25l"], moment)
    tampered = WebhookRequest("POST", request.path, "", headers, request.body.replace(b"2", b"3"))
    with pytest.raises(SignatureError):
        snow.verify_webhook(tampered, [vector["secret"]], moment)


def test_the_business_rule_delivery_verifies_and_parses(snow: ServiceNowConnector) -> None:
    delivery = json.loads((CASSETTES / "business_rule_delivery.json").read_text())
    request = WebhookRequest(
        "POST", "/webhooks/prod-snow", "", delivery["headers"], delivery["body"].encode()
    )
    sent = datetime.fromtimestamp(int(delivery["headers"]["webhook-timestamp"]), UTC)
    snow.verify_webhook(request, [delivery["secret"]], sent)
    event = snow.parse_webhook(request)
    assert event is not None
    assert (event.delivery_id, event.event_type, event.external_id, event.external_key) == (
        "msg_2f0a3c5e8b1d4f6a9c7e0b2d4f6a8c1e",
        "incident.updated",
        SYS_ID,
        "INC0000060",
    )
    assert (event.version, event.event_time, event.actor) == (
        "000000000015",
        "2016-12-14T02:46:44.000Z",
        "employee",
    )
    assert not event.by_self and not event.created and event.correlation_key is None
    assert dict(event.changes) == {"status": "closed"}  # close code and notes are not synced
    assert [(j.vendor_id, j.field, j.author) for j in event.journals] == [
        ("9a1d7e3e1b2a4210a1b2c3d4e5f60718", "work_notes", "employee")
    ]


def test_webhook_setup_prints_the_rule_that_builds_this_payload(snow: ServiceNowConnector) -> None:
    text = snow.webhook_setup("https://im.example.com/webhooks/prod-snow", None)
    delivery = json.loads((CASSETTES / "business_rule_delivery.json").read_text())
    body = json.loads(delivery["body"])
    at = text.index("JSON.stringify({")
    for key in body:  # every key of the payload is built by the script, in this order
        at = text.index(f"\n            {key}: ", at) + 1
    assert 'var URL = "https://im.example.com/webhooks/prod-snow";' in text
    assert "im.prod-snow.webhook_secret" in text and "password2" in text
    assert "Value: <webhook-secret>" in text
    assert "generateMac(" in text and "'HmacSHA256'" in text
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert f"setRequestHeader('{header}'" in text
    shown = snow.webhook_setup("https://im.example.com/webhooks/prod-snow", "whsec_c2VjcmV0")
    assert "Value: whsec_c2VjcmV0" in shown
