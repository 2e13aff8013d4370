"""The FastAPI application: wiring of store, middleware, error envelope and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI

from plooto_api import __version__
from plooto_api.api.context import RequestContext
from plooto_api.api.errors import install_error_handlers
from plooto_api.api.limits import BodySizeLimit, LoginAttemptLimits
from plooto_api.api.openapi import install_openapi
from plooto_api.api.query import reject_unknown_query
from plooto_api.api.routes import approvals as approval_routes
from plooto_api.api.routes import audit as audit_routes
from plooto_api.api.routes import authenticate, connections, health, metrics, objects, webhook_endpoints
from plooto_api.api.routes import events as event_routes
from plooto_api.api.routes import operations as operation_routes
from plooto_api.api.routes import tokens as token_routes
from plooto_api.api.routes import writes as write_routes
from plooto_api.config import Settings
from plooto_api.jobs import InProcessEngine, JobContext
from plooto_api.jobs.schedules import schedule_all
from plooto_api.log import configure_logging
from plooto_api.metrics import PORTAL_CALLS
from plooto_api.services.authentication import Authenticator

DESCRIPTION = (
    "A REST API over the Plooto accounts-payable / accounts-receivable portal. "
    "Authenticate with `Authorization: Bearer <token>`. Errors are "
    '`{"error": {"code", "message", "param", "request_id"}}`.'
)


def create_app(settings: Settings | None = None, *, run_jobs: bool = True) -> FastAPI:
    """Build the gateway application. The schema is migrated to head when it starts, and (unless
    `run_jobs` is false) the in-process worker keeps every connection synced."""
    settings = settings or Settings()
    if not structlog.is_configured():  # served by another runner than `plooto-api serve`
        configure_logging(settings.log_level, settings.log_format)  # its redaction, tracebacks without locals

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = JobContext.from_settings(settings)
        jobs = InProcessEngine(ctx)
        app.state.ctx = ctx
        PORTAL_CALLS.source = ctx.portals.totals  # one serving app per process
        app.state.engine = ctx.engine
        app.state.sessions = ctx.sessions
        app.state.jobs = jobs
        app.state.run_jobs = run_jobs
        app.state.upstream_url = settings.upstream_url
        app.state.authenticator = Authenticator(ctx)
        if run_jobs:
            schedule_all(jobs, ctx)
            # Writes a previous process left unfinished; the schedule's `writes.retry` then takes up
            # those a portal outage leaves open while this one runs.
            jobs.enqueue("writes.recover")
        try:
            yield
        finally:
            await jobs.stop()
            await ctx.aclose()

    app = FastAPI(
        title="plooto-api",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.state.login_limits = LoginAttemptLimits(settings)
    # Added before the request-id middleware, so that one wraps it and a 413 carries an id too.
    app.add_middleware(
        BodySizeLimit, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )

    app.add_middleware(RequestContext)

    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(
        authenticate.router,
        responses={429: {"description": "Too many login attempts from this client or for this username."}},
    )
    app.include_router(connections.router)
    app.include_router(objects.router)
    app.include_router(write_routes.router)
    app.include_router(approval_routes.router)
    app.include_router(operation_routes.router)
    app.include_router(event_routes.router)
    app.include_router(webhook_endpoints.router)
    app.include_router(audit_routes.router)
    app.include_router(token_routes.router)
    install_openapi(app, write_routes.CreateBill)
    return app
