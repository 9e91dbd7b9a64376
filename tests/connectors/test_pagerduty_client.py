"""PagerDuty's own Python client (``pagerduty`` 7) against the simulator on a real loopback
socket. The client refuses any base URL that is not https://, so the simulator serves TLS with
a self-signed certificate the client is told to trust."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pagerduty
import pytest

from im.sim.pagerduty import PagerDutySimulator
from im.sim.server import serve_in_thread

SERVICE = {"id": "PSVC001", "type": "service_reference"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[pagerduty.RestApiV2Client]:
    sim = PagerDutySimulator()
    with serve_in_thread(sim, tls_dir=tmp_path / "tls") as served:
        assert served.url.startswith("https://") and served.cafile is not None
        session = pagerduty.RestApiV2Client(
            "im-integration-token",
            default_from="im-integration@example.com",
            base_url=served.url,
            verify=ssl.create_default_context(cafile=str(served.cafile)),
        )
        yield session
        session.close()
    sim.shutdown()


def test_the_official_client_works_the_incidents(client: pagerduty.RestApiV2Client) -> None:
    created = client.rpost(
        "/incidents",
        json={
            "type": "incident",
            "title": "The server is on fire.",
            "service": SERVICE,
            "urgency": "high",
            "incident_key": "client-1",
            "body": {"type": "incident_body", "details": "Disk full."},
        },
    )
    assert created["status"] == "triggered" and created["incident_key"] == "client-1"

    fetched = client.rget(f"/incidents/{created['id']}", params={"include[]": ["body"]})
    assert fetched["title"] == "The server is on fire."
    assert fetched["body"]["details"] == "Disk full."

    acknowledged = client.rput(
        created, json={"type": "incident_reference", "status": "acknowledged"}
    )
    assert acknowledged["status"] == "acknowledged"
    bob = client.find("users", "bob@example.com", attribute="email")
    assert bob is not None
    assigned = client.rput(
        created,
        json={
            "type": "incident_reference",
            "assignments": [{"assignee": {"id": bob["id"], "type": "user_reference"}}],
            "priority": "P2",
        },
    )
    assert [a["assignee"]["id"] for a in assigned["assignments"]] == [bob["id"]]
    assert assigned["priority"]["summary"] == "P2"

    note = client.rpost(f"/incidents/{created['id']}/notes", json={"content": "On it."})
    assert note["content"] == "On it." and note["id"]
    notes = client.rget(f"/incidents/{created['id']}/notes")
    assert [n["id"] for n in notes] == [note["id"]]

    with pytest.raises(pagerduty.HttpError) as caught:
        client.rpost(
            "/incidents",
            json={
                "type": "incident",
                "title": "again",
                "service": SERVICE,
                "incident_key": "client-1",
            },
        )
    refused = caught.value.response
    assert refused is not None and refused.status_code == 400
    assert "dedup key" in refused.text


def test_the_official_client_pages_through_the_listing(client: pagerduty.RestApiV2Client) -> None:
    for n in range(5):
        client.rpost(
            "/incidents",
            json={"type": "incident", "title": f"incident {n}", "service": SERVICE},
        )
    listed = list(
        client.iter_all(
            "/incidents",
            params={"service_ids": [SERVICE["id"]], "date_range": "all"},
            page_size=2,  # three pages
        )
    )
    assert [i["title"] for i in listed] == [f"incident {n}" for n in range(5)]
    assert client.get_total("/incidents", params={"date_range": "all"}) == 5


def test_the_official_client_creates_a_webhook_subscription(
    client: pagerduty.RestApiV2Client,
) -> None:
    created = client.rpost(
        "/webhook_subscriptions",
        json={
            "type": "webhook_subscription",
            "delivery_method": {"type": "http_delivery_method", "url": "https://im.example/hook"},
            "events": ["incident.triggered", "incident.annotated"],
            "filter": SERVICE,
        },
    )
    assert created["delivery_method"]["secret"]
    listed = client.list_all("/webhook_subscriptions")
    assert [s["id"] for s in listed] == [created["id"]]
    assert listed[0]["delivery_method"]["secret"] is None
