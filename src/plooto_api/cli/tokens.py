"""The `tokens` commands."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from rich.console import Console
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.config import Settings
from plooto_api.services.tokens import InvalidScope, create_token, revoke_token
from plooto_api.store.base import utcnow
from plooto_api.store.database import create_db_engine, session_factory, transaction, upgrade_to_head
from plooto_api.store.models import ApiToken, Company, Connection


def _sessions(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    if settings.database_url is None:
        settings.ensure_data_dir()
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_to_head(engine)
    return engine, session_factory(engine)


_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_lifetime(text: str) -> timedelta:
    """`90m`, `12h`, `30d` or `8w` as a duration."""
    from plooto_api.cli import CliError

    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise CliError(f"--expires-in {text!r}: give a duration such as 90m, 12h, 30d or 8w")
    try:
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError as exc:
        raise CliError(
            f"--expires-in {text!r}: too long; leave it out for a token that does not expire"
        ) from exc


def expiry(text: str) -> datetime:
    """When a token created now with lifetime `text` expires."""
    from plooto_api.cli import CliError

    lifetime = parse_lifetime(text)
    try:
        return utcnow() + lifetime
    except OverflowError as exc:  # past the year 9999
        raise CliError(
            f"--expires-in {text!r}: too long; leave it out for a token that does not expire"
        ) from exc


def run_create(
    settings: Settings,
    *,
    scopes: str,
    companies: list[str] | None,
    connection: str | None,
    name: str | None,
    expires_in: str | None = None,
) -> str:
    """Create a token; returns its secret."""
    from plooto_api.cli import CliError

    expires_at = expiry(expires_in) if expires_in else None
    engine, sessions = _sessions(settings)
    try:
        with transaction(sessions) as session:
            for company_id in companies or []:
                if session.get(Company, company_id) is None:
                    raise CliError(f"no company {company_id} (see GET /companies)")
            if connection and session.get(Connection, connection) is None:
                raise CliError(f"no connection {connection} (see `plooto-api connections list`)")
            try:
                _, secret = create_token(
                    session,
                    scopes=scopes.split(","),
                    name=name,
                    company_ids=companies,
                    connection_id=connection,
                    expires_at=expires_at,
                )
            except InvalidScope as exc:
                raise CliError(str(exc)) from exc
    finally:
        engine.dispose()
    return secret


def run_list(settings: Settings, console: Console) -> None:
    """Print one line per token."""
    engine, sessions = _sessions(settings)
    try:
        with sessions() as session:
            rows = list(session.scalars(select(ApiToken).order_by(ApiToken.id)))
    finally:
        engine.dispose()
    for row in rows:
        expires = row.expires_at
        if expires is not None and expires.tzinfo is None:  # SQLite hands back naive UTC
            expires = expires.replace(tzinfo=utcnow().tzinfo)
        expired = expires is not None and expires <= utcnow()
        state = "revoked" if row.revoked_at else "expired" if expired else "active"
        state += f" (expires {expires.isoformat(timespec='seconds')})" if expires and not expired else ""
        limits = f" companies={','.join(row.company_ids)}" if row.company_ids else ""
        limits += f" connection={row.connection_id}" if row.connection_id else ""
        used = row.last_used_at.isoformat() if row.last_used_at else "never"
        name = f"  name={row.name!r}" if row.name else ""
        console.print(
            f"{row.id}  {row.prefix}…  {state}{name}  scopes={','.join(row.scopes)}{limits}  last used {used}",
            markup=False,
        )


def run_revoke(settings: Settings, console: Console, token_id: str) -> None:
    """Revoke one token."""
    from plooto_api.cli import CliError

    engine, sessions = _sessions(settings)
    try:
        with transaction(sessions) as session:
            if not revoke_token(session, token_id):
                raise CliError(f"no token {token_id}")
    finally:
        engine.dispose()
    console.print(f"{token_id} revoked")
