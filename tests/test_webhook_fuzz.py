"""Webhook deliveries fuzzed per vendor (SPEC §5, §14 "Bad input"), through the daemon's app
in-process (tests/two_way.py's world: the three simulators, every integration bidirectional,
linked incidents), on a frozen clock.

- Not authentic: arbitrary bodies (random bytes, random JSON, the vendors' own payloads) with
  signatures that are missing, random, truncated, garbled, huge, non-ASCII, made with another
  secret, over another body or id, out of their time window (Standard Webhooks), or JWTs that
  are expired, from the future, from another site, for another URL, unsigned or forged; odd
  content types and random extra headers. Always 401 (413 past 1 MiB), counted as
  ``inbound_failed``, and nothing else in the database changes.
- Authentic (signed with the integration's secret the vendor's way: Standard Webhooks, a
  Connect JWT in the header or the query or X-Hub-Signature, X-PagerDuty-Signature): the
  simulators' own deliveries and the vendors' documented payloads, mutated while keeping their
  shape (a few values replaced, dropped, retyped) or broken (random JSON, not JSON, not UTF-8,
  nested too deep) or made a person's new edit (another actor, new values, new notes).
  Answered 202, 400 or 422 as documented, never a 5xx; a refused one stores nothing; a stored
  one is settled by the applier without crashing it; one that failed changed nothing, and one
  that was not applied changed no incident, field change, journal entry or link (it may have
  recorded a conflict and queued the platform's winning value back).

A longer campaign: ``IM_FUZZ_EXAMPLES=600 python -m pytest -q tests/test_webhook_fuzz.py``
(see tests/fuzzing.py).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from im.clock import format_time
from im.security import signatures
from im.sync.inbound import MAX_BODY
from tests.fuzzing import fuzz_settings, home_env, shared_two
from tests.two_way import SECRET, Two, jira_issue, new_incident

VENDORS = ["prod-snow", "prod-jira", "prod-pd"]
CLIENT_KEY = "im-sim-jira"  # the Jira integration's --client-key (tests/two_way.py)
FIXTURES = Path(__file__).parent.parent / "fixtures"
# what a delivery must never change unless it is authentic (counters and the last rejection
# in integration_state are how a refusal is recorded)
EVERYTHING = (
    "incidents", "field_changes", "journal_entries", "journal_links", "links", "conflicts",
    "outbox", "pushes", "sync_snapshots", "dead_letters", "inbound_events", "deliveries",
    "integrations", "integration_secrets", "field_ownership", "field_mappings", "audit_log",
)  # fmt: skip
# what only an applied delivery may change on the platform's side; one that is not applied
# may still record a conflict and queue the platform's winning value back to the vendor, and
# one that failed changes nothing at all
PLATFORM = ("incidents", "field_changes", "journal_entries", "links", "conflicts", "outbox")
ON_CONFLICT = {"conflicts", "outbox"}
SETTLED = {"applied", "echo", "ignored", "duplicate", "failed", "dead"}


@dataclass
class World:
    two: Two
    templates: dict[str, list[dict[str, Any]]]
    serial: Iterator[int] = field(default_factory=itertools.count)


def _documented() -> dict[str, list[dict[str, Any]]]:
    """The vendors' documented deliveries kept in fixtures/."""
    snow = json.loads((FIXTURES / "cassettes/servicenow/business_rule_delivery.json").read_text())
    jira = FIXTURES / "cassettes/jira/documented/jira-webhook-issue-updated-priority-changelog.json"
    pd = FIXTURES / "vectors/pagerduty-webhook-v3-signature-vector.body.txt"
    return {
        "prod-snow": [json.loads(snow["body"])],
        "prod-jira": [json.loads(jira.read_text())],
        "prod-pd": [json.loads(pd.read_text())],
    }


def _seed(two: Two) -> dict[str, list[dict[str, Any]]]:
    """Linked incidents changed on every side; every delivery the simulators sent, as
    templates, with the documented ones."""
    for title in ("Checkout API 5xx", "Login latency"):
        new_incident(two, "--title", title)
    two.im.ok("incident", "comment", "INC-1", "looking into it", "--work-note")
    two.sync()
    two.clock.advance(10)
    with two.agent("prod-jira") as agent:
        issue = two.external_id("prod-jira", 1)
        agent.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": "agent title"}})
        agent.post(f"/rest/api/2/issue/{issue}/comment", json={"body": "seen in Jira"})
    jira_issue(two, "made in Jira")
    with two.agent("prod-snow") as agent:
        sys_id = two.external_id("prod-snow", 2)
        agent.patch(
            f"/api/now/table/incident/{sys_id}",
            json={"urgency": "1", "state": "2", "work_notes": "seen in ServiceNow"},
        )
    with two.agent("prod-pd") as agent:
        pd_id = two.external_id("prod-pd", 1)
        agent.put(
            f"/incidents/{pd_id}",
            json={"incident": {"type": "incident_reference", "status": "acknowledged"}},
        )
        agent.post(f"/incidents/{pd_id}/notes", json={"note": {"content": "seen in PagerDuty"}})
    two.sync()
    templates = _documented()
    for name in VENDORS:
        sent = [json.loads(d.body) for d in two.sims[name].webhooks.log]
        assert sent, f"{name} sent nothing to learn from"
        templates[name].extend(sent)
    return templates


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with shared_two(tmp_path_factory.mktemp("webhook-fuzz")) as two:
        yield World(two, _seed(two))


@pytest.fixture
def shared(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    home_env(monkeypatch, world.two.im.db_path.parent)
    return world


# -- the database, before and after -----------------------------------------------------------


def fingerprint(two: Two, tables: tuple[str, ...]) -> dict[str, str]:
    """A digest of every row of each table."""
    db = two.db()
    digests = {}
    for table in tables:
        rows = db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
        digests[table] = hashlib.sha256(repr(rows).encode()).hexdigest()
    return digests


def counter(two: Two, name: str, key: str) -> int:
    return two.counters(name).get(key, 0)


def events(two: Two) -> list[dict[str, Any]]:
    cursor = two.db().execute("SELECT id, state, outcome, attempts FROM inbound_events ORDER BY id")
    return [dict(zip(("id", "state", "outcome", "attempts"), row, strict=True)) for row in cursor]


def error_shape(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert list(body) == ["error"] and sorted(body["error"]) == ["code", "message"], body
    assert "Traceback" not in response.text
    return dict(body["error"])


# -- signing the vendors' ways -----------------------------------------------------------------

PATH = "/webhooks/{name}"


def _jwt(secret: str, query: str, now: datetime, **claims: Any) -> str:
    """A Connect JWT for a POST to prod-jira's webhook URL; ``claims`` override."""
    issued = int(now.timestamp())
    payload = {
        "iss": CLIENT_KEY,
        "iat": issued,
        "exp": issued + 180,
        "qsh": signatures.query_hash("POST", PATH.format(name="prod-jira"), query),
        **claims,
    }
    with warnings.catch_warnings():  # a short secret is the point of some of these
        warnings.simplefilter("ignore")
        return jwt.encode(payload, secret, algorithm="HS256")


def standard_signature(key: bytes, delivery: str, stamp: int, body: bytes) -> str:
    """``webhook-signature`` as the Standard Webhooks scheme computes it, for any bytes (the
    reference library signs text only)."""
    mac = hmac.new(key, f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def authentic(
    name: str, body: bytes, now: datetime, delivery: str, how: str, query: str = ""
) -> dict[str, str]:
    """The headers the vendor sends with ``body``, signed with the integration's secret."""
    secret = SECRET[name]
    if name == "prod-snow":
        stamp = int(now.timestamp())
        key = base64.b64decode(secret.removeprefix("whsec_"))
        return {
            "webhook-id": delivery,
            "webhook-timestamp": str(stamp),
            "webhook-signature": standard_signature(key, delivery, stamp, body),
        }
    if name == "prod-pd":
        old = "v1=" + "0" * 64  # a rotated-away secret's entry comes along
        return {
            "X-PagerDuty-Signature": f"{old},{signatures.pagerduty_signature(secret, body)}",
            "X-Webhook-Id": delivery,
        }
    headers = {"X-Atlassian-Webhook-Identifier": delivery}
    if how == "hub":
        headers["X-Hub-Signature"] = signatures.hub_signature(secret, body)
    elif how == "jwt":
        headers["Authorization"] = f"JWT {_jwt(secret, query, now)}"
    return headers  # "jwt-query": the token travels in the URL


# -- bodies ------------------------------------------------------------------------------------

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", " ", "\x00", "a\nb", "\x1b[31mred", "\u202eevil", "\ud800", "null", "0", "-1",
         "9" * 5000, "x" * 70_000, "2026-13-45T99:99:99Z", "1e309", "NaN", "INC-1"]
    ),
)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(_paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(_paths(child, (*prefix, index)))
    return found


def _same_type(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers() | st.integers(-1, 3)
    if isinstance(value, float):
        return st.floats(allow_nan=False)
    if isinstance(value, str):
        return HOSTILE_TEXT
    if isinstance(value, list):
        return st.lists(JSON_VALUES, max_size=3)
    if isinstance(value, dict):
        return st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=3)
    return JSON_VALUES


@st.composite
def shape_kept(draw: st.DrawFn, template: dict[str, Any]) -> Any:
    """The template with a few values replaced (same type or any), nulled or dropped."""
    payload = copy.deepcopy(template)
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(payload)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = payload
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        action = draw(st.sampled_from(["same-type", "same-type", "any", "null", "drop"]))
        if action == "drop":
            del parent[key]
        elif action == "null":
            parent[key] = None
        elif action == "any":
            parent[key] = draw(JSON_VALUES)
        else:
            parent[key] = draw(_same_type(parent[key]))
    return payload


def _fresh(name: str, payload: Any, serial: int, now: datetime) -> Any:
    """A template made new: its own event id and a newer version, so that it is not a
    duplicate nor stale and reaches the applying (before the mutations break it)."""
    if not isinstance(payload, dict):
        return payload
    payload = copy.deepcopy(payload)
    later = now + timedelta(milliseconds=serial)
    if name == "prod-snow":
        payload["sys_mod_count"] = str(1000 + serial)
        payload["sys_updated_on"] = later.strftime("%Y-%m-%d %H:%M:%S")
    elif name == "prod-jira":
        payload["timestamp"] = int(later.timestamp() * 1000)
        fields = (payload.get("issue") or {}).get("fields")
        if isinstance(fields, dict):
            fields["updated"] = later.strftime("%Y-%m-%dT%H:%M:%S.") + "000+0000"
    elif isinstance(payload.get("event"), dict):
        payload["event"]["id"] = f"fuzz-{serial}"
        payload["event"]["occurred_at"] = format_time(later)
    return payload


def _pool(*values: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(values), HOSTILE_TEXT)


SNOW_VALUES = _pool("1", "2", "3", "6", "7", "8", "Checkout down", "agent@example.com")
JIRA_VALUES = _pool(
    "Highest", "High", "Medium", "Low", "Lowest", "Major", "Open", "In Progress", "Done",
    "Closed", "agent title",
)  # fmt: skip
JIRA_FIELDS = _pool("summary", "description", "priority", "status", "assignee")
PD_TYPES = _pool(
    "incident.triggered", "incident.acknowledged", "incident.resolved", "incident.reopened",
    "incident.priority_updated", "incident.reassigned", "incident.annotated",
)  # fmt: skip
PD_STATUS = _pool("triggered", "acknowledged", "resolved")
TEXT_ID = st.integers(20_000, 10**9).map(str)


def _agent(payload: dict[str, Any], key: str, agents: list[Any], draw: st.DrawFn) -> None:
    if agents and draw(st.booleans()):
        payload[key] = copy.deepcopy(draw(st.sampled_from(agents)))


@st.composite
def edited(draw: st.DrawFn, name: str, payload: Any, agents: list[Any]) -> Any:
    """The template as a person's new edit: another actor, new values for the fields the
    connector maps (valid ones and hostile text), a new journal entry or comment."""
    if not isinstance(payload, dict):
        return payload
    payload = copy.deepcopy(payload)
    if name == "prod-snow":
        payload["sys_updated_by"] = draw(_pool("agent", "employee", "im-integration"))
        columns = ["short_description", "description", "urgency", "impact", "state", "priority"]
        changes = payload.get("changes")
        if isinstance(changes, dict):
            for column in draw(st.lists(st.sampled_from(columns), max_size=3, unique=True)):
                changes[column] = draw(SNOW_VALUES)
        if isinstance(payload.get("journal"), list) and draw(st.booleans()):
            payload["journal"].append(
                {
                    "element": draw(_pool("work_notes", "comments")),
                    "sys_id": draw(st.binary(min_size=16, max_size=16)).hex(),
                    "value": draw(HOSTILE_TEXT),
                    "sys_created_by": "agent",
                    "sys_created_on": payload.get("sys_updated_on"),
                }
            )
    elif name == "prod-jira":
        _agent(payload, "user", agents, draw)
        if isinstance(payload.get("changelog"), dict):
            payload["changelog"]["id"] = draw(TEXT_ID)
            payload["changelog"]["items"] = draw(
                st.lists(
                    st.fixed_dictionaries(
                        {"fieldId": JIRA_FIELDS, "toString": JIRA_VALUES, "to": JIRA_VALUES}
                    ),
                    min_size=1,
                    max_size=3,
                )
            )
        if isinstance(payload.get("comment"), dict):
            comment = payload["comment"]
            comment["id"] = draw(TEXT_ID)
            comment["body"] = draw(HOSTILE_TEXT)
            _agent(comment, "author", agents, draw)
    else:
        event = payload.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            return payload
        _agent(event, "agent", agents, draw)
        data = event["data"]
        event["event_type"] = draw(PD_TYPES)
        if event["event_type"] == "incident.annotated":  # a note on the incident
            incident = data.get("incident") or {"id": data.get("id"), "type": "incident_reference"}
            data["incident"] = incident
            data["id"] = draw(TEXT_ID)
            data["content"] = draw(HOSTILE_TEXT)
        else:
            data["status"] = draw(PD_STATUS)
            data["title"] = draw(HOSTILE_TEXT)
            data["urgency"] = draw(_pool("high", "low"))
            priority = st.fixed_dictionaries({"summary": _pool("P1", "P2", "P3", "P4", "P5")})
            data["priority"] = draw(st.none() | priority)
    return payload


def _agents(name: str, templates: list[dict[str, Any]]) -> list[Any]:
    """The people (not the integration's account) who act in the templates."""
    if name == "prod-jira":
        users = [t.get("user") for t in templates]
    elif name == "prod-pd":
        users = [(t.get("event") or {}).get("agent") for t in templates]
    else:
        return []
    own = ("im-integration@example.com", "im integration")
    return [
        u
        for u in users
        if isinstance(u, dict) and u.get("emailAddress") not in own and u.get("summary") not in own
    ]


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def broken_bodies() -> st.SearchStrategy[bytes]:
    """What breaks the shape: random JSON, not JSON, not UTF-8, too deep, odd literals."""
    return st.one_of(
        JSON_VALUES.map(_compact),
        st.binary(max_size=300),
        st.integers(1_000, 500_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1_000, 170_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.sampled_from(
            [b"", b"null", b"[]", b'"event"', b"\xef\xbb\xbf{}", b'{"event": NaN}',
             b'{"a": 1e999999}', b"{" + b'"k": 1, ' * 3 + b"}", b"\xff\xfe{\x00}\x00",
             b'{"event": {"id": 1, "id": 2}}', b"1" * 5000]
        ),
    )  # fmt: skip


# -- not authentic -----------------------------------------------------------------------------

HEADER_NAME = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).filter(
    lambda name: name not in ("content-length", "content-type", "host", "transfer-encoding")
)
HEADER_VALUE = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
    st.integers(1_000, 70_000).map(lambda n: "v" * n),
)
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded",
     "multipart/form-data; boundary=x", "application/json; charset=latin-1", "", "*/*",
     "application/json" + ";" * 500]
)  # fmt: skip


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _garble(value: str, draw: st.DrawFn) -> str:
    """One character changed so that it means something else: a base64, base64url or hex
    digit gets its top bit flipped (never only padding bits, never only its case), anything
    else becomes "!"."""
    if not value:
        return "x"
    at = draw(st.integers(0, len(value) - 1))
    char = value[at]
    alphabet = B64 if char not in "-_" else B64[:62] + "-_"
    swapped = alphabet[alphabet.index(char) ^ 32] if char in alphabet else "!"
    return value[:at] + swapped + value[at + 1 :]


def _forged(name: str, how: str, body: bytes, now: datetime, draw: st.DrawFn) -> dict[str, Any]:
    """Vendor headers that do not authenticate ``body``, whichever way ``how`` says."""
    other_secret = draw(st.text(min_size=1, max_size=40).filter(lambda s: s != SECRET[name]))
    delivery = draw(st.text("abcdef0123456789_", min_size=1, max_size=20))
    real = authentic(name, body, now, delivery, "jwt")
    if how == "missing":
        return {}
    if how == "random":
        return {key: draw(HEADER_VALUE) for key in real}
    if how == "non-ascii":
        return {key: value.encode() + b"\xc3\xa9\xff" for key, value in real.items()}
    if how == "huge":
        return {key: value + "0" * 70_000 for key, value in real.items()}
    if how in ("truncated", "garbled"):
        forged = dict(real)
        key = next(k for k in real if "signature" in k.lower() or k == "Authorization")
        value = real[key].split(",v1=")[-1]  # PagerDuty: the real entry alone
        if how == "truncated":
            forged[key] = value[: draw(st.integers(0, len(value) - 1))]
        else:
            forged[key] = _garble(value, draw)
        return forged
    if how == "other-body":
        other = draw(st.binary(max_size=50).filter(lambda b: b != body))
        return authentic(name, other, now, delivery, "jwt" if name != "prod-jira" else "hub")
    if how == "other-secret":
        if name == "prod-snow":
            key = draw(st.binary(min_size=1, max_size=32))
            stamp = int(now.timestamp())
            return {**real, "webhook-signature": standard_signature(key, delivery, stamp, body)}
        if name == "prod-pd":
            return {"X-PagerDuty-Signature": "v1=" + signatures.body_hmac_hex(other_secret, body)}
        return {"X-Hub-Signature": signatures.hub_signature(other_secret, body)}
    if how == "late":  # Standard Webhooks: signed properly, but out of the 5 minute window
        skew = draw(st.integers(301, 10**9) | st.integers(-(10**9), -301))
        moment = now + timedelta(seconds=skew)
        headers = authentic(name, body, moment, delivery, "jwt")
        return {**headers, "webhook-timestamp": str(int(moment.timestamp()))}
    if how == "bad-timestamp":
        stamp = draw(st.sampled_from(["", "abc", "1e9", "9" * 400, "-99999999999", "١٢٣"]))
        return {**real, "webhook-timestamp": stamp.encode()}
    if how == "other-id":
        other = authentic(name, body, now, delivery + "x", "jwt")
        return {**other, "webhook-id": delivery}
    # Connect JWTs that must be refused
    stamp = int(now.timestamp())
    secret = SECRET["prod-jira"]
    token = {
        "jwt-expired": lambda: _jwt(secret, "", now, exp=stamp - draw(st.integers(61, 10**6))),
        "jwt-future": lambda: _jwt(secret, "", now, iat=stamp + draw(st.integers(61, 10**6))),
        "jwt-other-site": lambda: _jwt(secret, "", now, iss=draw(st.text(max_size=20))),
        "jwt-other-url": lambda: _jwt(secret, "", now, qsh=signatures.query_hash("POST", "/x", "")),
        "jwt-no-exp": lambda: _jwt(secret, "", now, exp="soon"),
        "jwt-other-secret": lambda: _jwt(other_secret, "", now),
        "jwt-unsigned": lambda: jwt.encode({"iss": CLIENT_KEY}, None, algorithm="none"),
        "jwt-garbage": lambda: draw(
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
        ),
    }[how]()
    return {"Authorization": f"JWT {token}", "X-Atlassian-Webhook-Identifier": delivery}


FORGERIES = {
    "prod-snow": ["late", "bad-timestamp", "other-id"],
    "prod-jira": ["jwt-expired", "jwt-future", "jwt-other-site", "jwt-other-url", "jwt-no-exp",
                  "jwt-other-secret", "jwt-unsigned", "jwt-garbage"],
    "prod-pd": [],
}  # fmt: skip
COMMON = ["missing", "random", "non-ascii", "huge", "truncated", "garbled", "other-body",
          "other-secret"]  # fmt: skip


@st.composite
def not_authentic(draw: st.DrawFn, name: str, world: World) -> tuple[bytes, dict[str, Any]]:
    now = world.two.clock.now()
    templates = world.templates[name]
    body = draw(
        st.one_of(
            st.sampled_from(templates).map(_compact),
            st.sampled_from(templates).flatmap(shape_kept).map(_compact),
            broken_bodies(),
            st.just(b"x" * (MAX_BODY + 1)),
        )
    )
    how = draw(st.sampled_from(COMMON + FORGERIES[name]))
    headers = _forged(name, how, body, now, draw)
    extra = draw(st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=4))
    headers = {**extra, **headers, "content-type": draw(CONTENT_TYPES)}
    return body, {k: v if isinstance(v, bytes) else v.encode("latin-1") for k, v in headers.items()}


@pytest.mark.parametrize("name", VENDORS)
def test_what_is_not_authentic_is_refused_and_changes_nothing(shared: World, name: str) -> None:
    two = shared.two

    @fuzz_settings(60)
    @given(delivery=not_authentic(name, shared))
    def fuzz(delivery: tuple[bytes, dict[str, Any]]) -> None:
        body, headers = delivery
        before = fingerprint(two, EVERYTHING)
        failed = counter(two, name, "inbound_failed")
        response = two.daemon.post(f"/webhooks/{name}", content=body, headers=headers)
        problem = error_shape(response)
        if len(body) > MAX_BODY:
            assert response.status_code == 413, problem
        else:
            assert (response.status_code, problem["code"]) == (401, "unauthenticated"), problem
            assert counter(two, name, "inbound_failed") == failed + 1
        assert SECRET[name] not in response.text
        assert fingerprint(two, EVERYTHING) == before

    fuzz()


@given(
    name=st.text(st.characters(codec="utf-8", exclude_characters="/?#%"), min_size=1, max_size=30)
)
@fuzz_settings(30)
def test_unknown_integrations_are_404_in_the_error_shape(shared: World, name: str) -> None:
    two = shared.two
    assume(not name.strip().isdigit() and name.strip().lower() not in VENDORS)
    before = fingerprint(two, EVERYTHING)
    response = two.daemon.post(f"/webhooks/{quote(name, safe='')}", content=b"{}")
    assert response.status_code == 404
    assert error_shape(response)["code"] == "not_found"
    assert fingerprint(two, EVERYTHING) == before


# -- authentic ---------------------------------------------------------------------------------


@st.composite
def authentic_bodies(draw: st.DrawFn, name: str, world: World) -> tuple[bytes, str]:
    """A body, and for Jira how it is signed (signing happens when it is sent, so that a
    replayed example is neither a duplicate nor expired)."""
    now = world.two.clock.now()
    serial = next(world.serial)
    template = _fresh(name, draw(st.sampled_from(world.templates[name])), serial, now)
    if draw(st.integers(0, 3)):  # mostly a person's new edit
        template = draw(edited(name, template, _agents(name, world.templates[name])))
    body = draw(
        st.one_of(
            st.just(template).map(_compact),
            st.just(template).map(_compact),
            shape_kept(template).map(_compact),
            shape_kept(template).map(_compact),
            broken_bodies(),
        )
    )
    how = draw(st.sampled_from(["jwt", "jwt-query", "hub"])) if name == "prod-jira" else ""
    return body, how


@pytest.mark.parametrize("name", VENDORS)
def test_authentic_deliveries_are_answered_as_documented_and_never_half_applied(
    shared: World, name: str
) -> None:
    two = shared.two

    @fuzz_settings(60)
    @given(delivery=authentic_bodies(name, shared))
    def fuzz(delivery: tuple[bytes, str]) -> None:
        try:
            deliver(*delivery)
        finally:
            two.clock.advance(10)  # the next edit comes later than this one (no conflict)

    def deliver(body: bytes, how: str) -> None:
        now = two.clock.now()
        query = ""
        if how == "jwt-query":
            params = "user_id=admin&user_key=admin"
            query = f"{params}&jwt={_jwt(SECRET[name], params, now)}"
        delivery = f"fuzz-{name}-{next(shared.serial)}"
        headers = authentic(name, body, now, delivery, how, query)
        headers["content-type"] = "application/json"
        before = events(two)
        platform = fingerprint(two, PLATFORM)
        failed = counter(two, name, "inbound_failed")
        url = f"/webhooks/{name}" + (f"?{query}" if query else "")
        response = two.daemon.post(url, content=body, headers=headers)
        status = response.status_code
        assert status in (202, 400, 422), response.text
        if status != 202:
            error_shape(response)
            assert events(two) == before  # refused at the door: nothing stored
            assert counter(two, name, "inbound_failed") == failed + 1
            assert fingerprint(two, PLATFORM) == platform
            return
        stored = events(two)
        assert stored[:-1] == before and stored[-1]["id"] == response.json()["event"]
        two.applier.step()
        # this delivery, and any earlier one whose retry came due (the clock moves on)
        stepped = [event for event in events(two) if event not in stored]
        assert stepped and stepped[-1]["id"] == stored[-1]["id"], stepped
        for settled in stepped:
            retried = settled["state"] == "received" and settled["attempts"] > 0
            assert settled["state"] in SETTLED or retried, settled
            # a failure says why; "could not be applied (TypeError)" is the last resort
            assert not str(settled["outcome"]).startswith("could not be applied"), settled
        states = {settled["state"] for settled in stepped}
        if "applied" not in states:
            later = fingerprint(two, PLATFORM)
            changed = {table for table in PLATFORM if later[table] != platform[table]}
            allowed = ON_CONFLICT if states - {"failed", "received", "dead"} else set()
            assert changed <= allowed, (changed, stepped)

    fuzz()


# -- what the fuzzers found, kept as examples -------------------------------------------------


def _send(two: Two, name: str, body: bytes, how: str = "jwt") -> httpx.Response:
    now = two.clock.now()
    headers = authentic(name, body, now, f"example-{name}-{hashlib.md5(body).hexdigest()}", how)
    return two.daemon.post(f"/webhooks/{name}", content=body, headers=headers)


@pytest.mark.parametrize("name", VENDORS)
@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a": "\\ud800"}'],
    ids=["nested-too-deep", "lone-surrogate"],
)
def test_authentic_json_nested_too_deep_or_with_a_lone_surrogate_is_a_400(
    shared: World, name: str, body: bytes
) -> None:
    """Found by the fuzzer: too deep was a 503 internal (RecursionError), so the vendor
    retried it for days; a lone surrogate was stored, then failed to apply."""
    before = events(shared.two)
    response = _send(shared.two, name, body)
    assert response.status_code == 400, response.text
    assert error_shape(response)["message"] == "the body is not UTF-8 JSON"
    assert events(shared.two) == before


@pytest.mark.parametrize(
    ("name", "how"),
    [("prod-snow", ""), ("prod-jira", "jwt"), ("prod-jira", "hub"), ("prod-pd", "")],
)
def test_an_authentic_empty_body_is_a_400_and_an_unsigned_one_a_401(
    shared: World, name: str, how: str
) -> None:
    """PagerDuty answered an authentic empty body 401 before checking its signature, as if
    it were forged: the vendor was told its secret was wrong."""
    two = shared.two
    before = events(two)
    response = _send(two, name, b"", how)
    assert response.status_code == 400, response.text
    assert error_shape(response)["message"] == "the body is not UTF-8 JSON"
    forged = two.daemon.post(f"/webhooks/{name}", content=b"", headers={})
    assert forged.status_code == 401, forged.text
    assert events(two) == before


def test_an_event_that_fails_half_way_leaves_nothing_behind(shared: World) -> None:
    """Found by the fuzzer: a ServiceNow save whose status change applied but whose work
    note was refused settled as failed with the status change kept (and sent on)."""
    two = shared.two
    two.clock.advance(60)
    now = two.clock.now()
    stamp = now.strftime("%Y-%m-%d %H:%M:%S")
    sys_id = two.external_id("prod-snow", 2)
    payload = {
        "type": "incident.updated", "operation": "update", "table": "incident",
        "sys_id": sys_id, "sys_mod_count": "90000", "sys_updated_on": stamp,
        "sys_updated_by": "agent", "changes": {"state": "6"},
        "journal": [{"element": "work_notes", "sys_id": "ab" * 16, "value": "bad\x1bnote",
                     "sys_created_by": "agent", "sys_created_on": stamp}],
    }  # fmt: skip
    platform = fingerprint(two, PLATFORM)
    assert _send(two, "prod-snow", _compact(payload)).status_code == 202
    two.applier.step()
    settled = events(two)[-1]
    assert settled["state"] == "failed", settled
    assert settled["outcome"] == "work_notes must not contain control characters"
    assert fingerprint(two, PLATFORM) == platform
