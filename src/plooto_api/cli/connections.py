"""The connection commands: connect a Plooto login, sync it with progress, list and repair."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from sqlalchemy import select

from plooto_api.cli import CliError, describe_upstream_error
from plooto_api.config import Settings
from plooto_api.jobs.context import JobContext
from plooto_api.services.authentication import sign_in
from plooto_api.services.connections import (
    NotUpstreamChanged,
    WritesInFlight,
    check_no_writes_in_flight,
    clear_drift,
    count_synced,
    normalize_totp_secret,
    remove_connection,
)
from plooto_api.services.sessions import NotWaitingForCode, TotpNotUsed, answer_mfa, waits_for_code
from plooto_api.store.database import transaction
from plooto_api.store.models import Connection
from plooto_api.sync.engine import SyncEngine, SyncReport
from plooto_api.upstream import InvalidCredentials, InvalidMfaCode, MfaChallenge, UpstreamError


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


def check_mfa_code(code: str, given_as: str) -> str:
    """`code` if it has the shape of a portal's MFA code, by the REST API's rule (MFA_CODE_PATTERN);
    else a CliError, and nothing is sent: every code the portal refuses counts toward its lockout
    of the account."""
    import re

    from plooto_api.services.sessions import MFA_CODE_PATTERN

    code = code.strip()
    if re.match(MFA_CODE_PATTERN, code) is None:
        raise CliError(f"{given_as}: an MFA code is 6 to 8 digits; nothing was sent to the portal")
    return code


def check_totp_secret(totp_secret: str | None) -> str | None:
    """The TOTP secret normalized, or a CliError naming --totp-secret."""
    try:
        return normalize_totp_secret(totp_secret) if totp_secret else None
    except ValueError as exc:
        raise CliError(f"--totp-secret: {exc}") from exc


async def sync_with_progress(
    ctx: JobContext, console: Console, connection_id: str, cadence: str
) -> SyncReport:
    """A person's sync (deliberate: a connection waiting for new terms to be accepted tries now)."""
    engine = SyncEngine(ctx)
    if not console.is_interactive:  # a log file, a pipe, a service: no bars, a line per feed pulled

        def finished(company: str, feed: str, done: int, total: int | None) -> None:
            if total is not None and done >= total:
                console.print(f"{company}  {feed}  {done}")

        return await engine.sync_connection(
            connection_id,
            cadence=cadence,  # type: ignore[arg-type]
            progress=finished,
            deliberate=True,
        )
    tasks: dict[tuple[str, str], TaskID] = {}
    with _progress(console) as progress:

        def update(company: str, feed: str, done: int, total: int | None) -> None:
            key = (company, feed)
            if key not in tasks:
                tasks[key] = progress.add_task(f"{company[:28]:<28} {feed}", total=total)
            progress.update(tasks[key], completed=done, total=total)  # 0 is nothing to pull, not unknown

        return await engine.sync_connection(connection_id, cadence=cadence, progress=update, deliberate=True)  # type: ignore[arg-type]


def print_report(console: Console, report: SyncReport) -> None:
    counts = report.counts
    console.print(
        f"{report.connection_id}: {counts.created} created, {counts.updated} updated, "
        f"{counts.unchanged} unchanged, {counts.events} events, {report.pages} pages; state {report.state}"
    )
    for difference in report.drift[:10]:
        console.print(f"  upstream changed: {difference}")
    if report.error:
        console.print(f"  error: {report.error}")


def _give_code_later(connection_id: str) -> str:
    return f"`plooto-api sync --connection {connection_id} --mfa-code CODE`"


def _code_for(console: Console, connection_id: str, challenge: MfaChallenge) -> str:
    """The code the portal asks for by `challenge`, typed at the terminal; with no terminal, how to give it."""
    # A TOTP code is not sent: it is read from the user's authenticator app.
    what = "an SMS code" if challenge.method == "sms" else "a TOTP code from an authenticator app"
    if not console.is_interactive:
        raise CliError(f"the portal asks for {what}; run {_give_code_later(connection_id)}")
    code = console.input(f"the portal asks for {what}: ")
    try:
        return check_mfa_code(code, "that code")
    except CliError as exc:
        raise CliError(f"{exc}; give the right one with {_give_code_later(connection_id)}") from None


async def _answer_mfa(ctx: JobContext, console: Console, connection_id: str, code: str) -> None:
    try:
        signed_in = await answer_mfa(ctx, connection_id, code, trust_device=True, after_lock=False)
    except NotWaitingForCode as exc:
        raise CliError(f"{exc}; nothing was sent to the portal") from None
    except InvalidMfaCode as exc:
        raise CliError(
            "the portal did not accept the MFA code (each refused code counts toward its lockout of the "
            f"account); give the right one with {_give_code_later(connection_id)}, or, if it expired, have "
            f"the portal send a new one with `plooto-api connections resend-code {connection_id}`"
        ) from exc
    from plooto_api.services import audit

    with transaction(ctx.sessions) as session:  # as the REST API's answers are (never the code)
        audit.append(session, actor="cli", action="connection.mfa_answered", object_type="connection",
                     object_id=connection_id, connection_id=connection_id,
                     detail={"trust_device": True, "signed_in": signed_in})  # fmt: skip
    if not signed_in:
        pending = (await ctx.portals.get(connection_id)).pending_mfa
        method = f"{pending.method} " if pending is not None else ""
        raise CliError(
            f"the portal's pending sign-in had expired, so it was started again and the portal sent a new {method}"
            f"code; run `plooto-api sync --connection {connection_id} --mfa-code CODE` with it"
        )


def _what_to_do(connection_id: str, report: SyncReport) -> str | None:
    """The command that moves a connection on which a sync stopped for a person, if there is one."""
    error = report.error or ""
    if report.state == "requires_action" and "MFA code" in error:
        return f"give the code with {_give_code_later(connection_id)}"
    if "new password" in error:
        return f"give it with `plooto-api connections set-password {connection_id}`"
    if "new TOTP secret" in error or "TOTP code" in error:
        return f"give it with `plooto-api connections set-password {connection_id} --totp-secret SECRET`"
    return None


def _waiting_for_code(connections: list[Connection]) -> str:
    """The one connection waiting for a person's MFA code, else a CliError saying why none is chosen."""
    waiting = [c for c in connections if waits_for_code(c)]
    if not waiting:
        raise CliError("no connection is waiting for an MFA code (see `plooto-api connections list`); "
                       "nothing was sent to the portal")  # fmt: skip
    if len(waiting) > 1:
        named = ", ".join(f"{c.id} ({c.username})" for c in waiting)
        raise CliError(f"{len(waiting)} connections are waiting for an MFA code: {named}; pick the one the code "
                       "is for with --connection ID; nothing was sent to the portal")  # fmt: skip
    return waiting[0].id


def run_connect(settings: Settings, console: Console, *, username: str, password: str, totp_secret: str | None,
                label: str | None, browser: bool, sync_now: bool) -> None:  # fmt: skip
    """Log in (asking for an SMS code if needed) as the connection for this login, created or
    given these credentials, and run the first sync. A refused login keeps nothing new."""

    async def main() -> None:
        ctx = JobContext.from_settings(settings)
        try:
            assert settings.upstream_url
            check_totp_secret(totp_secret)
            try:
                signed_in = await sign_in(ctx, username=username, password=password, totp_secret=totp_secret,
                                          upstream_url=settings.upstream_url, label=label,
                                          login_mode="browser" if browser else None)  # fmt: skip
            except UpstreamError as exc:
                raise CliError(f"{username} could not log in: {describe_upstream_error(exc)}") from exc
            except TotpNotUsed as exc:
                raise CliError(f"{exc}; connect without --totp-secret") from None
            connection_id = signed_in.connection_id
            if signed_in.created:
                console.print(f"connection {connection_id} created for {username}")
            else:
                console.print(f"connection {connection_id} for {username} (already there)")
            if signed_in.challenge is not None:
                await _answer_mfa(
                    ctx, console, connection_id, _code_for(console, connection_id, signed_in.challenge)
                )
            console.print("logged in")
            if sync_now:
                print_report(console, await sync_with_progress(ctx, console, connection_id, "all"))
        finally:
            await ctx.aclose()

    _run(main())


def run_sync(settings: Settings, console: Console, *, connection_id: str | None, cadence: str,
             mfa_code: str | None) -> int:  # fmt: skip
    """Sync one or every connection; returns the exit code (1 if any sync failed)."""

    async def main() -> int:
        ctx = JobContext.from_settings(settings)
        failed = 0
        try:
            with ctx.sessions() as session:
                if connection_id and session.get(Connection, connection_id) is None:
                    raise CliError(f"no connection {connection_id}")
                connections = list(session.scalars(select(Connection).order_by(Connection.id)))
                ids = [connection_id] if connection_id else [c.id for c in connections]
                if not ids:
                    raise CliError("no connections yet; add one with `plooto-api connect`")
                # A code is one login's: sent to another's sign-in, it counts toward that one's lockout.
                answered = (connection_id or _waiting_for_code(connections)) if mfa_code is not None else None
            if mfa_code is not None and answered is not None:  # first: the portal's code expires soon
                await _answer_mfa(ctx, console, answered, mfa_code)
            for cid in ids:
                report = await sync_with_progress(ctx, console, cid, cadence)
                print_report(console, report)
                hint = _what_to_do(cid, report)
                if hint:
                    console.print(f"  {hint}")
                failed += 0 if report.ok else 1
        finally:
            await ctx.aclose()
        return 1 if failed else 0

    return _run(main())


def run_list(settings: Settings, console: Console) -> None:
    """Print one line per connection."""
    ctx = JobContext.from_settings(settings)
    try:
        with ctx.sessions() as session:
            rows = list(session.scalars(select(Connection).order_by(Connection.id)))
    finally:
        ctx.engine.dispose()
    if not rows:
        console.print("no connections yet; add one with `plooto-api connect`")
    for row in rows:
        state = row.state + (f"({row.state_reason})" if row.state_reason else "")
        synced = row.last_synced_at.isoformat() if row.last_synced_at else "never"
        console.print(f"{row.id}  {row.username}  {row.upstream_url}  {state}  last sync {synced}")
        if row.duplicate_of:
            console.print(f"  a second connection of the same login as {row.duplicate_of} (made by an older "
                          f"`connect`); remove one with `plooto-api connections remove`")  # fmt: skip


def run_clear_drift(settings: Settings, console: Console, connection_id: str) -> None:
    """Return an upstream_changed connection to healthy after an operator reviewed the change."""
    ctx = JobContext.from_settings(settings)
    try:
        with transaction(ctx.sessions) as session:
            connection = session.get(Connection, connection_id, with_for_update=True)
            if connection is None:
                raise CliError(f"no connection {connection_id}")
            try:
                clear_drift(session, connection, actor="cli")
            except NotUpstreamChanged as exc:
                raise CliError(str(exc)) from None
    finally:
        ctx.engine.dispose()
    console.print(f"{connection_id} cleared; writes are allowed again")


def _require(ctx: JobContext, connection_id: str) -> None:
    """CliError unless the connection exists."""
    with ctx.sessions() as session:
        if session.get(Connection, connection_id) is None:
            raise CliError(f"no connection {connection_id} (see `plooto-api connections list`)")


def run_resend_code(settings: Settings, console: Console, connection_id: str) -> None:
    """Have the portal send a new code to a connection waiting for one; recorded in the audit log."""
    from plooto_api.services import audit
    from plooto_api.services.sessions import NoCodeToSend, resend_code

    async def run() -> int:
        ctx = JobContext.from_settings(settings)
        try:
            _require(ctx, connection_id)
            try:
                sent = await resend_code(ctx, connection_id)
            except (NotWaitingForCode, NoCodeToSend) as exc:
                raise CliError(f"{exc}; nothing was sent to the portal") from None
            with transaction(ctx.sessions) as session:
                audit.append(session, actor="cli", action="connection.mfa_resent", object_type="connection",
                             object_id=connection_id, connection_id=connection_id, detail={"sent": sent})  # fmt: skip
        finally:
            await ctx.aclose()
        if sent:
            console.print(f"the portal sent a new code; give it with {_give_code_later(connection_id)}")
        else:
            console.print(f"{connection_id} needs no code any more (the portal let it in); state healthy")
        return 0

    _run(run())


def run_remove(settings: Settings, console: Console, connection_id: str, *, yes: bool) -> None:
    """Remove a connection and everything synced from it, after confirmation (or `--yes`)."""
    ctx = JobContext.from_settings(settings)
    try:
        with ctx.sessions() as session:
            row = session.get(Connection, connection_id)
            if row is None:
                raise CliError(f"no connection {connection_id} (see `plooto-api connections list`)")
            who = f"{row.username} at {row.upstream_url}"
            try:
                check_no_writes_in_flight(session, connection_id)
            except WritesInFlight as exc:
                raise CliError(str(exc)) from None
            if not yes:  # counted for the question only: the removal counts as it removes
                companies, objects = count_synced(session, connection_id)
                what = f"{_companies(companies)} and {objects:,} synced objects"
        if not yes:
            if not console.is_interactive:
                raise CliError(
                    f"removing {connection_id} deletes {what}; add --yes to confirm without a terminal"
                )
            try:
                answer = console.input(
                    escape(f"remove {connection_id} ({who}): its credentials, {what}? [y/N] ")
                )
            except EOFError:  # input closed: no answer is no
                answer = ""
            if answer.strip().lower() not in {"y", "yes"}:
                raise CliError("nothing removed")
        with console.status(f"removing {connection_id} …"), transaction(ctx.sessions) as session:
            row = session.get(Connection, connection_id, with_for_update=True)
            if row is None:
                raise CliError(f"{connection_id} was removed meanwhile")
            try:
                removed = remove_connection(session, ctx.vault, row, actor="cli")
            except WritesInFlight as exc:
                raise CliError(str(exc)) from None
    finally:
        ctx.engine.dispose()
    console.print(
        f"{connection_id} removed with {_companies(removed.companies)} and {removed.objects:,} objects; its events "
        "and audit entries stay. A running gateway stops syncing it within "
        f"{settings.connection_scan_interval_seconds:g} s."
    )


def _companies(count: int) -> str:
    return f"{count} {'company' if count == 1 else 'companies'}"


def run_set_password(
    settings: Settings,
    console: Console,
    connection_id: str,
    *,
    password: str | Callable[[], str] | None,
    totp_secret: str | None,
) -> None:
    """Replace a connection's password and/or TOTP secret (sealed in the vault), recorded in the audit log.

    `password` may be a function that asks for it: it is called once the connection and the TOTP
    secret are known to be good, so nobody types a password for a command that cannot use it."""
    from plooto_api.services import audit
    from plooto_api.services.sessions import replace_credentials

    async def run() -> int:
        ctx = JobContext.from_settings(settings)
        try:
            _require(ctx, connection_id)
            secret = check_totp_secret(totp_secret)
            given = password() if callable(password) else password
            try:
                await replace_credentials(ctx, connection_id, password=given, totp_secret=secret)
            except InvalidCredentials:
                raise CliError("the portal refused this password; nothing was changed") from None
            except InvalidMfaCode:
                raise CliError(
                    "the portal refused the codes of this TOTP secret; nothing was changed"
                ) from None
            except TotpNotUsed as exc:
                raise CliError(str(exc)) from None
            changed = [name for name, value in (("password", given), ("totp_secret", secret)) if value]
            with transaction(ctx.sessions) as session:
                audit.append(session, actor="cli", action="connection.updated", object_type="connection",
                             object_id=connection_id, connection_id=connection_id,
                             detail={"changed": changed})  # fmt: skip
                state = session.get(Connection, connection_id)
                now = state.state if state else "?"
                then = "; the first sign-in after the portal's lock uses them" if now == "locked" else ""
                console.print(
                    f"{connection_id} credentials replaced ({', '.join(changed)}); state {now}{then}"
                )
        finally:
            await ctx.aclose()
        return 0

    _run(run())


def _run(coro: Coroutine[Any, Any, int | None]) -> int:
    return int(asyncio.run(coro) or 0)
