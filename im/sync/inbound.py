"""The Inbound Webhook Handler (SPEC §3, §5).

``receive`` runs on the request path: it verifies the delivery, and ``record`` stores it
durably before the answer (202), so nothing authentic is lost and the vendor gets its answer
in milliseconds.
``Applier`` runs off the request path (the daemon ticks it): it parses each stored delivery
with the connector, drops duplicates by delivery id, and applies what it says:

- an event for a record with no link first looks up our correlation key (our own create's
  webhook can come before the link commits); only an in-scope record that is not ours creates
  a platform incident, and only when the direction allows inbound;
- per field: stale events (vendor version not newer than the synced snapshot) are dropped,
  unless our own write went over the edit unseen (then it is a concurrent change); our own
  write coming back (our account, matching an outstanding push) is an echo and is consumed;
  a value the platform already has is no change; ownership or the conflict rules decide the
  rest (a field never synced counts as agreed on empty);
- journal entries are appended once (matched by the vendor's entry id) and never sent back;
- an applied change is a platform change for every other integration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlite_utils import Database

from im import incidents, telemetry
from im.clock import Clock, format_time, parse_time
from im.config import ownership, webhook_secrets
from im.config.connection import ConnectorCache, TransportFor
from im.connectors.base import Connector, ExternalRecord, WebhookEvent, WebhookRequest
from im.connectors.http import MalformedEventError
from im.errors import ImError, SignatureError, StateError, ValidationError
from im.model import (
    SCALAR_FIELDS,
    Direction,
    check_transition,
    incident_display_id,
)
from im.security.signatures import json_body
from im.store import conflicts as conflict_rows
from im.store import dead_letters, links, meta, snapshots, sync_state
from im.store import inbound as rows
from im.store import incidents as incident_rows
from im.store import integrations as integration_rows
from im.store.db import write
from im.sync import conflicts, external, outbound, retry

MAX_BODY = 1024 * 1024
# never stored: they authenticate a delivery, which is checked before it is stored
SENSITIVE_HEADERS = frozenset(
    {"authorization", "cookie", "webhook-signature", "x-hub-signature", "x-pagerduty-signature"}
)
BATCH = 50
IDENTITY = ("event_type", "external_id", "incident_id")  # what _identify records on an event
# how long one send (a read, the writes, the read back) may take: an edit made at most this
# long after one of our writes began may have gone under it
SENDING = 30.0
# how a refusal's reason begins (integration_state.last_rejection; `im doctor` reads it)
NOT_AUTHENTIC = "not authentic"
MALFORMED = "malformed"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _may_move(current: str, status: str, outcome: Outcome) -> bool:
    """Whether the status machine lets the platform go from ``current`` to ``status`` (the
    reason is noted when it does not)."""
    try:
        check_transition(current, status)
    except StateError as exc:
        outcome.notes.append(f"status: {exc.message}")
        return False
    return True


def _error(status: int, code: str, message: str) -> Answer:
    return Answer(status, {"error": {"code": code, "message": message}})


def _without_jwt(query: str) -> str:
    return "&".join(p for p in query.split("&") if p and not p.startswith("jwt="))


@dataclass(frozen=True)
class Receipt:
    """One delivery, checked: what ``record`` writes for it. Either an event row to store
    (answered 202 with its id) or a refusal to count (``answer`` says why)."""

    integration_id: int
    stamp: str
    answer: Answer
    event: dict[str, Any] | None = None
    refusal: str | None = None  # kept with the integration for `im doctor`, never a secret


def receive(
    db: Database,
    clock: Clock,
    integration: Mapping[str, Any],
    connector: Connector,
    request: WebhookRequest,
    accepted: webhook_secrets.Accepted,
) -> Receipt:
    """Verify one delivery with the integration's connector: 401 when it is not authentic,
    400/422 when it is authentic but malformed, 202 otherwise (also for what is then
    ignored). Reads ``db``, writes nothing: ``record`` does, before the answer goes out."""
    now = clock.now()
    stamp = format_time(now)
    integration_id = integration["id"]
    # the current secret, and during a rotation's grace the one it replaced (SPEC §9)
    secrets = accepted(db, integration, now)
    try:
        if not secrets:
            raise SignatureError(
                f"{integration['name']} has no webhook secret: set one with "
                "`im integration configure NAME --webhook-secret-file PATH`"
            )
        connector.verify_webhook(request, secrets, now)
        try:
            problem = connector.malformed(json_body(request.body))
        except ValueError:  # also not UTF-8, nested too deep, a lone surrogate
            problem = "the body is not UTF-8 JSON"
    except SignatureError as exc:
        refusal = f"{NOT_AUTHENTIC}: {exc.message}"
        answer = _error(401, "unauthenticated", exc.message)
        return Receipt(integration_id, stamp, answer, refusal=refusal)
    if problem:  # authentic, but not something the vendor would send
        answer = _error(400 if "JSON" in problem else 422, "malformed", problem)
        return Receipt(integration_id, stamp, answer, refusal=f"{MALFORMED}: {problem}")
    state, outcome = "received", None
    if not integration["enabled"]:
        state, outcome = "ignored", "the integration is disabled"
    elif not Direction(integration["direction"]).receives:
        state, outcome = "ignored", "the integration is outbound only"
    headers = {k: v for k, v in request.headers.items() if k not in SENSITIVE_HEADERS}
    event = {
        "integration_id": integration_id,
        "received_at": stamp,
        "method": request.method,
        "path": request.path,
        "query": _without_jwt(request.query),
        "headers": json.dumps(headers),
        "body": request.body,
        "state": state,
        "outcome": outcome,
        "next_attempt_at": stamp,
    }
    status = "accepted" if state == "received" else "ignored"
    return Receipt(integration_id, stamp, Answer(202, {"status": status}), event=event)


def record(db: Database, receipt: Receipt) -> Answer:
    """Write what receiving one delivery leaves, in the caller's write transaction: the
    stored event (the answer then carries its id), or a refusal counted and kept with the
    integration (a refused delivery leaves no event row)."""
    if receipt.event is None:
        sync_state.count(db, receipt.integration_id, "inbound_failed")
        sync_state.rejected(db, receipt.integration_id, receipt.stamp, receipt.refusal or "")
        return receipt.answer
    event_id = rows.store(db, receipt.event)
    if receipt.event["state"] == "ignored":
        sync_state.count(db, receipt.integration_id, "inbound_ignored")
    return Answer(202, {**receipt.answer.body, "event": event_id})


@dataclass
class Outcome:
    state: str = "applied"  # applied | echo | ignored | duplicate | failed
    incident_id: int | None = None
    applied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Applier:
    """Applies stored deliveries. A plain object: tests step it; the daemon ticks it."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        transport_for: TransportFor | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self._cache = ConnectorCache(db, transport_for=transport_for, sleep=sleep)

    def close(self) -> None:
        self._cache.close()

    def step(self) -> int:
        """Apply the deliveries that are due. Returns how many were settled."""
        stamp = format_time(self.clock.now())
        settled = 0
        for event in rows.due(self.db, stamp, BATCH):
            with telemetry.span("sync.inbound", None, Direction.INBOUND):
                try:
                    if self._one(event):
                        settled += 1
                except Exception as exc:  # one event that cannot be applied must not stop the rest
                    self._fail(event, exc)
        return settled

    def _fail(self, stored: dict[str, Any], exc: Exception) -> None:
        outcome = f"could not be applied ({type(exc).__name__})"
        span = telemetry.current()
        span.set(outcome="failed")
        span.fail(outcome)
        # what it was about, when known: its identifying write was rolled back with it
        about = {k: stored[k] for k in IDENTITY if stored.get(k) is not None}
        with write(self.db):
            rows.settle(self.db, stored["id"], {"state": "failed", "outcome": outcome, **about})
            sync_state.count(self.db, stored["integration_id"], "inbound_failed")

    def purge(self) -> int:
        """Forget delivery ids and settled events older than the dedupe window (7 days)."""
        before = format_time(self.clock.now() - timedelta(days=rows.DEDUPE_DAYS))
        with write(self.db):
            return rows.forget_before(self.db, before)

    # -- one delivery ----------------------------------------------------------------------

    def _one(self, stored: dict[str, Any]) -> bool:
        integration = integration_rows.find(self.db, str(stored["integration_id"]))
        if integration is None:
            return False
        telemetry.current().set(**telemetry.about(integration))
        request = WebhookRequest(
            stored["method"],
            stored["path"],
            stored["query"],
            json.loads(stored["headers"]),
            bytes(stored["body"]),
        )
        try:
            connector = self._cache.get(integration)
            event = connector.parse_webhook(request)
            fetch = event is not None and self._needs_record(integration, event)
            if event is not None and fetch:
                # known before the fetch, whatever then happens to the event (retried,
                # failed): `im incident history`, `im integration events` and the span say it
                self._identify(stored, integration, event)
            record = connector.get(event.external_id) if event is not None and fetch else None
        except MalformedEventError as exc:
            self._settle(stored, integration, Outcome("failed", notes=[exc.message]))
            return True
        except ImError as exc:  # the system could not be read, or the key is missing
            self._retry_later(stored, integration, exc)
            return False
        if event is None:
            outcome = Outcome(
                "ignored", notes=["an event type or record the integration does not sync"]
            )
            self._settle(stored, integration, outcome)
            return True
        with write(self.db):
            if not fetch:  # in the applying transaction: one commit per event, not two
                self._identify(stored, integration, event)
            stamp = format_time(self.clock.now())
            if not rows.seen(self.db, integration["id"], event.delivery_id, stored["id"], stamp):
                outcome = Outcome("duplicate", notes=["this delivery was already received"])
            else:
                try:
                    with write(self.db):  # a savepoint: a failed event leaves nothing behind
                        outcome = self._apply(integration, connector, event, record)
                    # and the values the connector skipped (no mapping, SPEC §3): the event
                    # says why they did not apply
                    outcome.notes.extend(event.warnings)
                except (StateError, ValidationError) as exc:
                    outcome = Outcome("failed", notes=[exc.message])
            self._settle(stored, integration, outcome, event)
        return True

    def _identify(
        self, stored: dict[str, Any], integration: Mapping[str, Any], event: WebhookEvent
    ) -> None:
        """Record on the stored event, and on its span, what it is about: its vendor event
        type, the external record and, through the link when there is one, the incident."""
        link = links.by_external(self.db, integration["id"], event.external_id)
        incident_id = link["incident_id"] if link is not None else None
        with write(self.db):
            rows.settle(
                self.db,
                stored["id"],
                {
                    "event_type": event.event_type,
                    "external_id": event.external_id,
                    "incident_id": incident_id,
                },
            )
        stored.update(
            event_type=event.event_type, external_id=event.external_id, incident_id=incident_id
        )
        telemetry.current().set(
            operation=event.event_type,
            external_id=event.external_id,
            incident_id=incident_display_id(incident_id) if incident_id else None,
        )

    def _needs_record(self, integration: Mapping[str, Any], event: WebhookEvent) -> bool:
        """Whether the full external record must be fetched before the transaction: the
        event is about a record we have no link for, and it may become a platform incident."""
        if event.deleted or event.created:
            return False
        if links.by_external(self.db, integration["id"], event.external_id) is not None:
            return False
        return self._ours(event) is None

    def _ours(self, event: WebhookEvent, record: ExternalRecord | None = None) -> int | None:
        """The incident number when the event's correlation key is this install's. An event
        that does not carry the key (a Jira comment, a PagerDuty note) is judged by the key
        of the record it is about, read before the transaction: a comment on our own record
        whose create's answer was lost must link it, never make a second incident of it."""
        key = event.correlation_key or (record.correlation_key if record is not None else None)
        return outbound.keyed_incident(key, meta.get(self.db, "install_id"))

    def _retry_later(
        self, stored: dict[str, Any], integration: Mapping[str, Any], error: ImError
    ) -> None:
        now = self.clock.now()
        stamp = format_time(now)
        attempts = stored["attempts"] + 1
        wait = retry.delay_after(attempts)
        with write(self.db):
            log = rows.log_attempt(self.db, stored["id"], stamp, error.message)
            values: dict[str, Any] = {
                "attempts": attempts,
                "attempt_log": json.dumps(log),
                "outcome": error.message,
            }
            if wait is None:
                values["state"] = "dead"
                sync_state.count(self.db, integration["id"], "inbound_failed")
                dead_letters.add(
                    self.db, integration["id"], "inbound", stamp, event_id=stored["id"]
                )
            else:
                values["next_attempt_at"] = format_time(now + timedelta(seconds=wait))
            rows.settle(self.db, stored["id"], values)
        span = telemetry.current()
        span.set(outcome=values.get("state", "retry"))
        span.fail(error.message)

    def _settle(
        self,
        stored: dict[str, Any],
        integration: Mapping[str, Any],
        outcome: Outcome,
        event: WebhookEvent | None = None,
    ) -> None:
        counter = {
            "applied": "inbound_success",
            "echo": "inbound_echo",
            "ignored": "inbound_ignored",
            "duplicate": "inbound_duplicate",
            "failed": "inbound_failed",
        }[outcome.state]
        if outcome.state == "applied" and not outcome.applied:
            # SPEC 8: a success changed a field or a journal; a deletion only breaks the link
            counter = "inbound_ignored"
        summary = "; ".join(
            ([f"applied {', '.join(outcome.applied)}"] if outcome.applied else []) + outcome.notes
        )
        # an outcome that names no incident (a failure) keeps the one its link gave
        incident_id = outcome.incident_id or stored.get("incident_id")
        span = telemetry.current()
        span.set(
            outcome=outcome.state,
            operation=event.event_type if event else None,
            incident_id=incident_display_id(incident_id) if incident_id else None,
            external_id=event.external_id if event else None,
        )
        if outcome.state == "failed":
            span.fail(summary)
        with write(self.db):
            sync_state.count(self.db, integration["id"], counter)
            rows.settle(
                self.db,
                stored["id"],
                {
                    "state": outcome.state,
                    "outcome": summary or outcome.state,
                    "incident_id": incident_id,
                    "delivery_id": event.delivery_id if event else None,
                    "event_type": event.event_type if event else None,
                    "external_id": event.external_id if event else None,
                    "warnings": json.dumps(list(event.warnings) if event else []),
                    "applied_at": format_time(self.clock.now()),
                },
            )

    # -- applying --------------------------------------------------------------------------

    def _apply(
        self,
        integration: Mapping[str, Any],
        connector: Connector,
        event: WebhookEvent,
        record: ExternalRecord | None,
    ) -> Outcome:
        direction = Direction(integration["direction"])
        link = links.by_external(self.db, integration["id"], event.external_id)
        stamp = format_time(self.clock.now())
        if link is None:
            ours = self._ours(event, record)
            if ours is not None and incident_rows.get(self.db, ours) is not None:
                # our own create, announced before its link committed
                links.create(
                    self.db, ours, integration["id"], event.external_id, event.external_key, stamp
                )
                link = links.by_external(self.db, integration["id"], event.external_id)
                if link is None:  # the incident is linked to another record there already
                    second = f"a second record ({event.external_key}) for an incident linked there"
                    return Outcome("ignored", ours, notes=[second])
            elif event.deleted:
                return Outcome("ignored", notes=["a record that is not linked was deleted"])
            elif not direction.receives:
                return Outcome("ignored", notes=["the integration does not take inbound changes"])
            else:
                return self._adopt(integration, event, record)
        if event.deleted:
            links.mark_broken(self.db, link["incident_id"], integration["id"])
            return Outcome(
                "applied", link["incident_id"], notes=["the external record was deleted"]
            )
        return self._apply_changes(integration, connector, event, link["incident_id"])

    def _adopt(
        self, integration: Mapping[str, Any], event: WebhookEvent, record: ExternalRecord | None
    ) -> Outcome:
        """An in-scope record that is not ours becomes a platform incident, linked."""
        values = record.fields if record is not None else event.changes
        incident_id = external.adopt(
            self.db,
            self.clock,
            integration,
            event.external_id,
            event.external_key,
            values,
            record.version if record is not None else event.version,
            event.actor,
            event.journals,
        )
        if incident_id is None:
            return Outcome("ignored", notes=["the record has no title to make an incident of"])
        current = incidents.get(self.db, incident_id)
        applied = sorted(k for k, v in values.items() if v and k in SCALAR_FIELDS)
        applied = [k for k in applied if k != "status"]
        return Outcome("applied", incident_id, applied, [f"created {current.display_id}"])

    def _apply_changes(
        self,
        integration: Mapping[str, Any],
        connector: Connector,
        event: WebhookEvent,
        incident_id: int,
    ) -> Outcome:
        direction = Direction(integration["direction"])
        rules = integration_rows.rules(self.db, integration["id"])
        known = snapshots.for_pair(self.db, integration["id"], incident_id)
        incident = incidents.get(self.db, incident_id)
        stamp = format_time(self.clock.now())
        outcome = Outcome("ignored", incident_id)
        echoed = False
        apply: dict[str, str] = {}
        restore: set[str] = set()  # edits our own write went over: applied, then sent back
        for name, value in event.changes.items():
            if name not in SCALAR_FIELDS:
                continue
            snapshot = known.get(name)
            newer = snapshot is None or not snapshot.version or event.version > snapshot.version
            if event.by_self and rows.acknowledge(
                self.db, integration["id"], incident_id, name, value, stamp
            ):
                echoed = True  # our own write coming back: it acknowledges the push
                if newer:  # a late echo must not roll the snapshot back
                    snapshots.put(
                        self.db, integration["id"], incident_id, {name: value}, event.version, stamp
                    )
                continue
            if snapshot is not None and snapshot.version and event.version <= snapshot.version:
                if not self._overwritten(integration["id"], incident_id, name, value, event):
                    outcome.notes.append(f"{name}: stale (not newer than what was synced)")
                    continue
                # Not stale: our own write, on its way when this edit was made, went over it
                # unseen (the edit landed between our read and our write). A concurrent
                # change, never lost silently (SPEC §4, §6; found by tests/test_simulation.py)
                winner = self._conflict(
                    integration, incident_id, name, value, event, outcome, overwritten=True
                )
                refused = name == "status" and not _may_move(incident.status, value, outcome)
                if winner == conflicts.EXTERNAL and not refused:
                    apply[name] = value
                    restore.add(name)
                continue  # else our value stands there
            if connector.normalise(name, incident.value(name)) == value:
                snapshots.put(
                    self.db, integration["id"], incident_id, {name: value}, event.version, stamp
                )
                if event.by_self:
                    echoed = True
                continue
            if event.by_self and rows.outstanding(self.db, integration["id"], incident_id, name):
                # Our own write caught half done: a create made of several requests (Jira's
                # transitions, PagerDuty's status after the POST) or a path of transitions
                # announces the states it passes through, which match no push. Applied, they
                # would roll the platform back to where the write started (found by
                # benchmarks/crash_soak.py). Pushes are recorded before the send, so one is
                # outstanding while the write is on its way; its final state acknowledges it.
                echoed = True
                continue
            held = conflict_rows.pending_for(self.db, incident_id, integration["id"], name)
            if held is not None:  # a later edit of a field in review joins its conflict
                conflict_rows.update(
                    self.db,
                    held["id"],
                    {
                        "external_value": value,
                        "external_at": event.event_time,
                        "external_actor": event.actor,
                        "external_version": event.version,
                        "updated_at": stamp,
                    },
                )
                outcome.notes.append(f"{name}: held by conflict-{held['id']}")
                continue
            # A field never synced with the record was agreed on empty: the record was made
            # without it, as reconciliation reads it (SPEC §7). So the value a create left
            # there (Jira's empty description) is no change, and the platform's value set
            # since, still on its way, meets a person's edit as a concurrent change.
            agreed = snapshot.value if snapshot is not None else ""
            if value == agreed:
                continue  # unchanged there: the event only repeats it
            concurrent = (
                direction is Direction.BIDIRECTIONAL
                and connector.normalise(name, incident.value(name)) != agreed
            )
            if concurrent:
                winner = self._conflict(integration, incident_id, name, value, event, outcome)
                if winner != conflicts.EXTERNAL:
                    continue
            elif not ownership.accepts(direction, rules.get(name)):
                outcome.notes.append(f"{name}: owned by the platform")
                # seen and set aside: the platform's next change is not a concurrent one
                snapshots.put(
                    self.db, integration["id"], incident_id, {name: value}, event.version, stamp
                )
                continue
            if name == "status":
                try:
                    check_transition(incident.status, value)
                except StateError as exc:
                    outcome.notes.append(f"status: {exc.message}")
                    # seen and refused: the platform's next status change has seen it, so it
                    # is not a concurrent one (left waiting for an event that already came)
                    snapshots.put(
                        self.db, integration["id"], incident_id, {name: value}, event.version, stamp
                    )
                    continue
            apply[name] = value
        source = f"external:{integration['name']}"
        if apply:
            incidents.update(
                self.db, self.clock, event.actor or source, str(incident_id), apply, source,
                integration["id"],
            )  # fmt: skip
            taken = {k: v for k, v in apply.items() if k not in restore}
            snapshots.put(self.db, integration["id"], incident_id, taken, event.version, stamp)
            outcome.applied.extend(sorted(apply))
        if restore & set(apply):
            # the record holds our write, not the edit that won: it is sent back there (the
            # snapshot stays what the record holds, so the send goes through)
            outbound.queue_fields(
                self.db, incidents.get(self.db, incident_id), integration["id"],
                {k: apply[k] for k in sorted(restore & set(apply))}, stamp,
            )  # fmt: skip
        if self._journals(integration, event, incident_id, outcome):
            echoed = True
        if outcome.applied:
            outcome.state = "applied"
        elif echoed:
            outcome.state = "echo"
        return outcome

    def _conflict(
        self,
        integration: Mapping[str, Any],
        incident_id: int,
        name: str,
        value: str,
        event: WebhookEvent,
        outcome: Outcome,
        overwritten: bool = False,
    ) -> str | None:
        """Both sides changed the field since they last agreed: decide (SPEC §6), record, and
        make the platform's value win on the integration's side when it wins (unless it is
        there already: ``overwritten``, our write went over the external edit)."""
        incident = incidents.get(self.db, incident_id)
        platform = conflicts.platform_edit(self.db, incident, name, external.source(integration))
        theirs = conflicts.Edit(value, parse_time(event.event_time), event.actor)
        verdict = conflicts.judge(self.db, integration, name, platform, theirs)
        stamp = format_time(self.clock.now())
        if verdict.detected:
            conflict_id = conflicts.record(
                self.db, incident_id, integration, name, platform, theirs, event.version,
                verdict, stamp,
            )  # fmt: skip
            outcome.notes.append(f"{name}: conflict-{conflict_id}, {verdict.reason}")
        else:
            outcome.notes.append(f"{name}: {verdict.reason}")
        if verdict.winner == conflicts.PLATFORM and not overwritten:
            conflicts.push_platform_value(
                self.db, incident_id, integration, name, value, event.version, stamp
            )
        return verdict.winner

    def _overwritten(
        self, integration_id: int, incident_id: int, name: str, value: str, event: WebhookEvent
    ) -> bool:
        """Whether an edit that looks stale (not newer than the snapshot) was in fact made
        while our own write of the field was on its way, and went under it: a push of ours
        of the value the snapshot holds, still standing (a send that saw the edit in its
        read would have kept the field back and withdrawn it), began no later than the edit
        and at most SENDING seconds before it (to the second: ServiceNow's times are whole
        seconds)."""
        if event.by_self or not event.event_time:
            return False
        snapshot = snapshots.for_pair(self.db, integration_id, incident_id).get(name)
        if snapshot is None or snapshot.value == value:
            return False
        return rows.sending_at(
            self.db, integration_id, incident_id, name, snapshot.value, event.event_time, SENDING
        )

    def _journals(
        self,
        integration: Mapping[str, Any],
        event: WebhookEvent,
        incident_id: int,
        outcome: Outcome,
    ) -> bool:
        """Append the event's new journal entries. Returns whether one was our own entry
        coming back (an echo, SPEC §8: counted as inbound_echo, never success or ignored)."""
        stamp = format_time(self.clock.now())
        echoed = False
        for entry in event.journals:
            if snapshots.vendor_linked(self.db, integration["id"], entry.vendor_id):
                # ours coming back (its vendor id was recorded when it was sent), or one
                # already appended from there
                echoed = echoed or event.by_self
                continue
            mine = self._unlinked_own_entry(integration["id"], incident_id, entry.field, entry.body)
            if event.by_self and mine is not None:
                # ours, its webhook before its send was recorded (or its answer was lost)
                snapshots.link_entry(self.db, integration["id"], mine, entry.vendor_id, stamp)
                echoed = True
                continue
            if not external.append_entry(self.db, self.clock, integration, incident_id, entry):
                outcome.notes.append(f"{entry.field}: owned by the platform")
                continue
            outcome.applied.append(entry.field)
        return echoed

    def _unlinked_own_entry(
        self, integration_id: int, incident_id: int, kind: str, body: str
    ) -> int | None:
        """A platform entry with this text that was sent to the integration but whose vendor
        id is not recorded yet (its webhook came first)."""
        row = self.db.execute(
            "SELECT j.id FROM journal_entries j WHERE j.incident_id = ? AND j.kind = ? "
            "AND trim(j.body) = trim(?) AND NOT EXISTS (SELECT 1 FROM journal_links l "
            "WHERE l.journal_entry_id = j.id AND l.integration_id = ?) ORDER BY j.id LIMIT 1",
            [incident_id, kind, body, integration_id],
        ).fetchone()
        return int(row[0]) if row else None
