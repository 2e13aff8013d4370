"""What a job function receives: settings, the store, the vault and the live portal sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.config import Settings
from plooto_api.store.database import create_db_engine, session_factory, upgrade_to_head
from plooto_api.store.vault import Vault

if TYPE_CHECKING:
    from plooto_api.services.portals import PortalRegistry


@dataclass
class JobContext:
    """Shared, long-lived resources of one worker process."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    vault: Vault
    portals: PortalRegistry = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True) -> JobContext:
        """Open the store (migrating it to head), the vault and an empty portal registry."""
        from plooto_api.services.portals import PortalRegistry
        from plooto_api.upstream import ThrottleConfig

        if settings.database_url is None:
            settings.ensure_data_dir()
        engine = create_db_engine(settings.resolved_database_url)
        if migrate:
            upgrade_to_head(engine)
        sessions = session_factory(engine)
        vault = Vault.from_settings(settings)
        throttle = ThrottleConfig(
            initial_rate=settings.upstream_initial_rate,
            max_rate=settings.upstream_max_rate,
            max_concurrency=settings.upstream_max_concurrency,
        )
        return cls(settings, engine, sessions, vault, PortalRegistry(sessions, vault, throttle))

    async def aclose(self) -> None:
        """Close portal clients and database connections."""
        await self.portals.aclose()
        self.engine.dispose()
