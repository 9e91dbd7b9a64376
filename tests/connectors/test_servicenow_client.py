"""ServiceNow's own Python client (PySNC 1.2) against the simulator on a real loopback socket
over HTTPS (PySNC refuses http:// instances): the incident operations the product uses."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pysnc
import pytest
from pysnc.exceptions import AuthenticationException

from im.clock import FrozenClock
from im.sim.server import Served, serve_in_thread
from im.sim.servicenow import ServiceNowSimulator


@pytest.fixture
def served(
    clock: FrozenClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServiceNowSimulator, Served]]:
    # requests lets these variables override a session's own `verify` (PySNC sets the
    # simulator's certificate there)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    sim = ServiceNowSimulator(clock=clock)
    with serve_in_thread(sim, tls_dir=tmp_path / "tls") as server:
        yield sim, server


Connect = Callable[..., pysnc.ServiceNowClient]


@pytest.fixture
def connect(served: tuple[ServiceNowSimulator, Served]) -> Iterator[Connect]:
    """PySNC clients for the served simulator; their sessions are closed before the server
    stops (uvicorn waits for open keep-alive connections)."""
    _, server = served
    made: list[pysnc.ServiceNowClient] = []

    def make(
        user: str = "im-integration", password: str = "im-integration"
    ) -> pysnc.ServiceNowClient:
        made.append(pysnc.ServiceNowClient(server.url, (user, password), verify=str(server.cafile)))
        return made[-1]

    yield make
    # a response kept alive by a caught exception's traceback still holds its connection
    gc.collect()
    for snow in made:
        snow.session.close()


def test_create_get_update_and_journal(
    served: tuple[ServiceNowSimulator, Served], connect: Connect
) -> None:
    sim, _ = served
    snow = connect()
    incident = snow.GlideRecord("incident")
    incident.initialize()
    incident.short_description = "Mail relay rejects outbound mail"
    incident.impact = "1"
    incident.urgency = "2"
    incident.correlation_id = "im:client-test:INC-1"
    sys_id = incident.insert()
    assert sys_id is not None and len(str(sys_id)) == 32
    assert incident.get_value("number") == "INC0010001"
    assert incident.get_value("priority") == "2"  # derived from impact and urgency

    fetched = snow.GlideRecord("incident")
    assert fetched.get(str(sys_id))
    assert fetched.get_value("short_description") == "Mail relay rejects outbound mail"
    assert fetched.get_display_value("state") == "New"
    assert fetched.get_display_value("priority") == "2 - High"
    assert fetched.get_display_value("opened_by") == "im integration"  # a reference

    fetched.state = "2"
    fetched.work_notes = "Looking at the relay"
    assert fetched.update() is not None
    assert fetched.get_value("state") == "2"
    assert fetched.get_value("work_notes") == ""  # journals read back empty
    assert "Looking at the relay" in fetched.get_display_value("work_notes")
    assert sim.incident(str(sys_id))["sys_mod_count"] == "1"

    notes = snow.GlideRecord("sys_journal_field")
    notes.add_query("element_id", str(sys_id))
    notes.add_query("element", "work_notes")
    notes.query()
    assert [n.get_value("value") for n in notes] == ["Looking at the relay"]
    assert [n.get_value("sys_created_by") for n in notes] == ["im-integration"]

    by_number = snow.GlideRecord("incident")
    assert by_number.get("number", "INC0010001")
    assert by_number.get_value("sys_id") == str(sys_id)
    assert by_number.get_value("correlation_id") == "im:client-test:INC-1"


def test_queries_page_through_every_record(connect: Connect) -> None:
    snow = connect()
    for n in range(5):
        row = snow.GlideRecord("incident")
        row.initialize()
        row.short_description = f"batch {n}"
        row.insert()
    other = snow.GlideRecord("incident")
    other.initialize()
    other.short_description = "unrelated"
    other.insert()

    batch = snow.GlideRecord("incident", batch_size=2)
    batch.add_query("short_description", "STARTSWITH", "batch")
    batch.order_by("number")
    batch.fields = ["number", "short_description"]
    batch.query()
    assert batch.get_row_count() == 5
    assert [r.get_value("short_description") for r in batch] == [f"batch {n}" for n in range(5)]

    newest = snow.GlideRecord("incident")
    newest.add_encoded_query("short_descriptionLIKEbatch^ORshort_description=unrelated")
    newest.order_by_desc("number")
    newest.limit = 1
    newest.query()
    assert [r.get_value("short_description") for r in newest] == ["unrelated"]


def test_wrong_password_is_an_authentication_error(connect: Connect) -> None:
    snow = connect("agent", "not-the-password")
    incidents = snow.GlideRecord("incident")
    with pytest.raises(AuthenticationException) as caught:
        incidents.query()
    assert "User Not Authenticated" in str(caught.value)
