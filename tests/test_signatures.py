"""Webhook signatures against the vendors' own test vectors, and the ways they must fail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from im.errors import SignatureError
from im.security import signatures as sig

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vectors"


def _vector(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def _body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# -- Standard Webhooks (ServiceNow) --------------------------------------------------------

SW = _vector("servicenow-standard-webhooks-vector.json")
SW_TIME = datetime.fromtimestamp(int(SW["headers"]["webhook-timestamp"]), UTC)


def test_standard_webhooks_vector_signs_and_verifies() -> None:
    body = SW["body"].encode()
    assert (
        sig.standard_webhooks_sign(SW["secret"], SW["headers"]["webhook-id"], SW_TIME, body)
        == (SW["expected_signature"])
    )
    sig.standard_webhooks_verify([SW["secret"]], SW["headers"], body, SW_TIME)


@pytest.mark.parametrize(
    "skew", [timedelta(minutes=-5, seconds=-1), timedelta(minutes=5, seconds=1)]
)
def test_standard_webhooks_refuse_timestamps_past_five_minutes_either_way(skew: timedelta) -> None:
    with pytest.raises(SignatureError, match="5 minutes"):
        sig.standard_webhooks_verify(
            [SW["secret"]], SW["headers"], SW["body"].encode(), SW_TIME + skew
        )


def test_standard_webhooks_accept_the_edge_of_the_window() -> None:
    sig.standard_webhooks_verify(
        [SW["secret"]], SW["headers"], SW["body"].encode(), SW_TIME + timedelta(minutes=5)
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-signature": "v1,AAAA"}, "does not match"),
        ({"webhook-signature": "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}, "no v1"),
        ({"webhook-signature": "garbage"}, "no v1"),
        ({"webhook-id": ""}, "missing"),
        ({"webhook-timestamp": "yesterday"}, "Unix time"),
        ({"webhook-id": "msg_other"}, "does not match"),
    ],
)
def test_standard_webhooks_refuse_bad_headers(change: dict, reason: str) -> None:
    headers = {**SW["headers"], **change}
    with pytest.raises(SignatureError, match=reason):
        sig.standard_webhooks_verify([SW["secret"]], headers, SW["body"].encode(), SW_TIME)


def test_standard_webhooks_during_rotation_accept_either_secret() -> None:
    old = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
    sig.standard_webhooks_verify([old, SW["secret"]], SW["headers"], SW["body"].encode(), SW_TIME)
    # several signatures in one header (the sender rotates)
    both = {**SW["headers"], "webhook-signature": f"v1,AAAA {SW['expected_signature']}"}
    sig.standard_webhooks_verify([SW["secret"]], both, SW["body"].encode(), SW_TIME)


# -- Jira admin webhooks (X-Hub-Signature) -------------------------------------------------

HUB = _vector("jira-webhook-hub-signature-vector.json")
HUB_BODY = _body("jira-webhook-hub-signature-vector.body.txt")


def test_hub_signature_vector() -> None:
    assert sig.hub_signature(HUB["secret"], HUB_BODY) == HUB["header_value"]
    sig.hub_signature_verify([HUB["secret"]], HUB["header_value"], HUB_BODY)


@pytest.mark.parametrize("header", ["sha1=abc", "sha256=", "", "sha256=00ff"])
def test_hub_signature_refuses_wrong_or_malformed_headers(header: str) -> None:
    with pytest.raises(SignatureError):
        sig.hub_signature_verify([HUB["secret"]], header, HUB_BODY)


def test_hub_signature_refuses_a_changed_body() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        sig.hub_signature_verify([HUB["secret"]], HUB["header_value"], HUB_BODY + b"\n")


# -- PagerDuty v3 --------------------------------------------------------------------------

PD = _vector("pagerduty-webhook-v3-signature-vector.json")
PD_BODY = _body("pagerduty-webhook-v3-signature-vector.body.txt")


def test_pagerduty_vector_with_one_and_with_several_signatures() -> None:
    assert sig.pagerduty_signature(PD["secret"], PD_BODY) == PD["valid_header"]
    sig.pagerduty_verify([PD["secret"]], PD["valid_header"], PD_BODY)
    sig.pagerduty_verify([PD["secret"]], PD["multi_signature_header_example"], PD_BODY)


def test_pagerduty_refuses_the_mismatched_vector_and_a_missing_header() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        sig.pagerduty_verify([PD["secret"]], PD["invalid_header_mismatch"], PD_BODY)
    with pytest.raises(SignatureError, match="missing"):
        sig.pagerduty_verify([PD["secret"]], "", PD_BODY)


# -- Atlassian Connect JWT -----------------------------------------------------------------

JWT = _vector("jira-connect-jwt-vector.json")
JWT_TIME = datetime.fromtimestamp(JWT["claims"]["iat"] + 30, UTC)
PATH, QUERY = "/webhooks/prod-jira", "user_id=admin&user_key=admin"


def test_canonical_request_and_qsh_match_the_vectors() -> None:
    assert sig.canonical_request("POST", PATH, QUERY) == JWT["canonical_request"]
    assert sig.query_hash("POST", PATH, QUERY) == JWT["qsh"]
    # the vendor README's verified vectors (atlassian-connect-core, com.atlassian.jwt)
    assert (
        sig.query_hash("GET", "/path/to/service", "a=1&A=2&b=3&B=4")
        == "70282c7cf82834bd5a3d6dacda1b4ccd5cf5860a63a1fa2fb86b64d576e6a1d5"
    )
    assert sig.canonical_request(
        "get",
        "/path/to/service/",
        "zee_last=param&repeated=parameter 1&first=param&repeated=parameter 2",
    ) == ("GET&/path/to/service&first=param&repeated=parameter%201,parameter%202&zee_last=param")


def test_the_jwt_parameter_is_not_part_of_the_canonical_request() -> None:
    assert sig.canonical_request("POST", PATH, QUERY + "&jwt=abc") == JWT["canonical_request"]


def test_connect_jwt_vector_verifies() -> None:
    sig.connect_jwt_verify(
        [JWT["shared_secret"]], JWT["token"], JWT["claims"]["iss"], "POST", PATH, QUERY, JWT_TIME
    )


@pytest.mark.parametrize(
    ("secret", "client_key", "path", "when", "reason"),
    [
        ("wrong-secret", None, PATH, JWT_TIME, "signature"),
        (JWT["shared_secret"], "jira:another-site", PATH, JWT_TIME, "iss"),
        (JWT["shared_secret"], None, "/webhooks/other", JWT_TIME, "qsh"),
        (
            JWT["shared_secret"],
            None,
            PATH,
            datetime.fromtimestamp(JWT["claims"]["exp"] + 61, UTC),
            "expired",
        ),
    ],
)
def test_connect_jwt_refusals(
    secret: str, client_key: str | None, path: str, when: datetime, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason):
        sig.connect_jwt_verify([secret], JWT["token"], client_key, "POST", path, QUERY, when)


def test_connect_jwt_within_the_leeway_after_expiry_is_accepted() -> None:
    when = datetime.fromtimestamp(JWT["claims"]["exp"] + 59, UTC)
    sig.connect_jwt_verify([JWT["shared_secret"]], JWT["token"], None, "POST", PATH, QUERY, when)


def test_a_token_we_sign_verifies_and_is_found_in_header_or_query() -> None:
    token = sig.connect_jwt("s3cret", "im-sim-jira", "POST", PATH, "", JWT_TIME)
    assert sig.jwt_from_request({"authorization": f"JWT {token}"}, "") == token
    assert sig.jwt_from_request({}, f"a=1&jwt={token}") == token
    assert sig.jwt_from_request({}, "a=1") is None
    sig.connect_jwt_verify(["s3cret"], token, "im-sim-jira", "POST", PATH, "", JWT_TIME)


def test_a_malformed_token_is_refused_not_crashed() -> None:
    with pytest.raises(SignatureError, match="malformed"):
        sig.connect_jwt_verify(["s"], "not.a.jwt", None, "POST", PATH, "", JWT_TIME)
