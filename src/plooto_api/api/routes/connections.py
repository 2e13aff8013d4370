"""`GET /connections`, `GET /connections/{id}`, `PATCH /connections/{id}`, `DELETE /connections/{id}`,
`POST /connections/{id}/mfa` and `POST /connections/{id}/clear_drift`: the Plooto logins, their
health, replacing a login's password or TOTP secret, removing a login with what was synced from it,
answering the MFA code a background sign-in is waiting for, and allowing writes again after the
portal changed shape."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from plooto_api import mapping, schemas
from plooto_api.api.auth import require_scope
from plooto_api.api.errors import ApiError
from plooto_api.api.limits import connection_login_key, count_login_attempt
from plooto_api.api.lists import list_body
from plooto_api.api.routes.authenticate import login_refused
from plooto_api.jobs.schedules import connection_key, schedule_connection, unschedule_connection
from plooto_api.schemas.gateway import ConnectionState
from plooto_api.services import audit
from plooto_api.services.connections import (
    NotUpstreamChanged,
    Removed,
    TotpSecretInput,
    WritesInFlight,
    check_no_writes_in_flight,
    clear_drift,
    remove_connection,
)
from plooto_api.services.sessions import (
    MFA_CODE_PATTERN,
    NoCodeToSend,
    NotWaitingForCode,
    TotpNotUsed,
    answer_mfa,
    replace_credentials,
    resend_code,
)
from plooto_api.services.tokens import Principal
from plooto_api.store.database import transaction
from plooto_api.store.models import Company, Connection
from plooto_api.store.pagination import MAX_LIMIT, PageRequest, fetch_page
from plooto_api.sync.engine import Cadence
from plooto_api.upstream import (
    AccountLocked,
    InvalidCredentials,
    InvalidMfaCode,
    RateLimited,
    TermsNotAccepted,
    UpstreamChanged,
    UpstreamUnavailable,
)

router = APIRouter(tags=["connections"])
_read = Depends(require_scope("connections:read"))
_write = Depends(require_scope("connections:write"))


class ConnectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[schemas.Connection]
    has_more: bool
    next_cursor: str | None = None


def _readable(principal: Principal) -> Select[Connection]:
    """The connections a token may see: its own connection, or those holding its companies."""
    stmt = select(Connection)
    access = principal.access
    if access.connection_ids is not None:
        stmt = stmt.where(Connection.id.in_(access.connection_ids))
    if access.company_ids is not None:
        stmt = stmt.where(
            Connection.id.in_(select(Company.connection_id).where(Company.id.in_(access.company_ids)))
        )
    return stmt


def _visible(
    session: Session, principal: Principal, connection_id: str, *, for_update: bool = False
) -> Connection:
    """The connection if the token may see it, else 404 (whether it exists or not)."""
    stmt = _readable(principal).where(Connection.id == connection_id)
    row = session.scalars(stmt.with_for_update() if for_update else stmt).first()
    if row is None:
        raise ApiError(404, "not_found", f"no connection {connection_id[:64]}", param="id")
    return row


def _manageable(
    session: Session, principal: Principal, connection_id: str, *, for_update: bool = False
) -> Connection:
    """The connection if the token may change it (its password, name, MFA, drift, removal), which
    acts on every company the login holds: a token limited to companies must cover them all.
    404 if the token may not see it; 403 if it sees it through only some of its companies."""
    row = _visible(session, principal, connection_id, for_update=for_update)
    limited = principal.access.company_ids
    if limited is not None:
        companies = set(session.scalars(select(Company.id).where(Company.connection_id == row.id)))
        if not companies <= set(limited):
            raise ApiError(403, "exceeds_token_limits",
                           f"{connection_id} holds companies this token is not limited to; changing the "
                           "connection (the login of all of them) takes a token that covers all of them")  # fmt: skip
    return row


@router.get("/connections", response_model=ConnectionList, summary="List connections")
def list_connections(
    request: Request,
    principal: Principal = _read,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    state: Annotated[ConnectionState | None, Query(description="Only connections in this state.")] = None,
) -> Any:
    stmt = _readable(principal)
    if state is not None:
        stmt = stmt.where(Connection.state == state)
    with request.app.state.sessions() as session:
        page = fetch_page(session, stmt, Connection.id, PageRequest(limit=limit, cursor=cursor))
    return list_body(page, mapping.connection_to_schema)


@router.get("/connections/{connection_id}", response_model=schemas.Connection, summary="Get one connection")
def get_connection(request: Request, connection_id: str, principal: Principal = _read) -> Any:
    with request.app.state.sessions() as session:
        return mapping.connection_to_schema(_visible(session, principal, connection_id))


class ConnectionUpdate(BaseModel):
    """New credentials or label; fields left out are kept. Secrets are never returned or logged."""

    model_config = ConfigDict(extra="forbid")

    password: SecretStr | None = Field(default=None, min_length=1, max_length=512,
                                       description="The login's new portal password.")  # fmt: skip
    totp_secret: TotpSecretInput | None = Field(default=None, max_length=256,
                                                description="A new TOTP secret (base32), so MFA answers itself.")  # fmt: skip
    label: str | None = Field(default=None, max_length=200, examples=["Northwind CPA"])


@router.patch(
    "/connections/{connection_id}",
    response_model=schemas.Connection,
    summary="Replace a connection's password or TOTP secret, or rename it",
    responses={422: {"description": "`invalid_credentials` / `invalid_mfa_code`: the portal refused the new "
                                    "password or TOTP secret; `totp_not_used`: the login's codes come by SMS, "
                                    "so a TOTP secret cannot be used. Nothing was changed."}},
)  # fmt: skip
async def update_connection(
    request: Request, connection_id: str, body: ConnectionUpdate, principal: Principal = _write
) -> Any:
    """A new password or TOTP secret is tried first, on a session of its own: stored only once the
    portal takes it (the connection is then healthy again, or `requires_action` (mfa) when the
    portal sent a code), and refused otherwise with nothing changed: 422 `invalid_credentials` or
    `invalid_mfa_code`. While the portal's lock lasts it cannot be tried: it is stored, and the
    first sign-in after the lock uses it."""
    ctx = request.app.state.ctx
    with ctx.sessions() as session:
        _manageable(session, principal, connection_id)
    changed = [name for name in ("password", "totp_secret", "label") if getattr(body, name) is not None]
    if not changed:
        raise ApiError(400, "invalid_request", "give at least one of password, totp_secret, label")
    if body.password is not None or body.totp_secret is not None:
        try:
            await replace_credentials(
                ctx, connection_id,
                password=body.password.get_secret_value() if body.password else None,
                totp_secret=body.totp_secret.get_secret_value() if body.totp_secret else None,
            )  # fmt: skip
        except InvalidCredentials as exc:  # 422, not 401: the caller's token is fine, the password is not
            raise ApiError(422, "invalid_credentials", "the portal refused this password; nothing was changed",
                           param="password") from exc  # fmt: skip
        except InvalidMfaCode as exc:
            raise ApiError(422, "invalid_mfa_code", "the portal refused the codes of this TOTP secret; nothing "
                           "was changed", param="totp_secret") from exc  # fmt: skip
        except TotpNotUsed as exc:
            raise ApiError(422, "totp_not_used", str(exc), param="totp_secret") from exc
        except (AccountLocked, TermsNotAccepted, RateLimited, UpstreamChanged, UpstreamUnavailable) as exc:
            raise login_refused(exc) from exc
    with transaction(ctx.sessions) as session:
        row = session.get(Connection, connection_id)
        assert row is not None
        if body.label is not None:
            row.label = body.label
        audit.append(session, actor=principal.token_id, action="connection.updated", object_type="connection",
                     object_id=connection_id, connection_id=connection_id,
                     request_id=getattr(request.state, "request_id", None),
                     detail={"changed": changed})  # names of the fields only, never their values  # fmt: skip
        result = mapping.connection_to_schema(row)
    if changed != ["label"]:
        _sync_now(request, connection_id)  # log in with the new credentials now, not at the next tick
    return result


class DeletedConnection(BaseModel):
    id: str
    object: Literal["connection"] = "connection"
    deleted: Literal[True] = True
    companies: int = Field(description="Companies (client books) removed with it.")
    objects: int = Field(description="Synced objects of every type removed with it, companies included.")


@router.delete(
    "/connections/{connection_id}",
    response_model=DeletedConnection,
    summary="Remove a connection and everything synced from it",
    responses={409: {"description": "`writes_in_flight`: some of its writes are still being sent"}},
)
async def delete_connection(request: Request, connection_id: str, principal: Principal = _write) -> Any:
    """Stops the connection's syncs, then removes its credentials, portal session, companies,
    synced objects, sync cursors, operations and session tokens in one transaction. Its events and
    audit entries stay; the event `connection.removed` and an audit entry record the removal. The
    Plooto login itself is untouched: connecting it again (`POST /authenticate`) starts afresh."""
    ctx = request.app.state.ctx
    try:
        with ctx.sessions() as session:
            _manageable(session, principal, connection_id)
            check_no_writes_in_flight(session, connection_id)
    except WritesInFlight as exc:
        raise ApiError(409, "writes_in_flight", str(exc)) from None
    await unschedule_connection(request.app.state.jobs, connection_id)  # its syncs stop first

    def remove() -> Removed:  # many rows may go: off the event loop, so other requests go on
        with transaction(ctx.sessions) as session:
            row = _manageable(session, principal, connection_id, for_update=True)
            return remove_connection(session, ctx.vault, row, actor=principal.token_id,
                                     request_id=getattr(request.state, "request_id", None))  # fmt: skip

    try:
        removed = await asyncio.to_thread(remove)
    except WritesInFlight as exc:  # one began meanwhile: the connection stays, and keeps syncing
        if request.app.state.run_jobs:
            schedule_connection(request.app.state.jobs, ctx, connection_id)
        raise ApiError(409, "writes_in_flight", str(exc)) from None
    await ctx.portals.forget(connection_id)
    return DeletedConnection(id=connection_id, companies=removed.companies, objects=removed.objects)


class ConnectionMfa(BaseModel):
    """The code the portal sent (by SMS) when the gateway signed in in the background."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=MFA_CODE_PATTERN, examples=["123456"])
    trust_device: bool = Field(default=True, description="Keep the portal's trusted-device cookie, so later "
                                                         "sign-ins of this connection skip MFA.")  # fmt: skip


@router.post(
    "/connections/{connection_id}/mfa",
    response_model=schemas.Connection,
    summary="Answer the MFA code a connection's sign-in is waiting for",
    responses={
        422: {"description": "`invalid_mfa_code`: the portal refused the code"},
        429: {"description": "`rate_limited`: too many codes tried for this connection or from this client; "
                             "`account_locked`: the portal locked the login."},
        409: {"description": "`invalid_state`: no code is awaited; `mfa_expired`: the portal's pending "
                             "sign-in expired (it is started again and the portal sends a new code)"},
    },
)  # fmt: skip
async def answer_connection_mfa(
    request: Request, connection_id: str, body: ConnectionMfa, principal: Principal = _write
) -> Any:
    """A sync that signs in without a TOTP secret leaves the connection `requires_action` (reason
    `mfa`) until someone gives the code the portal sent; the sign-in then completes and the
    connection syncs at once. (`POST /authenticate/mfa` does the same for a login an application
    started itself.) Any other connection, one waiting for a new TOTP secret among them
    (`state_detail.error` `code_refused`), is 409 `invalid_state`, and nothing is sent to the portal."""
    ctx = request.app.state.ctx
    with ctx.sessions() as session:
        _manageable(session, principal, connection_id)
    count_login_attempt(request, connection_login_key(connection_id))
    try:
        signed_in = await answer_mfa(
            ctx, connection_id, body.code, trust_device=body.trust_device, after_lock=False
        )
    except NotWaitingForCode as exc:  # nothing was sent to the portal
        raise ApiError(409, "invalid_state", str(exc)) from None
    except InvalidMfaCode as exc:  # 422, not 401: the caller's token is fine, the portal's code is not
        raise ApiError(422, "invalid_mfa_code", "the portal refused this MFA code (each refused code counts "
                       "toward its lockout of the account; a code expires within minutes: POST "
                       f"/connections/{connection_id}/mfa/resend has it send a new one)", param="code") from exc  # fmt: skip
    except (InvalidCredentials, AccountLocked, TermsNotAccepted, RateLimited, UpstreamChanged,
            UpstreamUnavailable) as exc:  # fmt: skip
        raise login_refused(exc) from exc
    if not signed_in:
        raise ApiError(409, "mfa_expired", "the portal's pending sign-in expired before this code came; "
                                           "it was started again and the portal sent a new code")  # fmt: skip
    with transaction(ctx.sessions) as session:
        answered = session.get(Connection, connection_id)
        assert answered is not None
        audit.append(session, actor=principal.token_id, action="connection.mfa_answered", object_type="connection",
                     object_id=connection_id, connection_id=connection_id,
                     request_id=getattr(request.state, "request_id", None),
                     detail={"trust_device": body.trust_device})  # never the code  # fmt: skip
        result = mapping.connection_to_schema(answered)
    _sync_now(request, connection_id)
    return result


@router.post(
    "/connections/{connection_id}/mfa/resend",
    response_model=schemas.Connection,
    status_code=202,
    summary="Have the portal send a new MFA code (SMS) to a connection waiting for one",
    responses={
        200: {"description": "No code is needed any more: the portal let the connection in (it is healthy)."},
        429: {"description": "`rate_limited`: too many requests for this connection or from this client."},
        409: {"description": "`invalid_state`: the connection waits for no code; `no_code_to_send`: its codes "
                             "come from an authenticator app"},
    },
)  # fmt: skip
async def resend_connection_mfa(request: Request, connection_id: str, principal: Principal = _write) -> Any:
    """The code the portal sent expires within minutes; this is its MFA page's "send a new code".
    When the portal's pending sign-in itself is gone, a new one is started, which sends a code. The
    new code is then given with `POST /connections/{id}/mfa`. Nothing is sent while the portal's
    lock lasts (429 `account_locked`)."""
    ctx = request.app.state.ctx
    with ctx.sessions() as session:
        _manageable(session, principal, connection_id)
    count_login_attempt(request, connection_login_key(connection_id))
    try:
        sent = await resend_code(ctx, connection_id)
    except NotWaitingForCode as exc:
        raise ApiError(409, "invalid_state", str(exc)) from None
    except NoCodeToSend as exc:
        raise ApiError(409, "no_code_to_send", str(exc)) from None
    except (InvalidCredentials, AccountLocked, TermsNotAccepted, RateLimited, UpstreamChanged,
            UpstreamUnavailable) as exc:  # fmt: skip
        raise login_refused(exc) from exc
    with transaction(ctx.sessions) as session:
        row = session.get(Connection, connection_id)
        assert row is not None
        audit.append(session, actor=principal.token_id, action="connection.mfa_resent", object_type="connection",
                     object_id=connection_id, connection_id=connection_id,
                     request_id=getattr(request.state, "request_id", None), detail={"sent": sent})  # fmt: skip
        result = mapping.connection_to_schema(row)
    if not sent:
        _sync_now(request, connection_id)
        return JSONResponse(result.model_dump(mode="json"), status_code=200)
    return result


@router.post(
    "/connections/{connection_id}/clear_drift",
    response_model=schemas.Connection,
    summary="Allow writes again after the portal's change of shape was reviewed",
    responses={409: {"description": "`invalid_state`: the connection is not upstream_changed"}},
)
async def clear_connection_drift(request: Request, connection_id: str, principal: Principal = _write) -> Any:
    """A connection whose portal answered in an unexpected shape is `upstream_changed` and refuses
    writes (409 `writes_blocked`) until an operator has reviewed the differences in its
    `state_detail` and updated the adapter. This returns it to healthy, records who did it in the
    audit log and syncs it at once: a feed that still differs marks it again."""
    ctx = request.app.state.ctx
    with transaction(ctx.sessions) as session:
        row = _manageable(session, principal, connection_id, for_update=True)
        try:
            clear_drift(session, row, actor=principal.token_id,
                        request_id=getattr(request.state, "request_id", None))  # fmt: skip
        except NotUpstreamChanged as exc:
            raise ApiError(409, "invalid_state", str(exc)) from None
        result = mapping.connection_to_schema(row)
    _sync_now(request, connection_id)
    return result


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cadence: Cadence = Field(
        "all", description="all feeds; fast: bills, payments, approvals, invoices; slow: the reference data."
    )


@router.post(
    "/connections/{connection_id}/sync",
    response_model=schemas.Connection,
    status_code=202,
    summary="Sync the connection now, besides its schedule",
    responses={409: {"description": "`connection_requires_action`: the login waits for a person (MFA, a new "
                                    "password, the portal's terms) or is locked: a sync could not sign in."},
               503: {"description": "`no_worker`: this gateway process runs no jobs."}},
)  # fmt: skip
async def sync_connection_now(
    request: Request, connection_id: str, principal: Principal = _write, body: SyncRequest | None = None
) -> Any:
    """Queues a sync of the connection's feeds at once (as after a change made in the portal),
    beside its schedule; one already running for it finishes first. Answers 202 with the connection:
    its `last_synced_at` moves, and its events come, when the sync is done."""
    ctx = request.app.state.ctx
    with ctx.sessions() as session:
        result = mapping.connection_to_schema(_visible(session, principal, connection_id))
    # Judged as the sync will judge it: a lock ends by the portal's clock, not this machine's.
    blocked = await ctx.portals.login_blocked(connection_id, await ctx.portals.get(connection_id))
    if blocked is not None:
        raise ApiError(409, "connection_requires_action", f"the portal login needs attention: {blocked}")
    if not _sync_now(request, connection_id, (body or SyncRequest()).cadence):
        raise ApiError(
            503, "no_worker", "this gateway process runs no jobs; its workers sync on their schedule"
        )
    return JSONResponse(result.model_dump(mode="json"), status_code=202)


def _sync_now(request: Request, connection_id: str, cadence: Cadence = "all") -> bool:
    """Queue a sync of the connection, when this process runs jobs; whether it does."""
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None or not request.app.state.run_jobs:
        return False
    args = {"connection_id": connection_id, **({"cadence": cadence} if cadence != "all" else {})}
    jobs.enqueue("sync.connection", args, key=connection_key(connection_id))
    return True
