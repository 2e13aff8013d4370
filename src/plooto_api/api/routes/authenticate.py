"""`POST /authenticate` and `POST /authenticate/mfa`: log into Plooto, get a session token."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from plooto_api import mapping, schemas
from plooto_api.api.errors import ApiError
from plooto_api.api.limits import challenge_key, count_login_attempt, login_key
from plooto_api.jobs.schedules import schedule_connection
from plooto_api.services.authentication import Authenticated, Challenge, ChallengeRestarted, UnknownChallenge
from plooto_api.services.connections import TotpSecretInput, get_connection
from plooto_api.services.sessions import MFA_CODE_PATTERN, TotpNotUsed
from plooto_api.upstream import (
    AccountLocked,
    InvalidCredentials,
    InvalidMfaCode,
    RateLimited,
    TermsNotAccepted,
    UpstreamChanged,
    UpstreamUnavailable,
)

router = APIRouter(tags=["authentication"])


class AuthenticateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=3, max_length=320, examples=["controller@northwind-cpa.test"])
    password: SecretStr = Field(min_length=1, max_length=512)
    totp_secret: TotpSecretInput | None = Field(
        default=None, max_length=256, description="Lets MFA answer itself."
    )
    mfa_code: str | None = Field(
        default=None, pattern=MFA_CODE_PATTERN, description="A code the portal sent."
    )
    trust_device: bool = Field(default=True, description="Remember this gateway so MFA is skipped next time.")


class MfaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    challenge_id: str = Field(min_length=1, max_length=100)
    code: str = Field(pattern=MFA_CODE_PATTERN)


class AuthenticateResponse(BaseModel):
    connection: schemas.Connection
    session_token: str = Field(description="Bearer token reading this connection's data (12 hours).")


class MfaRequiredResponse(BaseModel):
    status: Literal["mfa_required"] = "mfa_required"
    challenge_id: str
    methods: list[str] = Field(examples=[["sms"]])


def _authenticated(request: Request, result: Authenticated) -> JSONResponse:
    ctx = request.app.state.ctx
    with ctx.sessions() as session:
        connection = mapping.connection_to_schema(get_connection(session, result.connection_id))
    if getattr(request.app.state, "jobs", None) is not None and request.app.state.run_jobs:
        schedule_connection(request.app.state.jobs, ctx, result.connection_id)
    body = AuthenticateResponse(connection=connection, session_token=result.session_token)
    return JSONResponse(body.model_dump(mode="json"), status_code=201)


def login_refused(exc: Exception) -> ApiError:
    """The API error for a portal refusing (or failing) a login or an MFA code."""
    if isinstance(exc, InvalidCredentials):
        return ApiError(401, "invalid_credentials", "the portal refused this username and password")
    if isinstance(exc, InvalidMfaCode):
        return ApiError(401, "invalid_mfa_code", "the portal refused this MFA code", param="code")
    if isinstance(exc, AccountLocked):
        left = exc.seconds_left()
        ends = f" until {exc.until.isoformat()} (the portal's clock)" if exc.until is not None else ""
        return ApiError(429, "account_locked", f"the portal has locked this login after repeated failures{ends}; "
                        "nothing is sent to it until then", headers={"Retry-After": str(left or 900)})  # fmt: skip
    if isinstance(exc, TermsNotAccepted):
        return ApiError(403, "terms_not_accepted", "the portal has new terms of service: sign in to the portal "
                        "and accept them, then try again (the gateway never accepts them for you)")  # fmt: skip
    if isinstance(exc, RateLimited):
        return ApiError(429, "upstream_rate_limited", "the portal is rate limiting; try again shortly")
    if isinstance(exc, UpstreamChanged):
        return ApiError(502, "upstream_changed", "the portal's login pages changed; an operator must review")
    # Our own words for what failed (the portal unreachable, or its answer: "the portal answered 503
    # (GET /login)"), never the portal's text.
    return ApiError(503, "upstream_unavailable", str(exc) or "the portal could not be reached")


@router.post(
    "/authenticate",
    status_code=201,
    response_model=AuthenticateResponse,
    responses={202: {"model": MfaRequiredResponse, "description": "An MFA code is needed."},
               401: {"description": "Wrong credentials."}, 429: {"description": "Too many attempts."},
               422: {"description": "`totp_not_used`: a TOTP secret for a login whose codes come by SMS."},
               403: {"description": "`terms_not_accepted`: the portal published new terms of service; the "
                                    "user accepts them in the portal, then calls again."}},
    summary="Log into Plooto and get a session token",
)  # fmt: skip
async def authenticate(request: Request, body: AuthenticateRequest) -> Any:
    """No token needed. Creates (or refreshes) the connection for this login."""
    count_login_attempt(request, login_key(body.username))
    upstream_url = request.app.state.upstream_url
    if not upstream_url:
        raise ApiError(503, "no_upstream", "this gateway has no portal configured (PLOOTO_API_UPSTREAM_URL)")
    try:
        result = await request.app.state.authenticator.authenticate(
            username=body.username,
            password=body.password.get_secret_value(),
            totp_secret=body.totp_secret.get_secret_value() if body.totp_secret else None,
            mfa_code=body.mfa_code,
            trust_device=body.trust_device,
            upstream_url=upstream_url,
        )
    except (InvalidCredentials, InvalidMfaCode, AccountLocked, TermsNotAccepted, RateLimited, UpstreamChanged,
            UpstreamUnavailable) as exc:  # fmt: skip
        raise login_refused(exc) from exc
    except TotpNotUsed as exc:
        raise ApiError(422, "totp_not_used", f"{exc}; sign in without totp_secret",
                       param="totp_secret") from exc  # fmt: skip
    if isinstance(result, Challenge):
        challenge = MfaRequiredResponse(challenge_id=result.challenge_id, methods=result.methods)
        return JSONResponse(challenge.model_dump(), status_code=202)
    return _authenticated(request, result)


@router.post(
    "/authenticate/mfa",
    status_code=201,
    response_model=AuthenticateResponse,
    responses={401: {"description": "`invalid_mfa_code`: the portal refused the code; the challenge stays."},
               404: {"description": "`unknown_challenge`"},
               409: {"description": "`mfa_expired`: the portal's sign-in had ended; it was started again and "
                                    "the portal sent a new code, which answers the same challenge."},
               429: {"description": "`account_locked`: the portal locked this login (wrong codes); nothing is "
                                    "sent to it until the lock ends. `rate_limited`: too many attempts."}},
    summary="Complete a login with the MFA code the portal sent",
)  # fmt: skip
async def authenticate_mfa(request: Request, body: MfaRequest) -> Any:
    """No token needed. A new `POST /authenticate` of the same login has the portal send a new code
    (under a new challenge id; the earlier one is then unknown)."""
    count_login_attempt(request, challenge_key(body.challenge_id))
    try:
        result = await request.app.state.authenticator.complete_challenge(body.challenge_id, body.code)
    except UnknownChallenge as exc:
        raise ApiError(404, "unknown_challenge", "no pending MFA challenge with this id (expired, completed, replaced "
                       "by a new sign-in, or its connection removed)", param="challenge_id") from exc  # fmt: skip
    except ChallengeRestarted as exc:
        raise ApiError(409, "mfa_expired", "the portal's pending sign-in had ended before this code came; it was "
                       "started again and the portal sent a new code: answer this challenge with it",
                       param="code") from exc  # fmt: skip
    except (InvalidCredentials, InvalidMfaCode, AccountLocked, TermsNotAccepted, RateLimited, UpstreamChanged,
            UpstreamUnavailable) as exc:  # fmt: skip
        raise login_refused(exc) from exc
    return _authenticated(request, result)
