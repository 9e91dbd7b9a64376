"""``/incidents``: what `im incident list|show|create|update|comment|history` offer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from im import incidents
from im.api.deps import Caller, Db, Now
from im.api.errors import declared
from im.api.models import (
    ChangeOut,
    CommentCreate,
    FieldChangeOut,
    IncidentCreate,
    IncidentDetailsOut,
    IncidentOut,
    IncidentUpdate,
    JournalEntryOut,
    LinkOut,
    QueuedOut,
    TimelineEntryOut,
    WaitingOut,
)
from im.model import DEFAULT_LIST_LIMIT, Status

router = APIRouter(prefix="/incidents", tags=["incidents"])

IncidentId = Annotated[str, Path(description="INC-n, or n")]


def _change(change: incidents.Change) -> ChangeOut:
    return ChangeOut(
        incident=IncidentOut.of(change.incident),
        changes=[FieldChangeOut(field=f, old=o, new=n) for f, o, n in change.changes],
        queued=[
            QueuedOut(
                integration=q.integration,
                operation=q.operation,
                fields=list(q.fields),
                journal_entries=q.journal,
                merged=q.merged,
            )
            for q in change.queued
        ],
    )


@router.get("", summary="List incidents, newest first")
def list_incidents(
    db: Db,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1_000_000, description="How many.")] = (
        DEFAULT_LIST_LIMIT
    ),
    status: Annotated[Status | None, Query(description="Only this status.")] = None,
) -> list[IncidentOut]:
    caller.require("incident.list")
    found = incidents.listing(db, limit, status.value if status else None)
    return [IncidentOut.of(i) for i in found]


@router.post("", status_code=201, summary="Create an incident (status triggered)")
def create_incident(db: Db, clock: Now, caller: Caller, body: IncidentCreate) -> ChangeOut:
    """Queued for every integration whose direction allows outbound; the daemon sends it."""
    caller.require("incident.create")
    return _change(incidents.create(db, clock, caller.principal, body.given()))


@router.get(
    "/{incident_id}",
    responses=declared(404),
    summary="An incident with its journal, links and queued changes",
)
def show_incident(db: Db, caller: Caller, incident_id: IncidentId) -> IncidentDetailsOut:
    caller.require("incident.show", incident=incident_id)
    details = incidents.details(db, incident_id)
    incident = IncidentOut.of(details["incident"])
    return IncidentDetailsOut(
        **incident.model_dump(),
        journal=[JournalEntryOut(**entry) for entry in details["journal"]],
        links=[LinkOut(**link) for link in details["links"]],
        queued=[
            WaitingOut(
                integration=row["integration"],
                operation=row["operation"],
                state=row["state"],
                fields=sorted(row["fields"]),
                journal_entries=len(row["journal"]),
                attempts=row["attempts"],
                next_attempt_at=row["next_attempt_at"],
            )
            for row in details["queued"]
        ],
    )


@router.patch(
    "/{incident_id}", responses=declared(400, 404, 409), summary="Change fields of an incident"
)
def update_incident(
    db: Db, clock: Now, caller: Caller, incident_id: IncidentId, body: IncidentUpdate
) -> ChangeOut:
    """Only the fields given change; a status move the status machine forbids is a 409."""
    caller.require("incident.update", incident=incident_id)
    return _change(incidents.update(db, clock, caller.principal, incident_id, body.given()))


@router.post(
    "/{incident_id}/comments",
    status_code=201,
    responses=declared(404),
    summary="Add a comment or a work note",
)
def comment_incident(
    db: Db, clock: Now, caller: Caller, incident_id: IncidentId, body: CommentCreate
) -> ChangeOut:
    caller.require("incident.comment", incident=incident_id)
    kind = "work_notes" if body.work_note else "comments"
    return _change(incidents.comment(db, clock, caller.principal, incident_id, kind, body.text))


@router.get(
    "/{incident_id}/history",
    responses=declared(404),
    summary="The incident's sync timeline across systems",
)
def incident_history(db: Db, caller: Caller, incident_id: IncidentId) -> list[TimelineEntryOut]:
    """Field changes and journal entries with their origin and where each was sent and
    acknowledged, conflicts and their resolution, webhook deliveries: as `im incident history
    --format json`."""
    caller.require("incident.history", incident=incident_id)
    return [TimelineEntryOut(**entry) for entry in incidents.history(db, incident_id)]
