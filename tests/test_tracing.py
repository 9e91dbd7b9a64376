"""OpenTelemetry spans (SPEC §8): real traffic through the two-way world recorded by an
in-memory exporter (a span per outbound attempt, per inbound event, per reconcile run and per
item found, each with its sync.* attributes), a real `im integration reconcile` process
exporting over OTLP/HTTP to a receiver in the test, and no opentelemetry at all when no
OTEL_* variable asks for it."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from im import telemetry
from im.sim.jira import JiraSimulator
from im.sim.server import serve_in_thread
from im.store import integrations as integration_rows
from tests.test_daemon import Live
from tests.test_daemon import live as live  # the fixture
from tests.test_reconcile import drop_webhooks, run, snow_patch
from tests.two_way import Two, jira_issue, new_incident

TYPES = {"prod-snow": "servicenow", "prod-jira": "jira", "prod-pd": "pagerduty"}
FIVE = (
    "sync.integration_id",
    "sync.integration_type",
    "sync.direction",
    "sync.incident_id",
    "sync.external_id",
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_provider(provider)
    yield exporter
    telemetry.use_provider(None)
    provider.shutdown()


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def complete(span: ReadableSpan) -> bool:
    """All five sync.* attributes and the operation, none empty."""
    values = attributes(span)
    return all(values.get(key) for key in (*FIVE, "sync.operation"))


def test_every_sync_operation_has_a_span_with_its_attributes(
    two: Two, spans: InMemorySpanExporter
) -> None:
    ids = {name: str(integration_rows.find(two.db(), name)["id"]) for name in TYPES}  # type: ignore[index]
    n = new_incident(two)
    two.sync()  # created in all three; their webhooks come back as echoes
    # an agent opens a Jira issue; its webhook arrives twice
    two.sims["prod-jira"].faults.update({"duplicate_webhooks": 1})
    two.clock.advance(10)
    jira_issue(two, "Found by a human")
    two.deliver()
    two.sims["prod-jira"].faults.update({"duplicate_webhooks": 0})
    two.sync()  # INC-2 goes on to the other two
    # PagerDuty refuses every write for good
    two.sims["prod-pd"].faults.update({"permanent_error": 422})
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    two.dispatcher.step()
    # ServiceNow edits whose webhooks are lost, then found by a reconcile run
    drop_webhooks(two, "prod-snow")
    two.clock.advance(30)
    snow_patch(two, n, {"short_description": "agent title"})  # the platform owns it: push
    snow_patch(two, n, {"state": "2"})  # only ServiceNow moved: pull
    report = run(two, "prod-snow", "--auto-heal")

    every = spans.get_finished_spans()
    assert {s.name for s in every} == {
        "sync.outbound",
        "sync.inbound",
        "sync.reconcile",
        "sync.reconcile.item",
    }
    for span in every:  # whose, which way and what: always
        values = attributes(span)
        name = next(k for k, v in TYPES.items() if v == values["sync.integration_type"])
        assert values["sync.integration_id"] == ids[name], values
        assert values["sync.direction"] in ("outbound", "inbound"), values

    # 1. a span per outbound attempt: three creates, then updates, PagerDuty's failing
    outbound = named(spans, "sync.outbound")
    assert all(attributes(s)["sync.direction"] == "outbound" for s in outbound)
    assert all(complete(s) for s in outbound)
    creates = {
        (attributes(s)["sync.integration_type"], attributes(s)["sync.incident_id"]): attributes(s)
        for s in outbound
        if attributes(s)["sync.operation"] == "create"
    }
    # INC-1 everywhere; INC-2, made from the Jira issue, to the other two
    assert set(creates) == {(kind, f"INC-{n}") for kind in TYPES.values()} | {
        ("servicenow", "INC-2"),
        ("pagerduty", "INC-2"),
    }
    for name, kind in TYPES.items():
        assert creates[kind, f"INC-{n}"]["sync.external_id"] == two.external_id(name, n)
    [failed] = [s for s in outbound if s.status.status_code is StatusCode.ERROR]
    assert attributes(failed)["sync.integration_type"] == "pagerduty"
    assert attributes(failed)["sync.operation"] == "update"
    assert "422" in (failed.status.description or ""), failed.status.description
    assert "im-integration-token" not in (failed.status.description or "")

    # 2. a span per inbound event, with its vendor event type and outcome
    inbound = named(spans, "sync.inbound")
    assert all(attributes(s)["sync.direction"] == "inbound" for s in inbound)
    outcomes = {attributes(s)["sync.outcome"] for s in inbound}
    assert {"echo", "applied", "duplicate"} <= outcomes, outcomes
    [adopted] = [
        s
        for s in inbound
        if attributes(s)["sync.outcome"] == "applied"
        and attributes(s)["sync.integration_type"] == "jira"
    ]
    assert complete(adopted)
    assert attributes(adopted)["sync.operation"] == "jira:issue_created"
    assert attributes(adopted)["sync.incident_id"] == "INC-2"
    assert attributes(adopted)["sync.external_id"] == two.external_id("prod-jira", 2)
    [duplicate] = [s for s in inbound if attributes(s)["sync.outcome"] == "duplicate"]
    assert attributes(duplicate)["sync.external_id"] == attributes(adopted)["sync.external_id"]
    assert all(complete(s) for s in inbound if attributes(s)["sync.outcome"] == "echo")

    # 3. a span per reconcile run, and a child per item found, in the item's direction
    [reconcile] = named(spans, "sync.reconcile")
    values = attributes(reconcile)
    assert values["sync.integration_id"] == ids["prod-snow"]
    assert values["sync.integration_type"] == "servicenow"
    assert (values["sync.operation"], values["sync.direction"]) == ("reconcile", "inbound")
    assert (values["sync.run_id"], values["sync.mode"]) == (report["run_id"], "auto-heal")
    assert (values["sync.checked"], values["sync.discrepancies"]) == (2, 2)  # INC-1 and INC-2
    assert reconcile.status.status_code is StatusCode.UNSET
    items = named(spans, "sync.reconcile.item")
    assert reconcile.context is not None
    assert all(s.parent and s.parent.span_id == reconcile.context.span_id for s in items)
    assert all(complete(s) for s in items)
    assert {
        (
            attributes(s)["sync.field"],
            attributes(s)["sync.operation"],
            attributes(s)["sync.direction"],
        )
        for s in items
    } == {("title", "push", "outbound"), ("status", "pull", "inbound")}
    for item in items:
        assert attributes(item)["sync.incident_id"] == f"INC-{n}"
        assert attributes(item)["sync.external_id"] == two.external_id("prod-snow", n)


def test_inbound_events_that_fail_or_wait_for_a_retry_say_what_they_are_about(
    two: Two, spans: InMemorySpanExporter
) -> None:
    n = new_incident(two)
    two.sync()
    issue = two.external_id("prod-jira", n)
    # an agent pastes a tab into the linked issue's summary: it fails to apply
    two.clock.advance(5)
    with two.agent("prod-jira") as agent:
        agent.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": "Checkout\tAPI"}})
    spans.clear()
    two.deliver()
    [failed] = named(spans, "sync.inbound")
    assert failed.status.status_code is StatusCode.ERROR
    assert attributes(failed)["sync.outcome"] == "failed"
    assert complete(failed)
    assert attributes(failed)["sync.operation"] == "jira:issue_updated"
    assert attributes(failed)["sync.incident_id"] == f"INC-{n}"
    assert attributes(failed)["sync.external_id"] == issue

    # an issue made by hand whose create webhook is lost: reading it fails (Jira answers
    # 500), so its edit waits for a retry, then goes to the DLQ
    jira = two.sims["prod-jira"]
    jira.faults.update({"drop_webhooks": 1})
    made = jira_issue(two, "made by hand")
    jira.faults.update({"drop_webhooks": 0})
    two.clock.advance(5)
    with two.agent("prod-jira") as agent:
        agent.put(f"/rest/api/3/issue/{made}", json={"fields": {"summary": "edited"}})
        made_id = agent.get(f"/rest/api/3/issue/{made}").json()["id"]
    jira.faults.update({"error_rate": 1})
    spans.clear()
    two.deliver()
    for wait in (30, 120, 480, 1800):
        two.clock.advance(wait)
        two.applier.step()
    tries = named(spans, "sync.inbound")
    assert [attributes(s)["sync.outcome"] for s in tries] == ["retry"] * 4 + ["dead"]
    for span in tries:
        assert span.status.status_code is StatusCode.ERROR
        assert attributes(span)["sync.operation"] == "jira:issue_updated"
        assert attributes(span)["sync.external_id"] == made_id
        assert "sync.incident_id" not in attributes(span)  # not linked: no incident


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, []),
    ],
)
def test_the_exporters_follow_the_otel_variables(
    environ: dict[str, str], wanted: list[str]
) -> None:
    assert telemetry.exporters(environ) == wanted


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector: records each POST /v1/traces body."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path == "/v1/traces":
            self.bodies.append(body)
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []
    handler = type("Handler", (Receiver,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def without_otel() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def reconcile_process(db_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "im", "--db", str(db_path), "integration", "reconcile",
         "prod-jira", "--format", "json"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_a_real_reconcile_exports_its_spans_over_otlp_http(
    live: Live, db_path: Path, collector: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = collector
    with serve_in_thread(JiraSimulator(search_lag=0)) as jira:
        live.ok(
            "integration", "create", "prod-jira", "--type", "jira", "--url", jira.url,
            "--email", "im-integration@example.com", "--project", "OPS",
            "--direction", "bidirectional", env={"IM_API_TOKEN": "im-integration-token"},
        )  # fmt: skip
        made = httpx.post(
            f"{jira.url}/rest/api/3/issue",
            auth=("agent@example.com", "agent-token"),
            json={
                "fields": {
                    "project": {"key": "OPS"},
                    "issuetype": {"name": "Incident"},
                    "summary": "Found by a human",
                }
            },
        )
        assert made.status_code == 201, made.text
        done = reconcile_process(
            db_path, {**without_otel(), "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [discrepancy] = report["discrepancies"]
    assert discrepancy["action"] == "create-platform"

    exported = []
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "im"
            for scope_spans in resource_spans.scope_spans:
                exported.extend(scope_spans.spans)
    spans = {
        s.name: (s, {a.key: a.value.string_value or a.value.int_value for a in s.attributes})
        for s in exported
    }
    assert set(spans) == {"sync.reconcile", "sync.reconcile.item"}
    run_span, run_values = spans["sync.reconcile"]
    item_span, item_values = spans["sync.reconcile.item"]
    assert run_values["sync.integration_type"] == "jira"
    assert run_values["sync.integration_id"] == "1"
    assert run_values["sync.operation"] == "reconcile"
    assert run_values["sync.direction"] == "inbound"
    assert run_values["sync.run_id"] == report["run_id"]
    assert run_values["sync.mode"] == "dry-run"
    assert (run_values["sync.checked"], run_values["sync.discrepancies"]) == (1, 1)
    assert item_span.parent_span_id == run_span.span_id
    assert item_span.trace_id == run_span.trace_id
    assert item_values["sync.operation"] == "create-platform"
    assert item_values["sync.direction"] == "inbound"
    assert item_values["sync.external_id"] == discrepancy["external_id"]
    assert "sync.incident_id" not in item_values  # no incident yet


def test_the_console_exporter_writes_to_stderr_never_stdout(live: Live, db_path: Path) -> None:
    with serve_in_thread(JiraSimulator(search_lag=0)) as jira:
        live.ok(
            "integration", "create", "prod-jira", "--type", "jira", "--url", jira.url,
            "--email", "im-integration@example.com", "--project", "OPS",
            env={"IM_API_TOKEN": "im-integration-token"},
        )  # fmt: skip
        done = reconcile_process(
            db_path,
            {**without_otel(), "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "im-ops"},
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["discrepancies"] == []  # stdout is the report alone
    assert '"sync.reconcile"' in done.stderr
    assert '"service.name": "im-ops"' in done.stderr


def test_without_otel_variables_opentelemetry_is_never_imported() -> None:
    code = (
        "import im.cli, sys; print('opentelemetry' in ' '.join(sys.modules))\n"
        "from im import telemetry\n"
        "from im.model import Direction\n"
        "with telemetry.span('sync.outbound', {'id': 1, 'type': 'jira'}, Direction.OUTBOUND)"
        " as span:\n"
        "    span.set(incident_id='INC-1')\n"
        "    telemetry.current().fail('no')\n"
        "print('opentelemetry' in ' '.join(sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=without_otel()
    )
    assert out.stdout.split() == ["False", "False"]
