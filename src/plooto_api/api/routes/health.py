"""`GET /health`: is the gateway up, and can it reach its store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from plooto_api import __version__
from plooto_api.store.database import current_revision

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    summary="Liveness and store health",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "status": "ok",
                        "version": __version__,
                        "time": "2026-11-27T14:31:00Z",
                        "database": {"status": "ok", "backend": "sqlite", "revision": "0001"},
                    }
                }
            }
        },
        503: {"description": "The store cannot be reached."},
    },
)
def health(request: Request) -> JSONResponse:
    """`status` is `ok` when the gateway can query its database, `degraded` (503) otherwise."""
    engine = request.app.state.engine
    database: dict[str, Any] = {"backend": engine.dialect.name}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database.update(status="ok", revision=current_revision(engine))
        status, code = "ok", 200
    except SQLAlchemyError:
        database["status"] = "unreachable"
        status, code = "degraded", 503
    body = {
        "status": status,
        "version": __version__,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "database": database,
    }
    return JSONResponse(body, status_code=code)
