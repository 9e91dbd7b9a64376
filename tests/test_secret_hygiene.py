"""No secret ever leaks (SPEC §9): two full scenarios with distinct, recognisable secret values,
then a search of everything the product emitted for each secret and the forms a leak would
take (URL- and form-encoded, JSON-escaped, base64, hex, the HTTP Basic header, a whsec key's
bytes, each master key's base64 text and raw bytes, the API token and a wrong one).

1. Real processes: a real `im daemon` (``--log-file``, ``--log-level debug``, spans to the
   console and over OTLP) against the three simulators on real sockets, `im integration
   reconcile` processes exporting spans, the REST API and webhooks over HTTP; the master key
   in the key file, rotated twice under the running daemon.
2. The in-process world on a frozen clock, where the retry schedule runs to the DLQ without
   sleeping: the daemon's app, dispatcher and applier stepped by hand, spans kept in memory;
   the master key in $IM_MASTER_KEY, rotated from $IM_NEW_MASTER_KEY.

Both: secrets given by environment, file, standard input and flag; sync both ways; conflicts;
webhook secrets rotated; refused credentials (401); vendor errors (500, 422, 429, timeouts);
webhooks with bad or wrongly keyed signatures; the API without, with a wrong and with a valid
token (every GET route); reconcile dry run and auto-heal; bad URLs and secret files; every
read command as a table and as JSON. Searched: stdout and stderr of every command and process,
API and webhook answers (bodies and headers), /metrics, the database file with its -wal and
-shm side files (bytes), the log files and the exported spans. The same search must find the
secrets where the product shows them on purpose (`webhook-setup --show-secret`, `im token
create`, the key file), so a broken search cannot pass.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from im.api.app import create_api
from im.clock import FrozenClock, SystemClock
from im.daemon import logs
from im.daemon.app import create_app
from im.daemon.metrics import MetricsEndpoint
from im.daemon.webhooks import WebhookReceiver
from im.security import signatures
from im.security.secrets import key_file_path
from im.sim.core import Simulator
from im.sim.jira import DEFAULT_USERS as JIRA_USERS
from im.sim.jira import JiraSimulator
from im.sim.pagerduty import PagerDutySimulator
from im.sim.server import free_port, serve_in_thread
from im.sim.servicenow import ServiceNowSimulator
from im.sim.transport import ASGIBridge
from im.store import open_database
from im.sync.dispatcher import Dispatcher
from im.sync.inbound import Applier
from tests.conftest import START, Im, Result
from tests.test_tracing import collector as collector  # the OTLP/HTTP receiver fixture
from tests.test_tracing import spans as spans  # the in-memory span exporter fixture
from tests.two_way import Two, jira_issue

# -- the secrets ---------------------------------------------------------------------------------
# Each holds characters that change under URL, form or JSON encoding, so every derived form
# differs from the raw value and is searched for on its own.

SNOW_USER = "im-integration"
JIRA_EMAIL = "im-integration@example.com"
PD_EMAIL = "im-integration@example.com"
SNOW_WEBHOOK_KEY = b"hygiene:snow-webhook-key/8d1f27aa"

SECRETS: dict[str, str] = {
    "servicenow password": "snow-pass+Q7/x9=hyg",
    "servicenow webhook secret": "whsec_" + base64.b64encode(SNOW_WEBHOOK_KEY).decode(),
    "jira api token": "jira-token+K4/w8=hyg",
    "jira webhook secret": "jira-shared-secret/5e0b+hyg",
    "pagerduty api token": "pd-token+R2/m6=hyg",
    "pagerduty webhook secret": "pd-webhook-secret/3c9a+hyg",
    # what a person typed wrong is a secret too: it may be a real password elsewhere
    "wrong servicenow password": "wrong-snow-pass+Z1/hyg",
    "wrong pagerduty api token": "wrong-pd-token+Y2/hyg",
    "wrong webhook secret": "wrong-webhook-secret/X3+hyg",
}
WRONG_SNOW_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"hygiene:wrong-snow-key/00").decode()

SNOW_PASSWORD = SECRETS["servicenow password"]
SNOW_WEBHOOK_SECRET = SECRETS["servicenow webhook secret"]
JIRA_TOKEN = SECRETS["jira api token"]
JIRA_WEBHOOK_SECRET = SECRETS["jira webhook secret"]
PD_TOKEN = SECRETS["pagerduty api token"]
PD_WEBHOOK_SECRET = SECRETS["pagerduty webhook secret"]
WRONG_SNOW_PASSWORD = SECRETS["wrong servicenow password"]
WRONG_PD_TOKEN = SECRETS["wrong pagerduty api token"]
WRONG_WEBHOOK_SECRET = SECRETS["wrong webhook secret"]

NAMES = ("prod-snow", "prod-jira", "prod-pd")

# Master keys: the key file of the first scenario, $IM_MASTER_KEY of the second, and the key
# `im key rotate` takes from $IM_NEW_MASTER_KEY there. (Keys that `key rotate` makes for the
# key file are read back from it and searched for too.)
MASTER_KEYS: dict[str, bytes] = {
    "master key (key file)": b"hygiene-master-key:file-01234567",
    "master key ($IM_MASTER_KEY)": b"hygiene-master-key:env--01234567",
    "master key ($IM_NEW_MASTER_KEY)": b"hygiene-master-key:next-01234567",
}
assert all(len(key) == 32 for key in MASTER_KEYS.values())

# What `im integration rotate-secret --new-secret` is given; generated ones are read back
# from `webhook-setup --show-secret`.
SECRETS["rotated pagerduty webhook secret"] = "pd-rotated-webhook-secret/7d2e+hyg"
SECRETS["rotated jira webhook secret"] = "jira-rotated-shared-secret/1f4b+hyg"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# -- what a leak would look like -----------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    secret: str
    form: str
    value: bytes


def _forms(name: str, value: str) -> list[Needle]:
    raw = value.encode()
    forms = {
        "raw": raw,
        "url-encoded": quote(value, safe="").encode(),
        "form-encoded": quote_plus(value).encode(),
        "json-escaped": json.dumps(value)[1:-1].encode(),
        "base64": base64.b64encode(raw),
        "hex": raw.hex().encode(),
    }
    seen: set[bytes] = set()
    needles = []
    for form, needle in forms.items():
        if needle not in seen:
            seen.add(needle)
            needles.append(Needle(name, form, needle))
    return needles


def _basic(user: str, password: str) -> bytes:
    return base64.b64encode(f"{user}:{password}".encode())


def needles(extra: dict[str, str], keys: dict[str, bytes]) -> list[Needle]:
    """Every secret and master key (and ``extra`` and ``keys``: the API tokens, rotated
    secrets and generated master keys of a run) in every form."""
    found = [n for name, value in {**SECRETS, **extra}.items() for n in _forms(name, value)]
    found += [
        Needle("servicenow password", "Basic header", _basic(SNOW_USER, SNOW_PASSWORD)),
        Needle("wrong servicenow password", "Basic header", _basic(SNOW_USER, WRONG_SNOW_PASSWORD)),
        Needle("jira api token", "Basic header", _basic(JIRA_EMAIL, JIRA_TOKEN)),
        Needle("servicenow webhook secret", "key bytes", SNOW_WEBHOOK_KEY),
        Needle("servicenow webhook secret", "key hex", SNOW_WEBHOOK_KEY.hex().encode()),
    ]
    for name, key in {**MASTER_KEYS, **keys}.items():
        found += [
            Needle(name, "base64", base64.b64encode(key)),
            Needle(name, "urlsafe base64", base64.urlsafe_b64encode(key)),
            Needle(name, "unpadded base64", base64.b64encode(key).rstrip(b"=")),
            Needle(name, "raw bytes", key),
            Needle(name, "hex", key.hex().encode()),
        ]
    return found


@dataclass
class Evidence:
    """Everything the product emitted, each with where it came from."""

    items: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, where: str, content: str | bytes) -> None:
        self.items.append((where, content.encode() if isinstance(content, str) else content))

    def cli(
        self,
        im: Im,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        code: int | None = 0,
    ) -> Result:
        """``im ARGS`` in-process; stdout and stderr kept. ``code`` None: any exit code."""
        result = im(*args, input=input, env=env)
        label = "im " + " ".join(_redacted(args))
        self.add(f"{label} (stdout)", result.stdout)
        self.add(f"{label} (stderr)", result.stderr)
        assert code is None or result.exit_code == code, (
            f"{label} exited {result.exit_code}: {result.stderr}"
        )
        return result

    def response(self, label: str, response: httpx.Response) -> httpx.Response:
        head = f"HTTP {response.status_code}\n" + "".join(
            f"{k}: {v}\n" for k, v in response.headers.items()
        )
        self.add(f"{label} (answer)", head.encode() + response.content)
        return response

    def file(self, label: str, path: Path) -> None:
        assert path.exists(), f"{label}: {path} was never written"
        self.add(label, path.read_bytes())

    def database(self, label: str, db_path: Path) -> None:
        """The database file and its side files, as bytes."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            side = Path(f"{db_path}{suffix}")
            if side.exists():
                self.add(f"{label}: {side.name}", side.read_bytes())


def _redacted(args: tuple[str, ...]) -> list[str]:
    values = set(SECRETS.values())
    return ["<secret>" if a in values else a for a in args]


def leaks(evidence: Evidence, looked_for: list[Needle]) -> list[tuple[Needle, str, str]]:
    """Each place a needle was found: the needle, where, and a little context."""
    found = []
    for where, content in evidence.items:
        for needle in looked_for:
            at = content.find(needle.value)
            if at >= 0:
                around = content[max(0, at - 60) : at + len(needle.value) + 30]
                found.append((needle, where, repr(around)))
    return found


def assert_clean(evidence: Evidence, looked_for: list[Needle]) -> None:
    assert len(evidence.items) > 300, "too little was collected to mean anything"
    found = [
        f"{n.secret} ({n.form}) in {where}: …{around}…"
        for n, where, around in leaks(evidence, looked_for)
    ]
    assert not found, "secrets leaked:\n" + "\n".join(found)


def assert_search_works(deliberate: Evidence, looked_for: list[Needle], wanted: set[str]) -> None:
    """The same search finds each secret in ``wanted`` where the product shows it on purpose
    (or, for a master key, in its key file): a broken search cannot pass silently."""
    found = {needle.secret for needle, _, _ in leaks(deliberate, looked_for)}
    assert wanted <= found, f"the search missed {wanted - found}"


# -- shared steps --------------------------------------------------------------------------------


def simulators(webhook_base: str, clock: FrozenClock | None = None) -> dict[str, Simulator]:
    """The three simulators, their integration accounts holding our secrets."""
    options: dict[str, Any] = {} if clock is None else {"clock": clock}
    return {
        "prod-snow": ServiceNowSimulator(
            accounts={SNOW_USER: SNOW_PASSWORD, "agent": "agent"},
            webhook_url=f"{webhook_base}/webhooks/prod-snow",
            webhook_secret=SNOW_WEBHOOK_SECRET,
            **options,
        ),
        "prod-jira": JiraSimulator(
            users=[replace(JIRA_USERS[0], api_token=JIRA_TOKEN), *JIRA_USERS[1:]],
            webhook_url=f"{webhook_base}/webhooks/prod-jira",
            webhook_secret=JIRA_WEBHOOK_SECRET,
            search_lag=0,
            **options,
        ),
        "prod-pd": PagerDutySimulator(
            tokens={PD_TOKEN: PD_EMAIL, "agent-token": "agent@example.com"},
            webhook_url=f"{webhook_base}/webhooks/prod-pd",
            webhook_secret=PD_WEBHOOK_SECRET,
            **options,
        ),
    }


def secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def create_integrations(
    ev: Evidence, im: Im, urls: dict[str, str], files: Path, variant: int
) -> None:
    """The three integrations, bidirectional, their secrets given every way a person can:
    environment variables, files and standard input (the prompt), differently per variant."""
    snow = ("--type", "servicenow", "--url", urls["prod-snow"], "--username", SNOW_USER)
    jira = (
        "--type", "jira", "--url", urls["prod-jira"], "--email", JIRA_EMAIL, "--project", "OPS",
        "--client-key", "im-sim-jira",
    )  # fmt: skip
    pd = (
        "--type", "pagerduty", "--url", urls["prod-pd"], "--from-email", PD_EMAIL,
        "--service", "PSVC001", "--escalation-policy", "PEP0001",
    )  # fmt: skip
    if variant == 1:
        ev.cli(
            im, "integration", "create", "prod-snow", *snow,
            "--webhook-secret-file", secret_file(files, "snow-webhook", SNOW_WEBHOOK_SECRET),
            env={"IM_PASSWORD": SNOW_PASSWORD},
        )  # fmt: skip
        ev.cli(
            im, "integration", "create", "prod-jira", *jira,
            "--api-token-file", secret_file(files, "jira-token", JIRA_TOKEN),
            env={"IM_WEBHOOK_SECRET": JIRA_WEBHOOK_SECRET},
        )  # fmt: skip
        ev.cli(
            im, "integration", "create", "prod-pd", *pd, "--api-token", "-",
            "--webhook-secret", "-", input=f"{PD_TOKEN}\n{PD_WEBHOOK_SECRET}\n",
        )  # fmt: skip
    else:
        ev.cli(
            im, "integration", "create", "prod-snow", *snow, "--password", "-",
            input=f"{SNOW_PASSWORD}\n", env={"IM_WEBHOOK_SECRET": SNOW_WEBHOOK_SECRET},
        )  # fmt: skip
        ev.cli(
            im, "integration", "create", "prod-jira", *jira,
            "--webhook-secret-file", secret_file(files, "jira-webhook", JIRA_WEBHOOK_SECRET),
            env={"IM_API_TOKEN": JIRA_TOKEN},
        )  # fmt: skip
        ev.cli(
            im, "integration", "create", "prod-pd", *pd,
            "--api-token-file", secret_file(files, "pd-token", PD_TOKEN),
            "--webhook-secret", "-", input=f"{PD_WEBHOOK_SECRET}\n",
        )  # fmt: skip
    for name in NAMES:
        ev.cli(im, "integration", "configure", name, "--direction", "bidirectional")
    ev.cli(im, "integration", "configure", "prod-jira", "--conflict-strategy", "manual-review")


def bad_input(ev: Evidence, im: Im) -> None:
    """URLs a person may get wrong, some carrying a credential, and secret files that do not
    work: each refused without echoing what it carried."""
    for url in (
        # regression: a "/" in the password ended the netloc early, and the URL was stored
        # and echoed with the password in it
        f"https://{SNOW_USER}:{SNOW_PASSWORD}@acme.service-now.com",
        f"https://{SNOW_USER}:{quote(SNOW_PASSWORD, safe='')}@acme.service-now.com",
        f"http://{SNOW_USER}:{quote(WRONG_SNOW_PASSWORD, safe='')}@127.0.0.1:1",
        f"ftp://{SNOW_USER}:{WRONG_SNOW_PASSWORD}@acme.service-now.com",
        f"https://acme.service-now.com/?password={quote_plus(SNOW_PASSWORD)}",
        f"https://acme.service-now.com/#{SNOW_PASSWORD}",
        f"http://acme.service-now.com/{SNOW_PASSWORD}",
        "not a url",
    ):
        result = ev.cli(im, "integration", "configure", "prod-snow", "--url", url, code=None)
        assert result.exit_code == 2, (url, result.stdout)
    result = ev.cli(
        im, "integration", "create", "other-snow", "--type", "servicenow",
        "--url", f"https://{SNOW_USER}:{SNOW_PASSWORD}@acme.service-now.com",
        "--username", SNOW_USER, env={"IM_PASSWORD": SNOW_PASSWORD}, code=None,
    )  # fmt: skip
    assert result.exit_code == 2
    for args in (
        ("--password-file", "/nonexistent/snow-password"),
        ("--password-file", "/dev/null"),
        ("--api-token", PD_TOKEN),  # not a ServiceNow secret
        ("--password", SNOW_PASSWORD, "--password-file", "/dev/null"),
        ("--password", f"{SNOW_PASSWORD}\t"),  # not printable
    ):
        assert ev.cli(im, "integration", "configure", "prod-snow", *args, code=None).exit_code


def bad_webhooks(ev: Evidence, client: httpx.Client, now: datetime) -> None:
    """For each integration: a garbage signature, then well-formed ones made with the wrong
    secret. All are refused (401)."""
    body = json.dumps({"event": {"id": "hyg-1", "event_type": "incident.triggered"}}).encode()
    stamp = now.astimezone(UTC)
    webhook_id = {"webhook-id": "msg_hyg", "webhook-timestamp": str(int(stamp.timestamp()))}
    jwt = signatures.connect_jwt(
        WRONG_WEBHOOK_SECRET, "im-sim-jira", "POST", "/webhooks/prod-jira", "", stamp
    )
    attempts: dict[str, list[tuple[dict[str, str], str]]] = {
        "prod-snow": [
            ({**webhook_id, "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl"}, ""),
            ({**webhook_id, "webhook-signature": signatures.standard_webhooks_sign(
                WRONG_SNOW_WEBHOOK_SECRET, "msg_hyg", stamp, body)}, ""),
        ],
        "prod-jira": [
            ({"Authorization": "JWT not.a.jwt"}, ""),
            ({"Authorization": f"JWT {jwt}"}, ""),
            ({}, f"jwt={jwt}"),
            ({"X-Hub-Signature": signatures.hub_signature(WRONG_WEBHOOK_SECRET, body)}, ""),
        ],
        "prod-pd": [
            ({"X-PagerDuty-Signature": "v1=00ff"}, ""),
            ({"X-PagerDuty-Signature": signatures.pagerduty_signature(
                WRONG_WEBHOOK_SECRET, body)}, ""),
        ],
    }  # fmt: skip
    for name, tries in attempts.items():
        for number, (headers, query) in enumerate(tries, 1):
            answer = ev.response(
                f"bad webhook {number} to {name}",
                client.post(
                    f"/webhooks/{name}" + (f"?{query}" if query else ""),
                    content=body,
                    headers={"Content-Type": "application/json", **headers},
                ),
            )
            assert answer.status_code == 401, (name, number, answer.text)


def api_sweep(ev: Evidence, client: httpx.Client, token: str, incidents: int) -> None:
    """The REST API: no token, a wrong one, then every GET route of its OpenAPI document and
    the calls that reach the external systems, with a valid one."""
    base = "/api/v1"
    assert ev.response("API without a token", client.get(f"{base}/incidents")).status_code == 401
    for label, header in (
        ("API with a wrong token", f"Bearer {wrong_token(token)}"),
        ("API with a token in the wrong scheme", f"Basic {token}"),
    ):
        answer = client.get(f"{base}/integrations", headers={"Authorization": header})
        assert ev.response(label, answer).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    document = ev.response("GET openapi.json", client.get(f"{base}/openapi.json")).json()
    listed = client.get(f"{base}/conflicts", params={"status": "resolved"}, headers=auth).json()
    fills = {
        "{incident_id}": [f"INC-{n}" for n in range(1, incidents + 1)],
        "{ref}": list(NAMES),
        "{conflict}": [c["id"] for c in listed] or ["conflict-1"],
    }
    routes = 0
    for path, operations in document["paths"].items():
        if "get" not in operations:
            continue
        if path.startswith("/conflicts/"):
            path = path.replace("{ref}", "{conflict}")
        concrete = [path]
        for hole, values in fills.items():
            concrete = (
                [p.replace(hole, v) for p in concrete for v in values] if hole in path else concrete
            )
        for each in concrete:
            answer = ev.response(f"GET {each}", client.get(f"{base}{each}", headers=auth))
            assert answer.status_code < 500, (each, answer.text)
            routes += 1
    assert routes >= 20, routes
    for name in NAMES:
        ev.response(
            f"POST {name}/test", client.post(f"{base}/integrations/{name}/test", headers=auth)
        )
    for name in NAMES:
        answer = client.post(
            f"{base}/integrations/{name}/reconcile", json={"auto_heal": False}, headers=auth
        )
        ev.response(f"POST {name}/reconcile", answer)
    for route in ("/metrics", "/healthz", "/readyz"):
        ev.response(f"GET {route}", client.get(route))


def wrong_token(token: str) -> str:
    """A token with the right prefix (so it is looked up) and a wrong rest."""
    return token[:-6] + "BADBAD"


def read_everything(ev: Evidence, im: Im, incidents: int) -> None:
    """Every read command, as a table and as JSON."""
    for fmt in ("table", "json"):
        f = ("--format", fmt)
        ev.cli(im, "integration", "list", *f)
        ev.cli(im, "incident", "list", "--all", *f)
        ev.cli(im, "token", "list", *f)
        ev.cli(im, "access", "list", *f)
        ev.cli(im, "audit", "--limit", "100000", *f)
        for status in ("pending", "resolved", "ignored"):
            ev.cli(im, "conflict", "list", "--status", status, *f)
        for conflict in _conflicts(im, "resolved"):
            ev.cli(im, "conflict", "show", conflict["id"], *f)
        for n in range(1, incidents + 1):
            ev.cli(im, "incident", "show", f"INC-{n}", *f)
            ev.cli(im, "incident", "history", f"INC-{n}", *f)
        for name in NAMES:
            ev.cli(im, "integration", "get", name, *f)
            ev.cli(im, "integration", "sync-status", name, *f)
            ev.cli(im, "integration", "events", name, "--limit", "1000", *f)
            ev.cli(im, "integration", "dlq", name, *f)
            ev.cli(im, "integration", "field-ownership", "list", name, *f)
            ev.cli(im, "integration", "field-mapping", "list", name, *f)
            ev.cli(im, "integration", "reconcile", "history", name, *f)
            # (in the in-process world `test` cannot reach the simulators: its error is searched)
            ev.cli(im, "integration", "test", name, *f, code=None)
        ev.cli(im, "doctor", *f, code=None)
    ev.cli(im, "access", "policy", "show", code=None)


def _conflicts(im: Im, status: str) -> list[dict[str, Any]]:
    return list(json.loads(im.ok("conflict", "list", "--status", status, "--format", "json")))


def webhook_setup(ev: Evidence, deliberate: Evidence, im: Im, public_url: str) -> str:
    """`webhook-setup` for each integration, then with --show-secret (the deliberate
    exception); the ServiceNow webhook secret it showed."""
    for name in NAMES:
        ev.cli(im, "integration", "webhook-setup", name, "--public-url", public_url)
        out = deliberate.cli(
            im, "integration", "webhook-setup", name, "--public-url", public_url, "--show-secret"
        ).stdout
        if name == "prod-snow":
            found = re.search(r"whsec_[A-Za-z0-9+/=]+", out)
            assert found, out
            snow = found.group(0)
    return snow


def rotate_webhook_secrets(
    ev: Evidence, deliberate: Evidence, im: Im, sims: dict[str, Simulator], public_url: str
) -> dict[str, str]:
    """`im integration rotate-secret` every way it is given: generated (ServiceNow), from
    standard input (PagerDuty), as a flag value (Jira); the simulators sign with the new
    secrets from now on. The new secrets, by name."""
    ev.cli(im, "integration", "rotate-secret", "prod-snow", "--grace", "1h")
    ev.cli(
        im, "integration", "rotate-secret", "prod-pd", "--new-secret", "-",
        input=SECRETS["rotated pagerduty webhook secret"] + "\n",
    )  # fmt: skip
    ev.cli(
        im, "integration", "rotate-secret", "prod-jira",
        "--new-secret", SECRETS["rotated jira webhook secret"], "--grace", "0",
    )  # fmt: skip
    snow = webhook_setup(ev, deliberate, im, public_url)
    assert snow != SNOW_WEBHOOK_SECRET
    sims["prod-snow"].webhook_secret = snow
    sims["prod-jira"].webhook_secret = SECRETS["rotated jira webhook secret"]
    sims["prod-pd"].webhook_secret = SECRETS["rotated pagerduty webhook secret"]
    ev.cli(im, "integration", "rotate-secret", "prod-snow", "--finish")
    return {"rotated servicenow webhook secret": snow}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def query(db_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as db:
        return list(db.execute(sql, params))


def unsent(db_path: Path, name: str | None = None) -> int:
    sql = (
        "SELECT count(*) FROM outbox o JOIN integrations i ON i.id = o.integration_id "
        "WHERE o.state NOT IN ('done', 'cancelled')"
    )
    rows = query(db_path, sql + " AND i.name = ?", name) if name else query(db_path, sql)
    return int(rows[0][0])


def external_id(db_path: Path, name: str, incident: int) -> str:
    [(found,)] = query(
        db_path,
        "SELECT l.external_id FROM links l JOIN integrations i ON i.id = l.integration_id "
        "WHERE i.name = ? AND l.incident_id = ?",
        name,
        incident,
    )
    return str(found)


def paused(db_path: Path, name: str) -> bool:
    rows = query(
        db_path,
        "SELECT s.pause_reason FROM integration_state s JOIN integrations i "
        "ON i.id = s.integration_id WHERE i.name = ?",
        name,
    )
    return bool(rows and rows[0][0])


def attempts(db_path: Path, name: str) -> int:
    rows = query(
        db_path,
        "SELECT max(o.attempts) FROM outbox o JOIN integrations i ON i.id = o.integration_id "
        "WHERE i.name = ? AND o.state NOT IN ('done', 'cancelled')",
        name,
    )
    return int(rows[0][0] or 0)


def shown(im: Im, incident: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(im.ok("incident", "show", incident, "--format", "json"))
    return found


def agent(name: str, url: str) -> httpx.Client:
    """A person's account in the external system (not the integration's)."""
    if name == "prod-pd":
        return httpx.Client(
            base_url=url,
            headers={"Authorization": "Token token=agent-token", "From": "agent@example.com"},
        )
    creds = ("agent", "agent") if name == "prod-snow" else ("agent@example.com", "agent-token")
    return httpx.Client(base_url=url, auth=creds)


def without_otel() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


# -- 1. real processes ---------------------------------------------------------------------------


@dataclass
class Real:
    """The first scenario's world: the CLI on the real clock, a daemon process, simulators on
    real sockets."""

    ev: Evidence
    deliberate: Evidence
    im: Im
    db_path: Path
    sims: dict[str, Simulator]
    urls: dict[str, str]
    daemon_url: str
    otel: dict[str, str]

    def agent(self, name: str) -> httpx.Client:
        return agent(name, self.urls[name])

    def external(self, name: str, incident: int = 1) -> str:
        return external_id(self.db_path, name, incident)

    def process(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``im ARGS`` as a process of its own, exporting spans to the console (stderr)."""
        done = subprocess.run(
            [sys.executable, "-m", "im", "--db", str(self.db_path), *args],
            capture_output=True, text=True, timeout=60,
            env=env or {**self.otel, "OTEL_TRACES_EXPORTER": "console"},
        )  # fmt: skip
        label = "process im " + " ".join(_redacted(args))
        self.ev.add(f"{label} (stdout)", done.stdout)
        self.ev.add(f"{label} (stderr)", done.stderr)
        return done


def test_a_real_daemon_and_real_processes_leak_no_secret(
    tmp_path: Path, collector: tuple[str, list[bytes]]
) -> None:
    ev, deliberate = Evidence(), Evidence()
    key_file = key_file_path()
    key_file.parent.mkdir(parents=True, mode=0o700)
    key_file.write_text(b64(MASTER_KEYS["master key (key file)"]) + "\n")
    key_file.chmod(0o600)
    db_path = tmp_path / "im.db"
    im = Im(db_path, SystemClock())  # type: ignore[arg-type]
    ev.cli(im, "init")
    port = free_port()
    daemon_url = f"http://127.0.0.1:{port}"
    sims = simulators(daemon_url)
    endpoint, otlp_bodies = collector
    log_file = tmp_path / "daemon.log"
    out, err = tmp_path / "daemon.stdout", tmp_path / "daemon.stderr"
    otel = {
        **without_otel(),
        "OTEL_TRACES_EXPORTER": "console,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with ExitStack() as stack:
        urls = {name: stack.enter_context(serve_in_thread(sim)).url for name, sim in sims.items()}
        create_integrations(ev, im, urls, tmp_path, variant=1)
        token = deliberate.cli(im, "token", "create", "ci").stdout.strip()
        with out.open("w") as stdout, err.open("w") as stderr:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "im", "--db", str(db_path), "daemon", "--port", str(port),
                 "--public-url", daemon_url, "--log-file", str(log_file), "--log-level", "debug"],
                stdout=stdout, stderr=stderr, env=otel,
            )  # fmt: skip
        try:
            wait_for("the daemon", lambda: _ready(daemon_url, daemon), timeout=20)
            world = Real(ev, deliberate, im, db_path, sims, urls, daemon_url, otel)
            keys, rotated = scenario_with_a_daemon(world, token)
            read_everything(ev, im, incidents=1)
            bad_input(ev, im)
            ev.database("database while the daemon runs", db_path)
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=15)
    assert code == 0
    ev.file("daemon stdout", out)
    ev.file("daemon stderr (log lines and console spans)", err)
    ev.file("daemon --log-file", log_file)
    log = log_file.read_text()
    assert "event=outbound.failed" in log and "event=daemon.stopped" in log
    assert '"sync.outbound"' in err.read_text() and '"sync.inbound"' in err.read_text()
    wait_for("the OTLP export", lambda: bool(otlp_bodies), timeout=5)
    for number, body in enumerate(otlp_bodies):
        ev.add(f"OTLP export {number}", body)
    ev.database("database after the daemon stopped", db_path)
    deliberate.file("the key file", key_file)  # where the key belongs: a control

    looked_for = needles(
        {"api token": token, "wrong api token": wrong_token(token), **rotated}, keys
    )
    assert_search_works(
        deliberate, looked_for, {"api token", "rotated servicenow webhook secret",
                                 "rotated jira webhook secret", "rotated pagerduty webhook secret",
                                 "master key (key file, rotation 2)"},
    )  # fmt: skip
    assert_clean(ev, looked_for)


def _ready(url: str, daemon: subprocess.Popen[bytes]) -> bool:
    assert daemon.poll() is None, "the daemon exited"
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _file_key() -> bytes:
    return base64.b64decode(key_file_path().read_text().strip())


def scenario_with_a_daemon(w: Real, token: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """Sync both ways, key and secret rotations, a conflict, refused credentials, 500s, bad
    webhooks, the API, reconcile processes. The master keys rotation made and the webhook
    secrets rotation set, by name."""
    ev, im, db_path, sims = w.ev, w.im, w.db_path, w.sims
    # out: a platform incident reaches all three; their webhooks come back as echoes
    ev.cli(im, "incident", "create", "--title", "Checkout API 5xx", "--severity", "sev2")
    wait_for("the creates", lambda: unsent(db_path) == 0 and len(_links(db_path)) == 3)
    # the master key is rotated under the running daemon, twice
    keys = {}
    for number, fmt in enumerate(("table", "json"), 1):
        ev.cli(im, "key", "rotate", "--format", fmt)
        keys[f"master key (key file, rotation {number})"] = _file_key()
    # in: agents change things in Jira, ServiceNow and PagerDuty
    with w.agent("prod-jira") as client:
        client.put(
            f"/rest/api/3/issue/{w.external('prod-jira')}",
            json={"fields": {"summary": "renamed in Jira"}},
        )
    wait_for("the Jira edit", lambda: shown(im, "INC-1")["title"] == "renamed in Jira")
    rotated = rotate_webhook_secrets(ev, w.deliberate, im, sims, w.daemon_url)
    with w.agent("prod-snow") as client:
        client.patch(f"/api/now/table/incident/{w.external('prod-snow')}", json={"state": "2"})
    wait_for("the ServiceNow edit", lambda: shown(im, "INC-1")["status"] == "acknowledged")
    with w.agent("prod-pd") as client:
        client.post(
            f"/incidents/{w.external('prod-pd')}/notes", json={"note": {"content": "paged DBA"}}
        )
    wait_for("the PagerDuty note", lambda: "paged DBA" in json.dumps(shown(im, "INC-1")))
    wait_for("everything sent", lambda: unsent(db_path) == 0)

    # a conflict: an agent edits the Jira title, the platform changes it before the agent's
    # webhook arrives (held back until the daemon has tried to send the platform's title)
    jira_sim = sims["prod-jira"]
    jira_sim.faults.update({"delay_webhooks": 600})
    with w.agent("prod-jira") as client:
        client.put(
            f"/rest/api/3/issue/{w.external('prod-jira')}",
            json={"fields": {"summary": "agent title"}},
        )
    ev.cli(im, "incident", "update", "INC-1", "--title", "platform title")
    wait_for("the update tried", lambda: unsent(db_path, "prod-jira") == 0)
    jira_sim.faults.update({"delay_webhooks": 0})
    for delivery in list(jira_sim.webhooks.pending):
        delivery.due_at = jira_sim.clock.now()
    wait_for("the conflict", lambda: bool(_conflicts(im, "pending")))
    [pending] = _conflicts(im, "pending")
    for fmt in ("table", "json"):
        ev.cli(im, "conflict", "show", pending["id"], "--format", fmt)
    ev.cli(im, "conflict", "resolve", pending["id"], "--use-platform")
    wait_for("the resolution sent", lambda: unsent(db_path, "prod-jira") == 0)

    # a wrong PagerDuty token: 401, sending pauses; the right one again resumes it
    ev.cli(
        im, "integration", "configure", "prod-pd",
        "--api-token-file", secret_file(db_path.parent, "wrong-pd", WRONG_PD_TOKEN),
    )  # fmt: skip
    ev.cli(im, "incident", "update", "INC-1", "--title", "while PagerDuty refuses")
    wait_for("the 401", lambda: paused(db_path, "prod-pd"))
    for fmt in ("table", "json"):
        ev.cli(im, "integration", "test", "prod-pd", "--format", fmt, code=1)
        ev.cli(im, "integration", "sync-status", "prod-pd", "--format", fmt)
    debug = w.process("integration", "test", "prod-pd", env={**without_otel(), "IM_DEBUG": "1"})
    assert debug.returncode == 1
    ev.cli(im, "integration", "configure", "prod-pd", "--api-token", "-", input=f"{PD_TOKEN}\n")
    wait_for("PagerDuty resumed", lambda: unsent(db_path, "prod-pd") == 0)

    # a wrong ServiceNow password seen by `test` and `doctor`, then put right with the flag
    ev.cli(
        im, "integration", "configure", "prod-snow", "--password", "-",
        input=f"{WRONG_SNOW_PASSWORD}\n",
    )  # fmt: skip
    for fmt in ("table", "json"):
        ev.cli(im, "integration", "test", "prod-snow", "--format", fmt, code=1)
        ev.cli(im, "doctor", "--format", fmt, code=1)
    ev.cli(im, "integration", "configure", "prod-snow", "--password", SNOW_PASSWORD)

    # webhooks that are not authentic, and the API with no, a wrong and a valid token
    with httpx.Client(base_url=w.daemon_url, timeout=10) as client:
        bad_webhooks(ev, client, datetime.now(UTC))
        api_sweep(ev, client, token, incidents=1)

    # edits in ServiceNow whose webhooks are lost, found and healed by reconcile processes
    sims["prod-snow"].faults.update({"drop_webhooks": 1})
    with w.agent("prod-snow") as client:
        client.patch(
            f"/api/now/table/incident/{w.external('prod-snow')}",
            json={"short_description": "agent title", "work_notes": "rolled back"},
        )
    sims["prod-snow"].faults.update({"drop_webhooks": 0})
    for mode, fmt in (("--dry-run", "json"), ("--auto-heal", "table")):
        done = w.process("integration", "reconcile", "prod-snow", mode, "--format", fmt)
        assert done.returncode == 0, done.stderr
        assert '"sync.reconcile"' in done.stderr
        if fmt == "json":
            assert json.loads(done.stdout)["discrepancies"]
    ev.cli(im, "integration", "reconcile", "schedule", "prod-snow", "--interval", "1h")

    # Jira answers 500: the attempt fails, is logged, and waits for its retry in 30 s
    sims["prod-jira"].faults.update({"error_rate": 1})
    ev.cli(im, "incident", "update", "INC-1", "--priority", "p1")
    wait_for("the failed attempt", lambda: attempts(db_path, "prod-jira") >= 1)
    sims["prod-jira"].faults.update({"error_rate": 0})
    return keys, rotated


def _links(db_path: Path) -> list[tuple[Any, ...]]:
    return query(db_path, "SELECT integration_id FROM links WHERE incident_id = 1")


# -- 2. the in-process world on a frozen clock ---------------------------------------------------


@pytest.fixture
def daemon_log(tmp_path: Path) -> Iterator[tuple[Path, Callable[[str, dict[str, Any]], None]]]:
    """The daemon's logfmt logger at debug, to a file, as `im daemon` sets it up, and the
    callback the daemon gives its dispatcher."""
    path = tmp_path / "daemon.log"
    logger = logs.setup("debug", path)

    def log(name: str, fields: dict[str, Any]) -> None:
        logs.event(logger, name, fields, logging.WARNING if "failed" in name else logging.INFO)

    yield path, log
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()


def test_the_in_process_world_leaks_no_secret(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spans: InMemorySpanExporter,
    daemon_log: tuple[Path, Callable[[str, dict[str, Any]], None]],
) -> None:
    monkeypatch.setenv("IM_MASTER_KEY", b64(MASTER_KEYS["master key ($IM_MASTER_KEY)"]))
    ev, deliberate = Evidence(), Evidence()
    clock = FrozenClock(START)
    db_path = tmp_path / "im.db"
    im = Im(db_path, clock)
    ev.cli(im, "init")
    sims = simulators("http://im", clock)

    def transport_for(integration: Mapping[str, Any]) -> httpx.BaseTransport:
        return sims[integration["name"]].transport()

    im.transport_for = transport_for
    log_file, log = daemon_log
    receiver = WebhookReceiver(db_path, clock)
    app = create_app(
        lambda: (True, ""),
        webhook=receiver.handle,
        api=create_api(db_path, clock, transport_for),
        metrics=MetricsEndpoint(db_path, clock, loopback=True).handle,
    )
    bridge = ASGIBridge(app)
    db, applier_db = open_database(db_path), open_database(db_path)
    two = Two(
        im,
        clock,
        sims,
        httpx.Client(transport=bridge, base_url="http://im"),
        Dispatcher(db, clock, transport_for=transport_for, sleep=clock.advance, log=log),
        Applier(applier_db, clock, transport_for=transport_for, sleep=clock.advance),
    )
    try:
        urls = {name: f"http://127.0.0.1:{n}" for n, name in enumerate(NAMES, 1)}
        create_integrations(ev, im, urls, tmp_path, variant=2)
        token = deliberate.cli(im, "token", "create", "ops").stdout.strip()
        rotated, incidents = scenario_in_process(ev, deliberate, two, token, monkeypatch)
        api_sweep(ev, two.daemon, token, incidents)
        read_everything(ev, im, incidents)
        bad_input(ev, im)
        webhook_setup(ev, deliberate, im, "http://im")
        ev.database("database in use", db_path)
    finally:
        two.dispatcher.close()
        two.applier.close()
        receiver.close()
        two.daemon.close()
        bridge.shutdown()
        db.close()
        applier_db.close()
        for sim in sims.values():
            sim.shutdown()
    ev.database("database closed", db_path)
    ev.file("daemon log", log_file)
    assert "event=outbound.failed" in log_file.read_text()
    exported = spans.get_finished_spans()
    assert {"sync.outbound", "sync.inbound", "sync.reconcile", "sync.reconcile.item"} <= {
        s.name for s in exported
    }
    for span in exported:
        ev.add(f"span {span.name}", span.to_json())

    looked_for = needles({"api token": token, "wrong api token": wrong_token(token), **rotated}, {})
    assert_search_works(
        deliberate, looked_for, {"api token", "rotated servicenow webhook secret",
                                 "rotated jira webhook secret", "rotated pagerduty webhook secret"},
    )  # fmt: skip
    assert_clean(ev, looked_for)


def scenario_in_process(
    ev: Evidence, deliberate: Evidence, two: Two, token: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], int]:
    """Sync both ways, conflicts, secret and key rotation, every kind of failure through the
    retry schedule to the DLQ, bad webhooks, reconcile. The webhook secrets rotation set, and
    the number of incidents made."""
    im, clock = two.im, two.clock
    auth = {"Authorization": f"Bearer {token}"}

    def snow(n: int, body: dict[str, str]) -> None:
        with two.agent("prod-snow") as client:
            made = client.patch(
                f"/api/now/table/incident/{two.external_id('prod-snow', n)}", json=body
            )
        assert made.is_success, made.text

    def jira(n: int, summary: str) -> None:
        with two.agent("prod-jira") as client:
            issue = two.external_id("prod-jira", n)
            made = client.put(f"/rest/api/3/issue/{issue}", json={"fields": {"summary": summary}})
        assert made.is_success, made.text

    def pd_note(n: int, text: str) -> None:
        with two.agent("prod-pd") as client:
            pd = two.external_id("prod-pd", n)
            made = client.post(f"/incidents/{pd}/notes", json={"note": {"content": text}})
        assert made.is_success, made.text

    def faults(name: str, **changes: float) -> None:
        two.sims[name].faults.update(changes)

    # both ways: a platform incident out to all three, an issue made in Jira in, edits in
    ev.cli(
        im, "incident", "create", "--title", "Checkout API 5xx", "--description", "502s",
        "--assigned-to", "alice@example.com",
    )  # fmt: skip
    two.sync()
    clock.advance(5)
    jira_issue(two, "Found by a human")
    two.sync()
    clock.advance(5)
    snow(1, {"work_notes": "failing over"})
    pd_note(1, "paged the DBA")
    two.sync()

    # conflicts: manual review in Jira (resolved by hand), last write wins in ServiceNow
    clock.advance(10)
    ev.cli(im, "incident", "update", "INC-1", "--title", "platform title")
    clock.advance(2)
    jira(1, "title from a Jira agent")
    snow(1, {"short_description": "title from a ServiceNow agent"})
    two.sync()
    [pending] = _conflicts(im, "pending")
    ev.cli(im, "conflict", "resolve", pending["id"], "--use-external")
    two.sync()
    assert len(_conflicts(im, "resolved")) >= 2

    # webhook secrets rotated; the systems sign with the new ones and are believed
    clock.advance(5)
    rotated = rotate_webhook_secrets(ev, deliberate, im, two.sims, "http://im")
    snow(1, {"state": "2"})
    jira(1, "after the rotation")
    pd_note(1, "after the rotation")
    two.sync()
    assert shown(im, "INC-1")["title"] == "after the rotation"

    # 500s from Jira through every retry into the DLQ, then sent again from there
    faults("prod-jira", error_rate=1)
    ev.cli(im, "incident", "update", "INC-1", "--priority", "p1")
    two.dispatcher.step()
    for wait in (30, 120, 480, 1800):
        clock.advance(wait)
        two.dispatcher.step()
    faults("prod-jira", error_rate=0)
    [entry] = json.loads(im.ok("integration", "dlq", "prod-jira", "--format", "json"))
    ev.cli(im, "integration", "dlq-retry", "prod-jira", entry["id"])
    two.sync()
    # PagerDuty refuses for good (422): straight to the DLQ, discarded
    faults("prod-pd", permanent_error=422)
    ev.cli(im, "incident", "update", "INC-1", "--title", "refused by PagerDuty")
    two.sync()
    faults("prod-pd", permanent_error=0)
    assert json.loads(im.ok("integration", "dlq", "prod-pd", "--format", "json"))
    ev.cli(im, "integration", "dlq-discard", "prod-pd", "--all")
    # a create whose answer is lost (in doubt), found again by its correlation key
    faults("prod-snow", write_timeout_rate=1)
    ev.cli(im, "incident", "create", "--title", "in doubt")
    two.dispatcher.step()
    faults("prod-snow", write_timeout_rate=0)
    clock.advance(30)
    two.sync()
    assert two.external_id("prod-snow", 3)
    # 429: PagerDuty pauses the integration; it resumes after Retry-After
    faults("prod-pd", rate_limit_rate=1)
    ev.cli(im, "incident", "update", "INC-1", "--severity", "sev1")
    two.dispatcher.step()
    assert paused(im.db_path, "prod-pd")
    faults("prod-pd", rate_limit_rate=0)
    clock.advance(60)
    two.sync()

    # wrong credentials: 401, the integration pauses; `test` says why; the right ones again
    files = im.db_path.parent
    ev.cli(
        im, "integration", "configure", "prod-pd",
        "--api-token-file", secret_file(files, "wrong-pd", WRONG_PD_TOKEN),
    )  # fmt: skip
    ev.cli(im, "incident", "update", "INC-1", "--title", "while PagerDuty refuses")
    two.dispatcher.step()
    assert paused(im.db_path, "prod-pd")
    test_pd = two.daemon.post("/api/v1/integrations/prod-pd/test", headers=auth)
    assert ev.response("POST prod-pd/test (401)", test_pd).json()["ok"] is False
    for fmt in ("table", "json"):
        ev.cli(im, "integration", "sync-status", "prod-pd", "--format", fmt)
        ev.cli(im, "doctor", "--format", fmt, code=1)
    ev.cli(im, "doctor", env={"IM_DEBUG": "1"}, code=1)
    clock.advance(1)  # connectors are rebuilt when the integration's updated_at moves
    ev.cli(im, "integration", "configure", "prod-pd", "--api-token", "-", input=f"{PD_TOKEN}\n")
    ev.cli(im, "integration", "configure", "prod-snow", "--password", WRONG_SNOW_PASSWORD)
    test_snow = two.daemon.post("/api/v1/integrations/prod-snow/test", headers=auth)
    assert ev.response("POST prod-snow/test (401)", test_snow).json()["ok"] is False
    ev.cli(im, "doctor", "--format", "json", code=1)
    clock.advance(1)
    ev.cli(
        im, "integration", "configure", "prod-snow",
        "--password-file", secret_file(files, "snow-password", SNOW_PASSWORD),
    )  # fmt: skip
    clock.advance(5)
    two.sync()

    # an edit the platform cannot read back (Jira answers 500): retried, then the DLQ
    faults("prod-jira", drop_webhooks=1)
    made = jira_issue(two, "made by hand")
    faults("prod-jira", drop_webhooks=0)
    clock.advance(5)
    with two.agent("prod-jira") as client:
        client.put(f"/rest/api/3/issue/{made}", json={"fields": {"summary": "edited"}})
    faults("prod-jira", error_rate=1)
    two.deliver()
    for wait in (30, 120, 480, 1800):
        clock.advance(wait)
        two.applier.step()
    faults("prod-jira", error_rate=0)
    dead = json.loads(im.ok("integration", "dlq", "prod-jira", "--format", "json"))
    assert "inbound" in {d["direction"] for d in dead}, dead

    # webhooks that are not authentic, and an authentic one that is not JSON
    bad_webhooks(ev, two.daemon, clock.now())
    body = b"not json"
    signed = signatures.pagerduty_signature(SECRETS["rotated pagerduty webhook secret"], body)
    answer = two.daemon.post(
        "/webhooks/prod-pd", content=body, headers={"X-PagerDuty-Signature": signed}
    )
    assert ev.response("authentic webhook, not JSON", answer).status_code == 400

    # drift: edits whose webhooks are lost, found by a dry run and healed
    faults("prod-snow", drop_webhooks=1)
    clock.advance(30)
    snow(1, {"short_description": "lost title", "work_notes": "rolled back"})
    faults("prod-snow", drop_webhooks=0)
    clock.advance(2)
    ev.cli(im, "integration", "reconcile", "prod-snow", "--dry-run", "--format", "table")
    dry = ev.cli(im, "integration", "reconcile", "prod-snow", "--dry-run", "--format", "json")
    assert json.loads(dry.stdout)["discrepancies"]
    ev.cli(im, "integration", "reconcile", "prod-snow", "--auto-heal", "--format", "json")
    ev.cli(im, "integration", "reconcile", "prod-jira", "--dry-run", "--format", "json")
    ev.cli(im, "integration", "reconcile", "prod-snow", "--dry-run", "--auto-heal", code=2)
    ev.cli(
        im, "integration", "reconcile", "schedule", "prod-snow", "--interval", "1h", "--auto-heal"
    )
    two.sync()

    # the master key is rotated (from $IM_NEW_MASTER_KEY); sync goes on with the new one
    new_key = b64(MASTER_KEYS["master key ($IM_NEW_MASTER_KEY)"])
    ev.cli(im, "key", "rotate", "--format", "json", env={"IM_NEW_MASTER_KEY": new_key})
    monkeypatch.setenv("IM_MASTER_KEY", new_key)
    ev.cli(im, "incident", "update", "INC-1", "--title", "after the key rotation")
    clock.advance(5)
    two.sync()
    with two.agent("prod-pd") as client:
        pd = client.get(f"/incidents/{two.external_id('prod-pd', 1)}").json()["incident"]
    assert pd["title"] == "after the key rotation"
    incidents = len(json.loads(im.ok("incident", "list", "--all", "--format", "json")))
    return rotated, incidents
