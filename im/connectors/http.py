"""One HTTP client factory for every connector, and the typed errors of SPEC §4.

TLS verification is always on (``--ca-bundle`` adds a private CA, it never turns checks off),
proxies come from the environment, connections are pooled per client, and tests inject a
transport. httpx is imported here, lazily, so that ``im --help`` and the value maps stay cheap.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from im.errors import ImError

T = TypeVar("T")

if TYPE_CHECKING:
    import ssl

    import httpx

USER_AGENT = "im-sync/0.1"
DEFAULT_TIMEOUT = 10.0
# A Retry-After we cannot read, or none at all on a 429: wait this long.
DEFAULT_RETRY_AFTER = 30.0
MAX_ERROR_TEXT = 300


class ConnectorError(ImError):
    """A call to an external system failed. ``status`` is the HTTP status when there was one."""

    retryable = False

    def __init__(self, message: str, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


class RetryableError(ConnectorError):
    """408, 409, 425, 5xx, a timeout or a connection failure: try again later (one attempt)."""

    retryable = True


class ConnectionFailedError(RetryableError):
    """Nothing answered: refused, unresolvable, reset."""


class RequestTimeoutError(RetryableError):
    """The request went out and no answer came in time: its outcome is unknown."""


class TLSError(RetryableError):
    """The server's certificate was not trusted."""


class RateLimitedError(ConnectorError):
    """429, or 503 with Retry-After: the whole integration pauses; no attempt is charged."""

    retryable = True

    def __init__(self, message: str, retry_after: float, status: int) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class AuthError(ConnectorError):
    """401 or 403: the integration pauses until its credentials change or a test passes."""


class PermanentError(ConnectorError):
    """400, 422 or a request the vendor will never accept (no Jira transition path)."""


class RecordNotFoundError(ConnectorError):
    """404: the external record (or the API path) does not exist."""


class MalformedEventError(ImError):
    """An authentic webhook body the product cannot read."""


ErrorText = Callable[[Any], str]


def make_client(
    base_url: str,
    *,
    headers: Mapping[str, str] | None = None,
    auth: httpx.Auth | tuple[str, str] | None = None,
    ca_bundle: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """A pooled client for one integration. Never disables certificate checks."""
    import ssl

    verify: ssl.SSLContext | bool = True
    if ca_bundle:
        try:
            verify = ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(
                f"the CA bundle {ca_bundle[:200]} cannot be used ({_reason(exc)})",
                "point --ca-bundle at a readable PEM file",
            ) from None
    try:
        return _client(base_url, headers, auth, verify, timeout, transport)
    except (UnicodeEncodeError, ValueError):
        raise AuthError(
            "a credential holds characters HTTP cannot carry",
            "set the secret again with `im integration configure NAME --<secret>-file PATH`",
        ) from None


def _client(
    base_url: str,
    headers: Mapping[str, str] | None,
    auth: httpx.Auth | tuple[str, str] | None,
    verify: ssl.SSLContext | bool,
    timeout: float,
    transport: httpx.BaseTransport | None,
) -> httpx.Client:
    import httpx

    return httpx.Client(
        base_url=base_url.rstrip("/"),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})},
        auth=auth,
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        trust_env=True,
        transport=transport,
        limits=httpx.Limits(max_connections=10, max_keepalive_connections=5),
    )


def send(
    client: httpx.Client,
    method: str,
    path: str,
    error_text: ErrorText,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request and return a 2xx response; anything else raises the error SPEC §4's
    classification gives it, with the vendor's own error text (``error_text(json)``)."""
    import httpx

    target = f"{method} {path.split('?')[0]}"
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TimeoutException as exc:
        if isinstance(exc, httpx.ConnectTimeout):
            raise ConnectionFailedError(f"{target}: connection timed out") from None
        raise RequestTimeoutError(f"{target}: no answer in time") from None
    except httpx.ConnectError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "SSL" in str(exc):
            raise TLSError(
                f"{target}: the server's TLS certificate is not trusted",
                "give the CA with `im integration configure NAME --ca-bundle PATH`",
            ) from None
        raise ConnectionFailedError(f"{target}: cannot connect ({_reason(exc)})") from None
    except (httpx.LocalProtocolError, UnicodeEncodeError, ValueError):
        # the request could not even be written (a header value HTTP cannot carry); the
        # library's message quotes the header, which may be a credential: never show it
        raise AuthError(
            f"{target}: the request could not be sent (a credential holds characters HTTP "
            "cannot carry)",
            "set the secret again with `im integration configure NAME --<secret>-file PATH`",
        ) from None
    except httpx.TransportError as exc:
        raise ConnectionFailedError(f"{target}: {_reason(exc)}") from None
    if response.is_success:
        return response
    raise classify(response, target, error_text)


def classify(response: httpx.Response, target: str, error_text: ErrorText) -> ConnectorError:
    """The typed error for a non-2xx response (SPEC §4)."""
    status = response.status_code
    text = _vendor_text(response, error_text)
    message = f"{target}: {status} {text}".rstrip()
    retry_after = retry_after_seconds(response.headers)
    if status == 429 or (status == 503 and retry_after is not None):
        return RateLimitedError(message, retry_after or DEFAULT_RETRY_AFTER, status)
    if status in (401, 403):
        hint = (
            "check the credentials with `im integration test NAME`"
            if status == 401
            else "the account lacks a permission: see `im integration test NAME`"
        )
        return AuthError(message, hint, status)
    if status == 404:
        return RecordNotFoundError(message, status=status)
    if status in (408, 409, 425) or status >= 500:
        return RetryableError(message, status=status)
    return PermanentError(message, status=status)


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta seconds or an HTTP date), else PagerDuty's
    ``ratelimit-reset`` (seconds), else None."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        value = headers.get("ratelimit-reset")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    reference = now or datetime.fromtimestamp(time.time(), UTC)
    return max(0.0, (moment - reference).total_seconds())


def _vendor_text(response: httpx.Response, error_text: ErrorText) -> str:
    try:
        text = error_text(response.json())
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):  # not their shape
        plain = response.headers.get("content-type", "").startswith("text/plain")
        text = response.text if plain else ""
    if not text:
        text = response.reason_phrase or ""
    text = " ".join(str(text).split())
    return text[:MAX_ERROR_TEXT]


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def fetch_each(keys: Sequence[str], fetch: Callable[[str], T], concurrency: int) -> dict[str, T]:
    """``fetch`` of every key, up to ``concurrency`` at a time (a vendor without a batch
    read); the first error is raised once all have finished or failed."""
    if concurrency <= 1 or len(keys) <= 1:
        return {key: fetch(key) for key in keys}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(concurrency, len(keys))) as pool:
        futures = {key: pool.submit(fetch, key) for key in keys}
    return {key: future.result() for key, future in futures.items()}
