"""create_app: assemble the emulated portal (HTML pages, internal API, control API, edge middleware)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, Response

from plooto_sandbox import api, control, web
from plooto_sandbox.config import SandboxConfig
from plooto_sandbox.errors import PortalError
from plooto_sandbox.faults import PortalEdge
from plooto_sandbox.instance import Sandbox
from plooto_sandbox.persistence import load_state, save_state
from plooto_sandbox.responses import error_response

log = logging.getLogger("plooto_sandbox")
SAVE_INTERVAL_SECONDS = 2.0


def _trace_id(request: Request) -> str:
    return str(getattr(request.state, "trace_id", ""))


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api", "/__sandbox"))


def create_app(config: SandboxConfig | None = None) -> FastAPI:
    """Build a sandbox app; with `config.state_file` it resumes from and saves to that file."""
    config = config or SandboxConfig()
    loaded = load_state(config.state_file) if config.state_file else None
    sandbox = Sandbox(config, loaded)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Save state periodically while serving and once more at shutdown."""
        saver: asyncio.Task[None] | None = None
        if config.state_file is not None:
            saver = asyncio.create_task(_save_periodically(sandbox))
        try:
            yield
        finally:
            if saver is not None:
                saver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await saver
            if config.state_file is not None:
                save_state(config.state_file, sandbox.state)

    app = FastAPI(
        title="Plooto portal (sandbox)", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.sandbox = sandbox

    @app.exception_handler(PortalError)
    async def portal_error(request: Request, exc: PortalError) -> Response:
        """PortalError → JSON envelope."""
        return error_response(exc, _trace_id(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        """FastAPI validation errors → 400 envelope."""
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": str(e["msg"])} for e in exc.errors()
        ]
        return error_response(
            PortalError(400, "ValidationFailed", "One or more fields are invalid.", details),
            _trace_id(request),
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Routing errors: envelope under /api and /__sandbox, plain HTML elsewhere."""
        if _wants_json(request):
            code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HttpError")
            return error_response(PortalError(exc.status_code, code, str(exc.detail)), _trace_id(request))
        return HTMLResponse(
            f"<html><body><h1>{exc.status_code}</h1></body></html>", status_code=exc.status_code
        )

    app.include_router(web.router)
    app.include_router(api.router)
    if config.control_enabled:
        app.include_router(control.router)
    app.add_middleware(PortalEdge, sandbox=sandbox)
    return app


async def _save_periodically(sandbox: Sandbox) -> None:
    """Debounced persistence: only after something changed, and never hogging the event loop.

    A save blocks the loop while it pickles; big states wait ten times the last save's duration
    before the next one, so saving never takes more than about a tenth of the time.
    """
    interval = SAVE_INTERVAL_SECONDS
    while True:
        await asyncio.sleep(interval)
        if sandbox.dirty and sandbox.config.state_file is not None:
            sandbox.dirty = False
            started = time.perf_counter()
            try:
                save_state(sandbox.config.state_file, sandbox.state)
            except OSError as exc:
                log.warning("could not save sandbox state: %s", exc)
            interval = max(SAVE_INTERVAL_SECONDS, 10 * (time.perf_counter() - started))
