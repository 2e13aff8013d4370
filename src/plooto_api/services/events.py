"""Events: appended in the same transaction as the change that causes them."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from plooto_api.store.base import new_id, utcnow
from plooto_api.store.models import Event


def record_event(
    session: Session,
    event_type: str,
    *,
    data: dict[str, Any],
    connection_id: str | None = None,
    company_id: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
) -> Event:
    """Stage an event in the caller's transaction; it commits (or not) with the change itself."""
    event = Event(
        id=new_id("evt"),
        type=event_type,
        connection_id=connection_id,
        company_id=company_id,
        object_type=object_type,
        object_id=object_id,
        data=data,
        created_at=utcnow(),
    )
    session.add(event)
    return event
