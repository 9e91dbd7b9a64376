"""What every route depends on: its own database connection, the clock, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlite_utils import Database

from im.access import Access
from im.clock import Clock
from im.config.connection import TransportFor
from im.errors import ImError, UsageError
from im.security import tokens
from im.security.principals import check_principal
from im.store import open_database


@dataclass(frozen=True)
class ApiSettings:
    db_path: Path
    clock: Clock
    # how routes that reach external systems do (None: the network); tests pass simulators
    transport_for: TransportFor | None = None


def settings(request: Request) -> ApiSettings:
    found: ApiSettings = request.app.state.im
    return found


def database(request: Request) -> Iterator[Database]:
    """A connection of the request's own: requests run on a thread pool, and one SQLite
    connection must not serve two transactions at once."""
    db = open_database(settings(request).db_path)
    try:
        yield db
    finally:
        db.close()


def clock(request: Request) -> Clock:
    return settings(request).clock


def transports(request: Request) -> TransportFor | None:
    return settings(request).transport_for


bearer = HTTPBearer(
    auto_error=False,
    description="An API token from `im token create NAME`, as `Authorization: Bearer <token>`.",
)


def principal(
    db: Annotated[Database, Depends(database)],
    now: Annotated[Clock, Depends(clock)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """The principal of the request's token. Raises AuthenticationError (401) without a
    valid one."""
    if credentials is None:
        raise tokens.AuthenticationError("this API needs a bearer token", tokens.HOW_TO_GET_ONE)
    owner = tokens.authenticate(db, now, credentials.credentials)
    try:
        return check_principal(owner.principal)
    except UsageError:
        # a token made before principal names were checked: it can act as no one
        raise tokens.AuthenticationError(
            f"the token {owner.name} acts as a principal whose name is not valid",
            f"revoke it with `im token revoke {owner.id}` and create one for a valid name",
        ) from None


def access(
    db: Annotated[Database, Depends(database)],
    now: Annotated[Clock, Depends(clock)],
    who: Annotated[str, Depends(principal)],
) -> Iterator[Access]:
    """The caller's access: routes ask it before acting; the audit log learns how each
    allowed change ended once the route is done."""
    caller = Access(db, now, who, "api")
    try:
        yield caller
    except ImError as exc:
        caller.finish(" ".join(str(exc).split()))
        raise
    except Exception as exc:
        caller.finish(f"interrupted ({type(exc).__name__})")  # its text could carry anything
        raise
    caller.finish(None)


Db = Annotated[Database, Depends(database)]
Now = Annotated[Clock, Depends(clock)]
Transports = Annotated["TransportFor | None", Depends(transports)]
Actor = Annotated[str, Depends(principal)]
Caller = Annotated[Access, Depends(access)]
