"""Request and response bodies, so that the OpenAPI document describes them. Keys are
snake_case and match the CLI's ``--format json`` output; times are as stored (UTC, ISO-8601)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from im.model import ConflictStrategy, Direction, Incident, Owner, Priority, Severity, Status


class Body(BaseModel):
    """A request body: an unknown key is an error rather than silently ignored, and numbers
    and booleans must be JSON numbers and booleans (``true`` is not a priority of 1, nor
    ``"no"`` false): their fields are Strict*."""

    model_config = ConfigDict(extra="forbid")

    def given(self) -> dict[str, Any]:
        """The fields the caller set to a value (null means "leave as it is")."""
        return self.model_dump(mode="json", exclude_none=True)


class ErrorDetailOut(BaseModel):
    code: str = Field(description="not_found, invalid, forbidden, busy, ...")
    message: str = Field(description="The problem and how to fix it; never a secret.")


class ErrorOut(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetailOut


# -- incidents -------------------------------------------------------------------------------


class IncidentFields(Body):
    title: str | None = Field(None, description="Short summary, 1-255 characters.")
    description: str | None = Field(None, description="Longer text.")
    severity: Severity | None = Field(None, description="sev1 is worst.")
    priority: Priority | None = Field(None, description="p1 is highest.")
    assigned_to: str | None = Field(None, description='Assignee email ("" to unassign).')
    escalation_policy: str | None = Field(None, description='Escalation policy id ("" clears).')
    commander: str | None = Field(None, description='Principal commanding it ("" clears).')


class IncidentCreate(IncidentFields):
    title: str = Field(description="Short summary, 1-255 characters.")


class IncidentUpdate(IncidentFields):
    status: Status | None = Field(
        None,
        description="Forward (may skip steps); back only from resolved to triggered; "
        "closed is final.",
    )


class CommentCreate(Body):
    text: str = Field(description="The entry's text.")
    work_note: StrictBool = Field(False, description="An internal work note instead of a comment.")


class IncidentOut(BaseModel):
    id: str = Field(description="INC-n")
    title: str
    description: str
    severity: str
    priority: str
    status: str
    assigned_to: str
    escalation_policy: str
    commander: str
    created_at: str
    updated_at: str
    created_by: str

    @classmethod
    def of(cls, incident: Incident) -> IncidentOut:
        return cls(**{**asdict(incident), "id": incident.display_id})


class FieldChangeOut(BaseModel):
    field: str
    old: str | None
    new: str | None


class QueuedOut(BaseModel):
    integration: str
    operation: str
    fields: list[str]
    journal_entries: int
    merged: bool = Field(description="Joined a change to the same incident that was waiting.")


class ChangeOut(BaseModel):
    incident: IncidentOut
    changes: list[FieldChangeOut]
    queued: list[QueuedOut] = Field(description="What was queued for which integration.")


class JournalEntryOut(BaseModel):
    id: int
    kind: str = Field(description="comments or work_notes")
    body: str
    source: str
    actor: str
    created_at: str


class LinkOut(BaseModel):
    integration: str
    external_id: str
    external_key: str | None
    state: str
    created_at: str


class WaitingOut(BaseModel):
    integration: str
    operation: str
    state: str
    fields: list[str]
    journal_entries: int
    attempts: int
    next_attempt_at: str


class IncidentDetailsOut(IncidentOut):
    journal: list[JournalEntryOut]
    links: list[LinkOut]
    queued: list[WaitingOut]


class SentToOut(BaseModel):
    """Where a change was sent: one integration's outbox row that carried it."""

    integration: str
    operation: str | None = Field(description="create or update")
    state: str = Field(
        description="pending, in_flight, in_doubt, done, dead (in the DLQ), discarded, "
        "retried or cancelled"
    )
    queued_at: str | None
    sent_at: str | None = Field(description="When the vendor answered.")
    acked_at: str | None = Field(description="When the write's echo came back by webhook.")
    value: str | None = Field(description="The value the row carried (fields only).")
    vendor_id: str | None = Field(description="The vendor's entry id (journal entries only).")
    attempts: int | None
    error: str | None
    dlq_entry: str | None = Field(description="entry-N while or since it was in the DLQ.")
    note: str | None


class TimelineEntryOut(BaseModel):
    """One entry of an incident's sync timeline (`im incident history --format json`)."""

    at: str
    kind: str = Field(description="change, journal, conflict, conflict_resolved or inbound")
    field: str | None
    old_value: str | None
    new_value: str | None = Field(description="The new value, or a journal entry's text.")
    source: str | None = Field(description="platform, or external:<integration>")
    actor: str | None
    integration: str | None = Field(description="A conflict's or a webhook's integration.")
    ref: str | None = Field(description="conflict-N or event-N")
    state: str | None = Field(description="A conflict's status or a webhook's outcome.")
    detail: str | None
    applied_at: str | None = Field(description="When a webhook delivery was settled.")
    winner: str | None = Field(description="A resolved conflict's winner: platform or external.")
    sent_to: list[SentToOut]


# -- integrations ----------------------------------------------------------------------------


class IntegrationOut(BaseModel):
    id: int
    name: str
    type: str
    url: str
    enabled: bool
    direction: str
    conflict_strategy: str
    conflict_window: str
    rate_limit: str
    rate_limit_backoff: bool
    scope: dict[str, str]
    settings: dict[str, str]
    secrets: dict[str, str] = Field(description='Only "set" or "not set", never a value.')
    webhook_secret_previous_until: str | None = Field(
        description="While a webhook secret rotation is in progress, until when the old "
        "secret is accepted; null otherwise."
    )
    ca_bundle: str | None
    allow_insecure_http: bool
    created_at: str
    updated_at: str
    created_by: str


class IntegrationUpdate(Body):
    """The settings that hold no secret. Credentials change with `im integration configure`."""

    direction: Direction | None = None
    conflict_strategy: ConflictStrategy | None = None
    conflict_window: StrictStr | StrictFloat | None = Field(
        None, description="Edits this close together conflict: 5s, 500ms, 1m (or seconds)."
    )
    rate_limit: str | None = Field(None, description="Client-side pacing: N/s, N/m or off.")
    rate_limit_backoff: StrictBool | None = Field(None, description="Honour 429 and Retry-After.")
    enabled: StrictBool | None = Field(None, description="A disabled integration syncs nothing.")

    def given(self) -> dict[str, Any]:
        values = super().given()
        if "conflict_window" in values:
            values["conflict_window"] = str(values["conflict_window"])
        return values


class ConfigureOut(BaseModel):
    integration: IntegrationOut
    changes: list[str]
    warnings: list[str]


class OwnershipOut(BaseModel):
    field: str
    external_field: str
    owner: str = Field(description="platform, external, or none")
    priority: int | None
    default: bool = Field(description="Still the integration type's default rule.")


class OwnershipSet(Body):
    owner: Owner
    priority: StrictInt = Field(0, description="A larger number wins between integrations.")


class OwnershipRuleOut(BaseModel):
    integration: str
    field: str
    owner: str
    priority: int | None


class CheckOut(BaseModel):
    check: str
    ok: bool
    warning: bool
    detail: str


class CheckReportOut(BaseModel):
    integration: str
    type: str
    url: str
    ok: bool
    checks: list[CheckOut]


class AttemptOut(BaseModel):
    at: str
    error: str
    charged: bool = Field(description="False for a rate-limit pause that cost no attempt.")


class DeadEntryOut(BaseModel):
    id: str = Field(description="entry-n")
    incident: str
    direction: str
    operation: str
    fields: list[str]
    journal: int
    attempts: list[AttemptOut]
    error: str
    queued_at: str
    dead_at: str


class DeadEntryActionOut(BaseModel):
    entry: str
    action: str = Field(description="retried (queued again with current values) or discarded")


class MetricsOut(BaseModel):
    """The guide's seven metrics, cumulative since the integration was created."""

    outbound_success: int = Field(description="Outbox rows delivered.")
    outbound_failed: int = Field(description="Failed delivery attempts.")
    inbound_success: int = Field(description="Webhook events applied (something changed).")
    inbound_failed: int = Field(
        description="Deliveries rejected (signature, malformed) or events that failed to apply."
    )
    conflicts_detected: int
    conflicts_resolved: int = Field(description="Resolved automatically by the strategy.")
    drift_discrepancies: int = Field(description="Discrepancies found by reconcile runs.")


class OtherCountersOut(BaseModel):
    inbound_ignored: int
    inbound_echo: int = Field(description="Our own writes coming back.")
    inbound_duplicate: int = Field(description="Deliveries already received.")
    conflicts_manually_resolved: int


class SyncStatusOut(BaseModel):
    """`im integration sync-status NAME --format json`. Times are null when it never
    happened."""

    health: str = Field(description="healthy, degraded or failing")
    reasons: list[str] = Field(description="Every reason that applies, each saying what to do.")
    integration: str
    integration_id: int
    type: str
    enabled: bool
    direction: str
    conflict_strategy: str
    daemon_running: bool
    daemon_heartbeat_at: str | None
    last_webhook_received_at: str | None
    webhook_secret_previous_until: str | None = Field(
        description="While a webhook secret rotation is in progress, until when the old "
        "secret is accepted (informational: no verdict); null otherwise."
    )
    last_outbound_success_at: str | None
    last_outbound_failure_at: str | None
    last_outbound_error: str | None
    paused: str | None = Field(description="rate-limited or auth-failing while in force, else null")
    paused_at: str | None
    paused_until: str | None = Field(description="When a rate-limit pause ends.")
    backlog: int = Field(description="Outbox rows waiting or being sent.")
    backlog_oldest_seconds: float | None = Field(description="Age of the oldest waiting row.")
    dlq_size: int
    pending_conflicts: int
    unmappable_events_last_hour: int = Field(
        description="Inbound events of the last hour with values that have no mapping."
    )
    last_reconcile_run_id: str | None = Field(description="run-n")
    last_reconcile_started_at: str | None
    last_reconcile_finished_at: str | None
    last_reconcile_state: str | None = Field(description="running, done or failed")
    last_reconcile_discrepancies: int | None
    last_reconcile_unresolved: int | None = Field(
        description="What that run left for a person or a healing run (not blocked, shadowed "
        "or out-of-scope reports)."
    )
    last_reconcile_error: str | None
    reconcile_schedule_interval: str | None
    reconcile_schedule_enabled: bool | None
    reconcile_next_run_at: str | None
    checked_at: str
    metrics: MetricsOut
    other_counters: OtherCountersOut


# -- reconciliation ---------------------------------------------------------------------------


class ReconcileRun(Body):
    auto_heal: StrictBool = Field(False, description="Heal what differs (else a dry run).")
    recreate_missing: StrictBool = Field(
        False, description="Re-create external records that are gone."
    )
    backfill: str | None = Field(
        None, description="Also take records created since this date, time or age (30d)."
    )


class DiscrepancyOut(BaseModel):
    incident_id: str = Field(description='INC-n, or "" for an external record with no incident.')
    external_id: str
    external_key: str
    field: str = Field(description='The field or journal, or "" for the record itself.')
    platform_value: str
    external_value: str
    snapshot_value: str | None = Field(description="What both sides last agreed on.")
    action: str = Field(
        description="push, pull, shadowed, blocked-by-direction, held, conflict, refused, "
        "missing-external, out-of-scope, create-platform, append-journal, link or "
        "duplicate-external."
    )
    reason: str


class ReconcileReportOut(BaseModel):
    integration: str
    run_id: str = Field(description="run-n")
    mode: str = Field(description="dry-run or auto-heal")
    checked: int
    discrepancies: list[DiscrepancyOut]
    healed: int
    queued: int = Field(description="Pushes queued in the outbox for the daemon.")
    errors: list[str]
    failed: str | None


class ReconcileRunOut(BaseModel):
    run_id: str
    started_at: str
    duration_seconds: float | None
    trigger: str = Field(description="manual, schedule or cron")
    mode: str
    state: str = Field(description="running, done or failed")
    checked: int
    discrepancies: int
    healed: int
    unresolved: int = Field(description="What the run left for a person or a healing run.")
    errors: int
    error: str


class ScheduleSet(Body):
    interval: str | None = Field(
        None, description="30s, 15m, 1h or 1d (at least 30s); required for a new schedule."
    )
    auto_heal: StrictBool | None = Field(
        None, description="Scheduled runs heal (else report only)."
    )
    enabled: StrictBool | None = None


class ScheduleOut(BaseModel):
    integration: str
    interval: str
    interval_seconds: int
    auto_heal: bool
    enabled: bool
    next_run_at: str | None = Field(description="When the daemon starts the next run.")
    updated_at: str
    updated_by: str
