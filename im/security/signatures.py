"""Webhook signatures: pure functions of (secret, headers, body, now), for checking what the
vendors send and, in the simulators, for producing it (SPEC §5).

Every check compares MACs in constant time, accepts any of several secrets (rotation) and
raises ``SignatureError`` with a reason that never quotes a secret or a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote

from im.errors import SignatureError

STANDARD_WEBHOOKS_TOLERANCE = timedelta(minutes=5)


def _same(expected: str, offered: str) -> bool:
    """Constant-time comparison of two signatures; a header with non-ASCII characters is
    simply not a match (``compare_digest`` refuses such strings)."""
    return offered.isascii() and hmac.compare_digest(expected, offered)


JWT_LEEWAY_SECONDS = 60


# -- Standard Webhooks (ServiceNow deliveries) -------------------------------------------------


def _standard_key(secret: str) -> bytes:
    from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

    try:
        return Webhook(secret)._whsecret
    except (binascii.Error, ValueError, RuntimeError, EmptyWebhookSecretError) as exc:
        raise SignatureError(
            "the configured webhook secret is not a whsec_<base64> secret"
        ) from exc


def standard_webhooks_sign(secret: str, msg_id: str, timestamp: datetime, body: bytes) -> str:
    """The ``webhook-signature`` header value for a delivery (``v1,<base64>``)."""
    from standardwebhooks.webhooks import Webhook

    return Webhook(secret).sign(msg_id, timestamp.astimezone(UTC), body.decode())


def standard_webhooks_verify(
    secrets: Iterable[str], headers: Mapping[str, str], body: bytes, now: datetime
) -> None:
    """Check ``webhook-id``, ``webhook-timestamp`` (within 5 minutes either way) and
    ``webhook-signature`` (space-separated ``v1,<base64>`` entries) against the secrets."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    header = headers.get("webhook-signature", "")
    if not (msg_id and stamp and header):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        moment = datetime.fromtimestamp(int(stamp), UTC)
    except (ValueError, OverflowError, OSError):
        raise SignatureError("webhook-timestamp is not a Unix time") from None
    if abs(moment - now.astimezone(UTC)) > STANDARD_WEBHOOKS_TOLERANCE:
        raise SignatureError("webhook-timestamp is more than 5 minutes from now")
    offered = []
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version == "v1":
            try:
                offered.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):  # not base64, or not even ASCII
                continue
    if not offered:
        raise SignatureError("webhook-signature has no v1 signature")
    signed = f"{msg_id}.{stamp}.".encode() + body
    for secret in secrets:
        try:
            key = _standard_key(secret)
        except SignatureError:  # a malformed old secret must not hide a valid new one
            continue
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            return
    raise SignatureError("webhook-signature does not match")


# -- HMAC of the raw body (Jira admin webhooks, PagerDuty v3) ----------------------------------


def body_hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def hub_signature(secret: str, body: bytes) -> str:
    """``X-Hub-Signature`` value of a Jira admin webhook: ``sha256=<hex>``."""
    return "sha256=" + body_hmac_hex(secret, body)


def hub_signature_verify(secrets: Iterable[str], header: str, body: bytes) -> None:
    scheme, _, value = header.strip().partition("=")
    if scheme != "sha256" or not value:
        raise SignatureError("X-Hub-Signature is not sha256=<hex>")
    if not any(_same(body_hmac_hex(s, body), value.lower()) for s in secrets):
        raise SignatureError("X-Hub-Signature does not match")


def pagerduty_signature(secret: str, body: bytes) -> str:
    """``X-PagerDuty-Signature`` value: ``v1=<hex>``."""
    return "v1=" + body_hmac_hex(secret, body)


def pagerduty_verify(secrets: Iterable[str], header: str, body: bytes) -> None:
    """Valid when any ``v1=`` entry matches any secret (both sides rotate)."""
    offered = [
        part.strip()[3:].lower() for part in header.split(",") if part.strip().startswith("v1=")
    ]
    if not offered:
        raise SignatureError("missing or malformed X-PagerDuty-Signature header")
    for secret in secrets:
        expected = body_hmac_hex(secret, body)
        if any(_same(expected, sig) for sig in offered):
            return
    raise SignatureError("X-PagerDuty-Signature does not match")


# -- Atlassian Connect JWT -------------------------------------------------------------------


def _encode(text: str) -> str:
    return quote(text, safe="-._~")


def canonical_request(method: str, path: str, query: str) -> str:
    """Atlassian's canonical request: ``METHOD&path&sorted-encoded-query`` without ``jwt``."""
    canonical_path = path or "/"
    if len(canonical_path) > 1:
        canonical_path = canonical_path.rstrip("/") or "/"
    canonical_path = canonical_path.replace("&", "%26")
    grouped: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "jwt":
            continue
        grouped.setdefault(_encode(key), []).append(_encode(value))
    pairs = [f"{key}={','.join(sorted(values))}" for key, values in sorted(grouped.items())]
    return f"{method.upper()}&{canonical_path}&{'&'.join(pairs)}"


def query_hash(method: str, path: str, query: str) -> str:
    return hashlib.sha256(canonical_request(method, path, query).encode()).hexdigest()


def connect_jwt(secret: str, issuer: str, method: str, path: str, query: str, now: datetime) -> str:
    """A Connect JWT as Jira signs a webhook to an app (HS256, ``exp`` 3 minutes on)."""
    import jwt

    issued = int(now.timestamp())
    claims = {
        "iss": issuer,
        "iat": issued,
        "exp": issued + 180,
        "qsh": query_hash(method, path, query),
    }
    with warnings.catch_warnings():  # a short shared secret is the site's choice, not ours
        warnings.simplefilter("ignore")
        return jwt.encode(claims, secret, algorithm="HS256")


def connect_jwt_verify(
    secrets: Iterable[str],
    token: str,
    client_key: str | None,
    method: str,
    path: str,
    query: str,
    now: datetime,
) -> None:
    """Check the token's HS256 signature, ``iss`` (the configured client key), ``exp`` and
    ``iat`` with 60 s leeway, and ``qsh`` against this request."""
    import jwt

    claims: dict[str, object] | None = None
    for secret in secrets:
        try:
            with warnings.catch_warnings():  # a short shared secret is the site's choice
                warnings.simplefilter("ignore")
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=["HS256"],
                    options={"verify_exp": False, "verify_iat": False, "verify_aud": False},
                )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError:
            raise SignatureError("the JWT is malformed") from None
    if claims is None:
        raise SignatureError("the JWT signature does not match")
    if client_key and claims.get("iss") != client_key:
        raise SignatureError("the JWT was issued by another Jira site (iss)")
    stamp = now.timestamp()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or stamp > exp + JWT_LEEWAY_SECONDS:
        raise SignatureError("the JWT has expired")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and iat > stamp + JWT_LEEWAY_SECONDS:
        raise SignatureError("the JWT was issued in the future")
    if claims.get("qsh") != query_hash(method, path, query):
        raise SignatureError("the JWT's qsh does not match this request")


def jwt_from_request(headers: Mapping[str, str], query: str) -> str | None:
    """The Connect token from ``Authorization: JWT …`` or the ``jwt`` query parameter."""
    auth = headers.get("authorization", "")
    if auth[:4].upper() == "JWT ":
        return auth[4:].strip()
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "jwt":
            return value
    return None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_body(body: bytes) -> object:
    """Decode a verified body; raises ValueError for anything but UTF-8 JSON: also for JSON
    nested deeper than the parser can go, and for a lone surrogate escape (``"\\ud800"``),
    which is no Unicode text and no database can store."""
    text = body.decode("utf-8")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deep") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then the full check
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError: a ValueError
    return value
