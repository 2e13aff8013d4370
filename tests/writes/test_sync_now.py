"""`POST /connections/{id}/sync`: a sync on demand, besides the schedule (DESIGN §6)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

from plooto_api.metrics import REGISTRY
from plooto_api.services.connections import change_state
from plooto_api.store import models

from .conftest import Gateway


def _runs_of_every_feed() -> float:
    """Sync runs of cadence `all` that ended well, in this process: the schedule runs `fast` at
    start and `slow` later, so only a sync on demand is one of these."""
    return REGISTRY.get_sample_value("plooto_api_sync_runs_total", {"cadence": "all", "outcome": "ok"}) or 0.0


def test_a_sync_on_demand_brings_in_what_changed_in_the_portal(make_gateway: Callable[..., Gateway]) -> None:
    # Only the CLI could sync on demand, in a process of its own; an integrator had to wait for the schedule.
    gateway = make_gateway(
        run_jobs=True, sync_fast_interval_seconds=3600.0, sync_slow_interval_seconds=3600.0
    )
    [made] = gateway.control.post("/mutate", json={"action": "createBills", "count": 1}).json()["changed"]
    before = _runs_of_every_feed()
    path = f"/connections/{gateway.connection_id}/sync"
    queued = gateway.post(path, {"cadence": "all"})
    assert queued.status_code == 202, queued.text
    assert queued.json()["id"] == gateway.connection_id
    deadline = time.monotonic() + 60
    while _runs_of_every_feed() == before:  # queued behind the schedule's run at start, if it still runs
        assert time.monotonic() < deadline, "the sync on demand did not end within 60 s"
        time.sleep(0.05)
    with gateway.sessions()() as session:
        assert session.query(models.Bill).filter(models.Bill.upstream_id == made).count() == 1
    refused = gateway.post(path, {"cadence": "sometimes"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "cadence"
    assert gateway.post("/connections/conn_nope/sync").status_code == 404


def test_a_login_waiting_for_a_person_is_not_synced(gateway: Gateway) -> None:
    with gateway.sessions().begin() as session:
        connection = session.get(models.Connection, gateway.connection_id)
        assert connection is not None
        change_state(session, connection, "requires_action", reason="mfa")
    refused = gateway.post(f"/connections/{gateway.connection_id}/sync")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "connection_requires_action"


def test_a_login_locked_until_a_time_is_not_synced_before_it(gateway: Gateway) -> None:
    # A lock with an end was judged by nothing here: 202, and the sync then did nothing.
    now = datetime.fromisoformat(gateway.control.get("/clock").json()["now"])
    with gateway.sessions().begin() as session:
        connection = session.get(models.Connection, gateway.connection_id)
        assert connection is not None
        change_state(
            session, connection, "locked", detail={"until": (now + timedelta(minutes=15)).isoformat()}
        )
    refused = gateway.post(f"/connections/{gateway.connection_id}/sync")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "connection_requires_action"
    assert "locked this login until" in refused.json()["error"]["message"]
    gateway.control.post("/clock", json={"advance_minutes": 16}).raise_for_status()  # by the portal's clock
    assert gateway.post(f"/connections/{gateway.connection_id}/sync").json()["error"]["code"] == "no_worker"


def test_a_process_that_runs_no_jobs_says_so(gateway: Gateway) -> None:
    refused = gateway.post(f"/connections/{gateway.connection_id}/sync")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_worker"
