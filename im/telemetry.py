"""OpenTelemetry spans for the sync operations (SPEC §8).

Off unless the standard ``OTEL_*`` variables ask for an exporter: ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) sends OTLP over HTTP; ``OTEL_TRACES_EXPORTER``
names ``otlp`` and/or ``console`` (``none``, or ``OTEL_SDK_DISABLED=true``, keeps tracing
off). Off costs nothing: opentelemetry is not even imported. On, the SDK is set up once per
process (a batch processor per exporter; the exporter reads its own ``OTEL_EXPORTER_OTLP_*``
settings) and flushed when the process exits.

Every span carries ``sync.integration_id``, ``sync.integration_type``, ``sync.direction``
(``outbound`` | ``inbound``) and ``sync.operation``, and ``sync.incident_id`` and
``sync.external_id`` when there is one. A failed operation's span has status ERROR with the
operation's error message, which is a one-liner that never holds a secret.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from im import __version__
from im.model import Direction

if TYPE_CHECKING:
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer, TracerProvider

NAME = "im"
EXPORTERS = ("otlp", "console")

Value = str | int | None

_lock = threading.Lock()
_decided = False
_provider: TracerProvider | None = None


def exporters(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the ``OTEL_*`` variables ask for; empty when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [
        n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()
    ]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if not named and endpoint:
        named = ["otlp"]
    return [n for n in named if n in EXPORTERS]


def _configured() -> TracerProvider | None:
    """The provider the environment asks for (once per process), or None."""
    global _decided, _provider
    with _lock:
        if not _decided:
            _provider = _from_environment(exporters())
            _decided = True
        return _provider


def _from_environment(names: list[str]) -> TracerProvider | None:
    if not names:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read here; the name defaults to im
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: NAME}))
    # shutdown_on_exit: an atexit hook flushes what the batch processors still hold
    provider = SdkTracerProvider(resource=resource, shutdown_on_exit=True)
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout is for data
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def use_provider(provider: TracerProvider | None) -> None:
    """Send im's spans to ``provider`` from now on, whatever the environment says (tests
    install one with an in-memory exporter); None turns tracing off. The global provider is
    left alone: it can only be set once per process."""
    global _decided, _provider
    with _lock:
        _provider, _decided = provider, True


def tracer() -> Tracer:
    """im's tracer: the configured provider's, else the API's no-op tracer."""
    from opentelemetry import trace

    provider = _configured()
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(NAME, __version__)


class Span:
    """A span as the sync code uses it: attributes and a failure. Does nothing when
    tracing is off."""

    def __init__(self, span: OtelSpan | None = None) -> None:
        self._span = span
        self.failed = False

    def set(self, **attributes: Value) -> None:
        """Set ``sync.<name>`` for each attribute given; None and "" are left out."""
        if self._span is None:
            return
        self._span.set_attributes(
            {
                f"sync.{name}": value if isinstance(value, int) else str(value)
                for name, value in attributes.items()
                if value is not None and value != ""
            }
        )

    def fail(self, message: str) -> None:
        """Status ERROR with ``message`` (a safe one-liner: never a secret)."""
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, message))
        self.failed = True


def about(integration: Mapping[str, Any]) -> dict[str, Value]:
    """The integration's attributes: its id and type."""
    return {"integration_id": str(integration["id"]), "integration_type": integration["type"]}


@contextmanager
def span(
    name: str,
    integration: Mapping[str, Any] | None,
    direction: Direction,
    operation: str | None = None,
    **attributes: Value,
) -> Iterator[Span]:
    """A span named ``name`` around the block, the current span inside it, with the
    integration's attributes, ``sync.direction``, ``sync.operation`` and ``sync.<name>`` for
    each other attribute. An exception that leaves the block marks it failed with its type
    only (its message could carry anything)."""
    if _configured() is None:
        yield Span()
        return
    with tracer().start_as_current_span(
        name, record_exception=False, set_status_on_exception=False
    ) as current:
        handle = Span(current)
        handle.set(
            **(about(integration) if integration is not None else {}),
            direction=direction.value,
            operation=operation,
            **attributes,
        )
        try:
            yield handle
        except BaseException as exc:
            if not handle.failed:
                handle.fail(type(exc).__name__)
            raise


def current() -> Span:
    """The span of the operation under way, to add what is learnt along the way."""
    if _configured() is None:
        return Span()
    from opentelemetry import trace

    return Span(trace.get_current_span())
