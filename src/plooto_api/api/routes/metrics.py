"""`GET /metrics`: Prometheus exposition of the gateway's counters and gauges."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from plooto_api.metrics import CONNECTIONS, REGISTRY
from plooto_api.store.models import Connection

router = APIRouter(tags=["health"])

STATES = ("healthy", "syncing", "requires_action", "locked", "upstream_unavailable", "upstream_changed")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})  # fmt: skip
def metrics(request: Request) -> Response:
    """Request counts and latencies by route, sync outcomes, and connections by state."""
    with request.app.state.sessions() as session:
        counts = dict(
            list(
                session.execute(select(Connection.state, func.count()).group_by(Connection.state))
            )  # a Result has keys(): dict() would read it as a mapping
        )
    for state in STATES:
        CONNECTIONS.labels(state).set(counts.get(state, 0))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
