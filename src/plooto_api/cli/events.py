"""The `events` commands: follow events live, and replay them to webhook endpoints."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

from rich.console import Console
from sqlalchemy import func, select

from plooto_api.config import Settings
from plooto_api.services import webhooks as webhook_service
from plooto_api.store.base import utcnow
from plooto_api.store.database import create_db_engine, session_factory, transaction, upgrade_to_head
from plooto_api.store.models import Event
from plooto_api.webhooks.event_types import unknown_event_filter
from plooto_api.webhooks.fanout import event_type_matches

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str) -> datetime:
    """`2h`, `30m`, `3d` ago, or an ISO 8601 time (UTC if no zone is given)."""
    from plooto_api.cli import CliError

    match = _RELATIVE.match(text.strip())
    if match:
        try:
            return utcnow() - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError as exc:  # before the year 1
            raise CliError(f"--since {text!r}: too far back; give an ISO 8601 time or a shorter age") from exc
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"--since {text!r}: give an ISO 8601 time or an age such as 30m, 2h, 3d") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def check_event_types(patterns: list[str]) -> None:
    """CliError for a `--type` that matches no event type the gateway emits (a misspelt one would
    otherwise show or replay nothing, silently)."""
    from plooto_api.cli import CliError

    for pattern in patterns:
        if unknown_event_filter(pattern):
            raise CliError(f"--type {pattern!r}: matches no event type the gateway emits "
                           "(a type such as bill.created, a family such as bill.*, or *)")  # fmt: skip


def _line(event: Event) -> str:
    return " ".join(
        part
        for part in (
            event.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            event.type,
            event.id,
            event.object_id or "-",
            event.company_id or "-",
        )
    )


def run_tail(
    settings: Settings,
    console: Console,
    *,
    event_types: list[str],
    interval: float,
    count: int | None,
) -> None:
    """Print one line per new event, in order, until Ctrl-C (or `count` events)."""
    check_event_types(event_types)
    if settings.database_url is None:
        settings.ensure_data_dir()
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_to_head(engine)
    sessions = session_factory(engine)
    printed = 0
    try:
        with sessions() as session:
            after = int(session.scalar(select(func.max(Event.seq))) or 0)
        console.print(f"following events after #{after} (Ctrl-C to stop)", style="dim")
        while count is None or printed < count:
            with sessions() as session:
                rows = list(
                    session.scalars(select(Event).where(Event.seq > after).order_by(Event.seq).limit(500))
                )
            for row in rows:
                after = row.seq
                if event_types and not any(event_type_matches(t, row.type) for t in event_types):
                    continue
                console.print(_line(row), markup=False)
                printed += 1
                if count is not None and printed >= count:
                    break
            if not rows:
                time.sleep(interval)  # polling the store by seq
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()


def run_replay(
    settings: Settings, console: Console, *, since: str, event_type: str | None, endpoint: str | None
) -> int:
    """Queue events since `since` again to the endpoints; returns how many deliveries were queued."""
    from plooto_api.cli import CliError

    moment = parse_since(since)
    check_event_types([event_type] if event_type is not None else [])
    if settings.database_url is None:
        settings.ensure_data_dir()
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_to_head(engine)
    try:
        with transaction(session_factory(engine)) as session:
            try:
                queued = webhook_service.replay(
                    session, since=moment, event_type=event_type, endpoint_id=endpoint
                )
            except webhook_service.WebhookError as exc:
                raise CliError(exc.message) from exc
    finally:
        engine.dispose()
    events = len({d.event_id for d in queued})
    console.print(f"queued {len(queued)} deliveries of {events} events since {moment.isoformat()}")
    return len(queued)
