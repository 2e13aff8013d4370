"""`GET /events?type=` (and `plooto-api events tail/replay --type`) take the event types the gateway
emits, families (`bill.*`) and `*`; anything else is refused, as webhook subscriptions refuse it,
rather than answered with an empty list."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from rich.console import Console

from plooto_api.cli import CliError
from plooto_api.cli.events import run_replay, run_tail
from plooto_api.config import Settings
from plooto_api.services.events import EventBatch
from plooto_api.store.database import create_db_engine, session_factory, transaction
from plooto_api.store.vault import generate_key

TYPES = ["bill.created", "bill.approval_updated", "vendor.created", "payment.sent"]


@pytest.fixture
def events(world: dict[str, Any], database_url: str) -> dict[str, Any]:
    engine = create_db_engine(database_url)
    try:
        with transaction(session_factory(engine)) as session:
            batch = EventBatch(session)
            for event_type in TYPES:
                batch.add(event_type, data={"id": "x"}, connection_id=world["a"]["connection"],
                          company_id=world["a"]["company"], object_type=event_type.split(".")[0])  # fmt: skip
            batch.flush()
    finally:
        engine.dispose()
    return world


def _types(world: dict[str, Any], *types: str) -> Any:
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    return world["client"].get(
        "/events", params=[("limit", "100"), *(("type", t) for t in types)], headers=headers
    )


@pytest.mark.parametrize(
    "pattern", ["bills.created", "bill.", "bill", "*.created", "bill.*.*", "bil*", "BILL.CREATED"]
)
def test_a_type_no_event_has_is_refused(events: dict[str, Any], pattern: str) -> None:
    for types in ([pattern], ["bill.created", pattern]):
        response = _types(events, *types)
        assert response.status_code == 400, (types, response.text)
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("unknown_event_type", "type")
        assert pattern in error["message"]


def test_types_families_and_star_filter_as_documented(events: dict[str, Any]) -> None:
    def listed(*types: str) -> list[str]:
        response = _types(events, *types)
        assert response.status_code == 200, response.text
        return [event["type"] for event in response.json()["data"]]

    assert listed() == TYPES
    assert listed("*") == TYPES
    assert listed("bill.*") == ["bill.created", "bill.approval_updated"]
    assert listed("bill.created", "payment.*") == ["bill.created", "payment.sent"]
    assert listed("invoice.paid") == []  # a type the gateway emits, none yet


def test_the_cli_refuses_a_type_no_event_has(database_url: str, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, vault_key=SecretStr(generate_key())
    )
    console = Console(file=io.StringIO())
    with pytest.raises(CliError, match=r"bills\.created"):
        run_tail(settings, console, event_types=["bill.*", "bills.created"], interval=0.05, count=1)
    with pytest.raises(CliError, match=r"bills\.created"):
        run_replay(settings, console, since="1h", event_type="bills.created", endpoint=None)
    assert run_replay(settings, console, since="1h", event_type="bill.*", endpoint=None) == 0
