"""``/integrations``: what `im integration list|get|configure|test|sync-status|dlq…` and
`im integration field-ownership …` offer. Secrets are neither accepted nor returned here."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, Query

from im.api.deps import Caller, Db, Now, Transports
from im.api.errors import declared
from im.api.models import (
    CheckOut,
    CheckReportOut,
    ConfigureOut,
    DeadEntryActionOut,
    DeadEntryOut,
    IntegrationOut,
    IntegrationUpdate,
    OwnershipOut,
    OwnershipRuleOut,
    OwnershipSet,
    ReconcileReportOut,
    ReconcileRun,
    ReconcileRunOut,
    ScheduleOut,
    ScheduleSet,
    SyncStatusOut,
)
from im.config import connection, fields
from im.config import integrations as config
from im.config.integrations import IntegrationInput
from im.store import integrations as rows
from im.sync import reconcile, retry, schedules, status

router = APIRouter(prefix="/integrations", tags=["integrations"])

Ref = Annotated[str, Path(description="The integration's name or id.")]
FieldName = Annotated[str, Path(description="A platform field, or the external system's name.")]
Entry = Annotated[str, Path(description="entry-n, or n")]


@router.get("", summary="List integrations")
def list_integrations(db: Db, clock: Now, caller: Caller) -> list[IntegrationOut]:
    """Only the integrations the caller may see."""
    caller.require("integration.list")
    visible = caller.visible("integration.get")
    now = clock.now()
    return [
        IntegrationOut(**config.view(db, row, now))
        for row in rows.all_rows(db)
        if row["name"] in visible
    ]


@router.get(
    "/{ref}",
    responses=declared(404),
    summary="An integration's settings; secrets only as set / not set",
)
def get_integration(db: Db, clock: Now, caller: Caller, ref: Ref) -> IntegrationOut:
    caller.require("integration.get", integration=ref)
    return IntegrationOut(**config.view(db, config.find(db, ref), clock.now()))


@router.patch(
    "/{ref}", responses=declared(400, 404), summary="Change an integration's settings (no secrets)"
)
def configure_integration(
    db: Db, clock: Now, caller: Caller, ref: Ref, body: IntegrationUpdate
) -> ConfigureOut:
    """Only the fields given change. Switching to inbound cancels its waiting outbound
    changes. Credentials, the URL and TLS settings change with `im integration configure`."""
    caller.require("integration.configure", integration=ref)
    outcome = config.configure(db, clock, caller.principal, ref, IntegrationInput(**body.given()))
    return ConfigureOut(
        integration=IntegrationOut(**config.view(db, outcome.integration, clock.now())),
        changes=outcome.changes,
        warnings=outcome.warnings,
    )


@router.get(
    "/{ref}/field-ownership", responses=declared(404), summary="Every synced field with its owner"
)
def list_field_ownership(db: Db, caller: Caller, ref: Ref) -> list[OwnershipOut]:
    caller.require("field-ownership.list", integration=ref)
    return [OwnershipOut(**rule) for rule in fields.list_ownership(db, ref)]


@router.put(
    "/{ref}/field-ownership/{field}",
    responses=declared(404),
    summary="Make one side authoritative for a field",
)
def set_field_ownership(
    db: Db, caller: Caller, ref: Ref, field: FieldName, body: OwnershipSet
) -> OwnershipRuleOut:
    caller.require("field-ownership.set", integration=ref)
    integration, rule = fields.set_ownership(db, ref, field, body.owner.value, body.priority)
    return OwnershipRuleOut(
        integration=integration["name"],
        field=rule.field,
        owner=rule.owner.value,
        priority=rule.priority,
    )


@router.delete(
    "/{ref}/field-ownership/{field}",
    responses=declared(404, 409),
    summary="Remove the rule for a field",
)
def unset_field_ownership(db: Db, caller: Caller, ref: Ref, field: FieldName) -> OwnershipRuleOut:
    """Changes then flow both ways and conflicts decide. A field without a rule is a 409."""
    caller.require("field-ownership.unset", integration=ref)
    integration, platform_field = fields.unset_ownership(db, ref, field)
    return OwnershipRuleOut(
        integration=integration["name"], field=platform_field, owner="none", priority=None
    )


@router.post(
    "/{ref}/test",
    responses=declared(404),
    summary="Check the connection against the external system",
)
def test_integration(db: Db, caller: Caller, ref: Ref) -> CheckReportOut:
    """Reachability, TLS, credentials, permissions and scope. A failed check is ``ok:
    false`` in a 200 answer: the test itself ran."""
    caller.require("integration.test", integration=ref)
    report = connection.run_checks(db, ref)
    return CheckReportOut(
        integration=report.integration,
        type=report.kind,
        url=report.url,
        ok=report.ok,
        checks=[
            CheckOut(check=c.name, ok=c.ok, warning=c.warning, detail=c.detail)
            for c in report.checks
        ],
    )


@router.get(
    "/{ref}/sync-status",
    responses=declared(404),
    summary="Health with every reason, backlog, DLQ, counters",
)
def sync_status(db: Db, clock: Now, caller: Caller, ref: Ref) -> SyncStatusOut:
    """A report: 200 whatever the health (``healthy``, ``degraded`` or ``failing``)."""
    caller.require("integration.sync-status", integration=ref)
    return SyncStatusOut(**status.read(db, clock, ref).as_json())


@router.get(
    "/{ref}/dlq", responses=declared(404), summary="The dead letter queue, with every attempt"
)
def list_dlq(db: Db, caller: Caller, ref: Ref) -> list[DeadEntryOut]:
    caller.require("dlq.list", integration=ref)
    return [DeadEntryOut(**asdict(e)) for e in retry.dead_entries(db, config.find(db, ref))]


@router.post(
    "/{ref}/dlq/{entry}/retry",
    responses=declared(404),
    summary="Send a DLQ entry again, with current values",
)
def retry_dlq_entry(
    db: Db, clock: Now, caller: Caller, ref: Ref, entry: Entry
) -> DeadEntryActionOut:
    caller.require("dlq.retry", integration=ref)
    (done,) = retry.retry_dead(db, clock, config.find(db, ref), entry)
    return DeadEntryActionOut(entry=done, action="retried")


@router.post(
    "/{ref}/dlq/{entry}/discard",
    responses=declared(404),
    summary="Drop a DLQ entry without sending it",
)
def discard_dlq_entry(
    db: Db, clock: Now, caller: Caller, ref: Ref, entry: Entry
) -> DeadEntryActionOut:
    caller.require("dlq.discard", integration=ref)
    (done,) = retry.discard_dead(db, clock, config.find(db, ref), entry)
    return DeadEntryActionOut(entry=done, action="discarded")


@router.post(
    "/{ref}/reconcile", responses=declared(404, 409), summary="Reconcile now: find (and heal) drift"
)
def run_reconcile(
    db: Db, clock: Now, caller: Caller, transport_for: Transports, ref: Ref, body: ReconcileRun
) -> ReconcileReportOut:
    """Runs to the end before answering. Another run of the integration in progress is a
    409; a run that failed is reported with ``failed`` set."""
    caller.require("reconcile.run", integration=ref)
    integration = config.find(db, ref)
    since = reconcile.parse_since(body.backfill, clock.now()) if body.backfill else None
    options = reconcile.Options(
        auto_heal=body.auto_heal, recreate_missing=body.recreate_missing, backfill_since=since
    )
    report = reconcile.run(db, clock, integration, options, transport_for=transport_for)
    return ReconcileReportOut(**report.as_json())


@router.get(
    "/{ref}/reconcile/history", responses=declared(404), summary="Reconcile runs, newest first"
)
def reconcile_history(
    db: Db,
    caller: Caller,
    ref: Ref,
    limit: Annotated[int, Query(ge=1, le=10000, description="How many runs.")] = 20,
) -> list[ReconcileRunOut]:
    caller.require("reconcile.history", integration=ref)
    return [ReconcileRunOut(**row) for row in reconcile.history(db, config.find(db, ref), limit)]


@router.get(
    "/{ref}/reconcile/schedule",
    responses=declared(404),
    summary="The reconcile schedule and its next run",
)
def get_schedule(db: Db, caller: Caller, ref: Ref) -> ScheduleOut:
    caller.require("reconcile.schedule.show", integration=ref)
    return ScheduleOut(**schedules.get(db, config.find(db, ref)))


@router.post(
    "/{ref}/reconcile/schedule",
    responses=declared(400, 404),
    summary="Create or change the reconcile schedule",
)
def set_schedule(db: Db, clock: Now, caller: Caller, ref: Ref, body: ScheduleSet) -> ScheduleOut:
    """Only the keys given change; ``interval`` is required for a new schedule. The daemon
    starts a new or changed schedule's first run within seconds, then one every interval."""
    caller.require("reconcile.schedule", integration=ref)
    shown = schedules.put(
        db,
        clock,
        caller.principal,
        config.find(db, ref),
        body.interval,
        body.auto_heal,
        body.enabled,
    )
    return ScheduleOut(**shown)
