"""The shared client: SPEC §4's classification of every outcome, TLS always verified, the
vendor's error text kept (and bounded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from im.connectors import http
from im.sim.server import free_port


def _error_text(body: Any) -> str:
    return str(body["error"])


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return http.make_client("https://vendor.example", transport=httpx.MockTransport(handler))


def _fail(status: int, headers: dict[str, str] | None = None, body: Any = None) -> Exception:
    client = _client(
        lambda r: httpx.Response(status, headers=headers, json=body or {"error": "nope"})
    )
    with pytest.raises(http.ConnectorError) as caught:
        http.send(client, "GET", "/thing?secret=1", _error_text)
    return caught.value


@pytest.mark.parametrize("status", [408, 409, 425, 500, 502, 503, 504])
def test_retryable_statuses_consume_an_attempt(status: int) -> None:
    error = _fail(status)
    assert type(error) is http.RetryableError
    assert error.status == status and error.retryable


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "12"}, 12.0),
        ({}, http.DEFAULT_RETRY_AFTER),
        ({"ratelimit-reset": "40"}, 40.0),
        ({"Retry-After": "soon"}, http.DEFAULT_RETRY_AFTER),
    ],
)
def test_429_pauses_for_the_vendors_wait(headers: dict[str, str], wait: float) -> None:
    error = _fail(429, headers)
    assert isinstance(error, http.RateLimitedError)
    assert error.retry_after == wait


def test_503_with_retry_after_is_a_pause_not_an_attempt() -> None:
    error = _fail(503, {"Retry-After": "5"})
    assert isinstance(error, http.RateLimitedError) and error.retry_after == 5


def test_retry_after_as_an_http_date() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 27, 9, 0, 0, tzinfo=UTC)
    assert http.retry_after_seconds({"retry-after": "Fri, 27 Nov 2026 09:01:30 GMT"}, now) == 90


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures(status: int) -> None:
    error = _fail(status)
    assert isinstance(error, http.AuthError) and error.hint


@pytest.mark.parametrize("status", [400, 422, 405, 413])
def test_permanent_failures_keep_the_vendors_text(status: int) -> None:
    error = _fail(status, body={"error": "Field 'priority' is required"})
    assert isinstance(error, http.PermanentError)
    assert error.message == f"GET /thing: {status} Field 'priority' is required"


def test_404_is_its_own_error() -> None:
    assert isinstance(_fail(404), http.RecordNotFoundError)


def test_error_text_is_one_bounded_line_and_the_query_is_not_echoed() -> None:
    error = _fail(400, body={"error": "line one\nline two " + "x" * 1000})
    assert "\n" not in error.message and len(error.message) < 400
    assert "secret" not in error.message


def test_a_body_that_is_not_the_vendors_shape_falls_back_to_the_reason() -> None:
    html = {"content-type": "text/html"}
    client = _client(lambda r: httpx.Response(500, headers=html, content=b"<html>oops</html>"))
    with pytest.raises(http.RetryableError, match="500 Internal Server Error"):
        http.send(client, "GET", "/x", _error_text)


def test_a_plain_text_error_is_kept() -> None:
    text = "Basic authentication with passwords is deprecated."
    client = _client(lambda r: httpx.Response(401, text=text))
    with pytest.raises(http.AuthError) as caught:
        http.send(client, "GET", "/x", _error_text)
    assert caught.value.message == f"GET /x: 401 {text}"


def test_a_read_timeout_is_an_unknown_outcome() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(http.RequestTimeoutError):
        http.send(_client(hang), "POST", "/x", _error_text)


def test_a_closed_port_is_a_connection_failure() -> None:
    client = http.make_client(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(http.ConnectionFailedError, match="cannot connect"):
        http.send(client, "GET", "/x", _error_text)


@pytest.fixture
def tls_server(tmp_path: Path):
    import threading
    import time

    import uvicorn

    from im.sim.server import self_signed_certificate

    async def ok(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/x", ok)]),
            port=port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            log_level="error",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"https://127.0.0.1:{port}", cert
    server.should_exit = True
    thread.join(5)


def test_tls_is_verified_and_a_ca_bundle_makes_a_private_ca_trusted(tls_server) -> None:
    url, cert = tls_server
    with (
        http.make_client(url) as client,
        pytest.raises(http.TLSError, match="not trusted") as caught,
    ):
        http.send(client, "GET", "/x", _error_text)
    assert "--ca-bundle" in (caught.value.hint or "")
    with http.make_client(url, ca_bundle=str(cert)) as client:
        assert http.send(client, "GET", "/x", _error_text).json() == {"ok": True}


def test_a_credential_http_cannot_carry_is_an_auth_error_that_never_quotes_it(
    tls_server: tuple[str, Path],
) -> None:
    url, cert = tls_server
    for secret in ("SECRET-1\r\nX-Evil: 1", "SECRET-2-\u20ac"):
        headers = {"Authorization": f"Token token={secret}"}
        with (
            pytest.raises(http.AuthError) as caught,
            http.make_client(url, headers=headers, ca_bundle=str(cert)) as client,
        ):
            http.send(client, "GET", "/x", _error_text)
        assert "SECRET" not in str(caught.value)
