"""Sandbox: one running emulator — its config, current portal state, rate limiter and faults."""

from __future__ import annotations

import secrets
from datetime import datetime

from starlette.requests import Request

from plooto_sandbox.config import SandboxConfig
from plooto_sandbox.faults import FaultBook, RateLimiter
from plooto_sandbox.seed import seed_portal
from plooto_sandbox.store import PortalState


class Sandbox:
    """Everything the routes share; `reset` swaps in freshly seeded state."""

    def __init__(self, config: SandboxConfig, state: PortalState | None = None) -> None:
        self.config = config
        # Signs login-form anti-forgery tokens; a restart invalidates open login forms, as in .NET.
        self.secret = secrets.token_bytes(32)
        self.limiter = RateLimiter(config.rate_limit_per_second, config.rate_limit_burst)
        self.faults = FaultBook(config.fault_seed)
        self.state = state or seed_portal(
            config.seed, config.companies, config.bills_per_company, config.start_time
        )
        self.dirty = False

    def reset(self, seed: int, companies: int, bills_per_company: int, start_time: datetime) -> None:
        """Reseed from scratch; sessions, faults and rate-limit changes are dropped."""
        self.config.seed = seed
        self.config.companies = companies
        self.config.bills_per_company = bills_per_company
        self.config.start_time = start_time
        self.state = seed_portal(seed, companies, bills_per_company, start_time)
        self.faults.clear()
        # Probabilistic faults replay identically after every reset.
        self.faults.rng.seed(self.config.fault_seed)
        self.limiter.configure(self.config.rate_limit_per_second, self.config.rate_limit_burst)
        self.dirty = True


def sandbox_of(request: Request) -> Sandbox:
    """The Sandbox behind a request."""
    found = request.app.state.sandbox
    assert isinstance(found, Sandbox)
    return found
