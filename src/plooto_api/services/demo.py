"""What `plooto-api serve` sets up on first run with the embedded sandbox: the demo connection and an
admin API token, kept sealed in the vault so later starts can show it again. With a real portal it
makes and shows no token: the operator makes theirs with `plooto-api tokens create`."""

from __future__ import annotations

from sqlalchemy import select

from plooto_api.jobs.context import JobContext
from plooto_api.services.connections import create_connection
from plooto_api.services.tokens import authenticate, create_token
from plooto_api.store.database import transaction
from plooto_api.store.models import Connection

DEMO_LABEL = "embedded sandbox (demo)"
DEMO_USERNAME = "controller@northwind-cpa.test"
DEMO_PASSWORD = "sandbox-password"  # the sandbox's published demo login, not a real credential
DEMO_TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"
_VAULT_OWNER, _VAULT_PURPOSE = "serve", "admin_token"


def ensure_demo_connection(ctx: JobContext, sandbox_url: str) -> str:
    """The demo connection (created on first run; pointed at the sandbox's current URL)."""
    with transaction(ctx.sessions) as session:
        connection = session.scalars(select(Connection).where(Connection.label == DEMO_LABEL)).first()
        if connection is None:
            connection = create_connection(
                session, ctx.vault, username=DEMO_USERNAME, password=DEMO_PASSWORD, upstream_url=sandbox_url,
                totp_secret=DEMO_TOTP_SECRET, label=DEMO_LABEL,
            )  # fmt: skip
        else:
            connection.upstream_url = sandbox_url
        return connection.id


def ensure_admin_token(ctx: JobContext) -> str | None:
    """The demo's admin token, for the operator: made on the first start, the same one on later
    starts, and None once an operator revoked it (serve makes no new one behind their back)."""
    with transaction(ctx.sessions) as session:
        kept = ctx.vault.open(session, _VAULT_OWNER, _VAULT_PURPOSE)
        if isinstance(kept, str):
            return kept if authenticate(session, kept) is not None else None
        _, secret = create_token(session, scopes=["*"], name="admin (plooto-api serve)")
        ctx.vault.seal(session, _VAULT_OWNER, _VAULT_PURPOSE, secret)
        return secret
