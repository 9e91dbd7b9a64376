"""``/conflicts``: what `im conflict list|show|resolve` offer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from im.api.deps import Caller, Db, Now
from im.api.errors import declared
from im.api.models import Body
from im.config import integrations as config
from im.sync import conflicts

router = APIRouter(prefix="/conflicts", tags=["conflicts"])

Ref = Annotated[str, Path(description="conflict-n, or n")]


class ConflictOut(BaseModel):
    id: str
    status: str
    incident: str
    integration: str
    field: str
    strategy: str
    platform_value: str
    platform_at: str
    platform_actor: str
    external_value: str
    external_at: str
    external_actor: str
    winner: str
    reason: str
    detected_at: str
    resolved_at: str
    resolved_by: str


class Resolution(Body):
    use: Literal["platform", "external", "ignore"]


def _out(view: dict[str, Any]) -> ConflictOut:
    return ConflictOut(**view)


@router.get("", responses=declared(404), summary="List conflicts (pending ones by default)")
def list_conflicts(
    db: Db,
    caller: Caller,
    status: Annotated[Literal["pending", "resolved", "ignored"], Query()] = "pending",
    integration: Annotated[str | None, Query(description="name or id")] = None,
) -> list[ConflictOut]:
    """Only conflicts of integrations the caller may see."""
    caller.require("conflict.list", integration=integration)
    integration_id = config.find(db, integration)["id"] if integration else None
    visible = caller.visible("conflict.list")
    found = conflicts.listing(db, status, integration_id)
    return [_out(v) for v in found if v["integration"] in visible]


@router.get("/{ref}", responses=declared(404), summary="A conflict: both values, times and actors")
def get_conflict(db: Db, caller: Caller, ref: Ref) -> ConflictOut:
    caller.require("conflict.show", conflict=ref)
    return _out(conflicts.view(conflicts.get(db, ref)))


@router.post("/{ref}/resolve", responses=declared(404, 409), summary="Resolve a pending conflict")
def resolve_conflict(db: Db, clock: Now, caller: Caller, ref: Ref, body: Resolution) -> ConflictOut:
    """``platform`` or ``external``: that value wins on both sides; ``ignore`` keeps both
    sides as they are. A conflict that is not pending answers 409."""
    caller.require("conflict.resolve", conflict=ref)
    return _out(conflicts.view(conflicts.resolve(db, clock, caller.principal, ref, body.use)))
