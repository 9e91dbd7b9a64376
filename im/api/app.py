"""The API application: routes, bearer authentication on each, one error shape."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI

from im import __version__
from im.api import conflicts, errors, incidents, integrations
from im.api.deps import ApiSettings, principal
from im.clock import Clock
from im.config.connection import TransportFor

PREFIX = "/api/v1"  # where `im daemon` mounts the app
DESCRIPTION = (
    "The REST API of `im`, served by `im daemon` under /api/v1.\n\n"
    "Every route needs `Authorization: Bearer <token>`, a token from `im token create NAME`; "
    "requests act as the token's principal, with its roles (`im access grant`); "
    "what a role may do is decided by the Rego policy in force (`im access policy show`).\n\n"
    'Errors are `{"error": {"code": "...", "message": "..."}}`.'
)


def create_api(db_path: Path, clock: Clock, transport_for: TransportFor | None = None) -> FastAPI:
    """The API app over the database at ``db_path``. Paths are relative to where it is
    mounted (``/api/v1``); so is the OpenAPI document, ``openapi.json``."""
    api = FastAPI(
        title="im",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        # The interactive pages load their scripts from a CDN; the document is enough.
        docs_url=None,
        redoc_url=None,
        # what any route may answer; routes add 400, 404 and 409 where they can happen
        responses=errors.declared(401, 403, 413, 422, 503),
    )
    api.state.im = ApiSettings(db_path, clock, transport_for)
    authenticated = [Depends(principal)]
    api.include_router(incidents.router, dependencies=authenticated)
    api.include_router(integrations.router, dependencies=authenticated)
    api.include_router(conflicts.router, dependencies=authenticated)
    for kind, handler in errors.HANDLERS.items():
        api.add_exception_handler(kind, handler)
    api.add_middleware(errors.Guard)
    return api
