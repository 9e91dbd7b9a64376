"""What every route depends on: its own database connection, the clock, the caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlite_utils import Database

from im.clock import Clock
from im.security import tokens
from im.store import open_database


@dataclass(frozen=True)
class ApiSettings:
    db_path: Path
    clock: Clock


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
    return tokens.authenticate(db, now, credentials.credentials).principal


Db = Annotated[Database, Depends(database)]
Now = Annotated[Clock, Depends(clock)]
Actor = Annotated[str, Depends(principal)]
