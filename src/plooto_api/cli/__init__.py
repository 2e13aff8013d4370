"""The `plooto-api` command line: serve the gateway, run the sandbox, manage the store.

Bad input exits with code 2 and one line on stderr; progress and results go to stdout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from plooto_api import __version__
from plooto_api.config import Settings
from plooto_api.log import LOG_FORMATS, LOG_LEVELS, configure_logging
from plooto_api.runtime import tune_gc

app = typer.Typer(
    name="plooto-api",
    help="A self-hostable API gateway over the Plooto AP/AR portal.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Inspect and migrate the gateway's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console(highlight=False, soft_wrap=True)


@app.callback()
def _log_as_configured() -> None:
    # Every command logs as `serve` does: to stderr, secrets redacted, tracebacks without frames'
    # locals (structlog's defaults print those, portal cookies among them, on stdout). The settings
    # are not loaded here: a bad one is the command's to report, in its one line. A command other
    # than `serve` (which logs at PLOOTO_API_LOG_LEVEL, info by default) says what happened in its own
    # words: its log shows warnings and worse unless PLOOTO_API_LOG_LEVEL asks for more.
    level = os.environ.get("PLOOTO_API_LOG_LEVEL", "warning")
    fmt = os.environ.get("PLOOTO_API_LOG_FORMAT", "console")
    configure_logging(level if level in LOG_LEVELS else "warning", fmt if fmt in LOG_FORMATS else "console")


def _data_dir(text: str) -> Path:
    # Path("") is the current directory: an empty value is far likelier a shell variable left unset.
    if not text.strip():
        raise typer.BadParameter("must not be empty")
    return Path(text)


DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        parser=_data_dir,
        help="Data directory [env PLOOTO_API_DATA_DIR; default ./.plooto-api].",
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL [env PLOOTO_API_DATABASE_URL; default SQLite]."),
]


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def read_password(prompt: str) -> str:
    """PLOOTO_PASSWORD, or the password typed at the terminal (never a flag: it would sit in the
    shell's history and the process list). With neither, how to give it, as a CliError."""
    password = os.environ.get("PLOOTO_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise CliError("no password: set PLOOTO_PASSWORD, or run in a terminal to be asked for it")
    return str(typer.prompt(prompt, hide_input=True))


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command line's flags taking precedence."""
    if overrides.get("data_dir") is None and os.environ.get("PLOOTO_API_DATA_DIR", "unset").strip() == "":
        raise CliError("data_dir (PLOOTO_API_DATA_DIR): must not be empty")
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        given = "on the command line" if overrides.get(name) is not None else f"PLOOTO_API_{name.upper()}"
        raise CliError(f"{name} ({given}): {first['msg']}") from exc


def load_store_settings(**overrides: Any) -> Settings:
    """`load_settings` for the commands that work on an existing store: refuses, before anything
    is created, a data directory or database with no gateway store in it."""
    from plooto_api.cli.store import require_store

    settings = load_settings(**overrides)
    require_store(settings)
    return settings


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on [env PLOOTO_API_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [env PLOOTO_API_PORT].")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    upstream: Annotated[
        str | None, typer.Option("--upstream", help="Portal base URL [env PLOOTO_API_UPSTREAM_URL].")
    ] = None,
) -> None:
    """Run the gateway (API and in-process worker) until Ctrl-C.

    With no upstream configured it starts the embedded sandbox with demo data, connects to it,
    runs the first sync and prints an admin token.
    """
    from plooto_api.cli.serve import run_serve

    settings = load_settings(
        host=host, port=port, data_dir=data_dir, database_url=database_url, upstream_url=upstream
    )
    configure_logging(settings.log_level, settings.log_format)
    run_serve(settings, console)


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8500,
    seed: Annotated[int, typer.Option(help="Seed of the generated demo data.")] = 42,
    companies: Annotated[int, typer.Option(min=1, help="Number of client companies.")] = 3,
    bills_per_company: Annotated[int, typer.Option(min=0, help="Exactly this many bills per company.")] = 50,
    control: Annotated[bool, typer.Option(help="Serve the /__sandbox/ control API.")] = True,
    state_file: Annotated[Path | None, typer.Option(help="Keep the sandbox's state in this file.")] = None,
) -> None:
    """Run plooto-sandbox, the Plooto portal emulator, alone (it prints its demo users)."""
    from plooto_api.cli.serve import check_can_listen

    check_can_listen(host, port)  # before the sandbox seeds and prints its users
    # The sandbox is a separate program that the gateway only ever talks to over HTTP.
    args = [
        sys.executable, "-m", "plooto_sandbox", "--host", host, "--port", str(port), "--seed", str(seed),
        "--companies", str(companies), "--bills-per-company", str(bills_per_company),
    ]  # fmt: skip
    if not control:
        args.append("--no-control")
    if state_file is not None:
        args += ["--state-file", str(state_file)]
    sys.stdout.flush()
    os.execv(sys.executable, args)


@app.command()
def connect(
    username: Annotated[str, typer.Option(help="Plooto login e-mail.")],
    upstream: Annotated[
        str | None, typer.Option("--upstream", help="Portal base URL [env PLOOTO_API_UPSTREAM_URL].")
    ] = None,
    totp_secret: Annotated[
        str | None,
        typer.Option(help="TOTP secret, so MFA answers itself.", envvar="PLOOTO_TOTP_SECRET"),
    ] = None,
    label: Annotated[str | None, typer.Option(help="A name for this connection.")] = None,
    browser: Annotated[bool, typer.Option(help="Log in with a real browser (chromium).")] = False,
    sync_now: Annotated[bool, typer.Option("--sync/--no-sync", help="Run the first sync now.")] = True,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Add a Plooto login. The password is read from PLOOTO_PASSWORD or asked for (never a flag)."""
    from plooto_api.cli.connections import check_totp_secret, run_connect
    from plooto_api.cli.store import prepare_store

    settings = load_settings(data_dir=data_dir, database_url=database_url, upstream_url=upstream)
    if not settings.upstream_url:
        raise CliError("--upstream (or PLOOTO_API_UPSTREAM_URL) is required: the portal's base URL")
    username = username.strip()
    if not 3 <= len(username) <= 320:  # as POST /authenticate takes it
        raise CliError("--username must be the Plooto login's e-mail (3 to 320 characters)")
    check_totp_secret(totp_secret)
    password = read_password("Plooto password")  # before the store is made: a refusal leaves nothing
    prepare_store(settings)
    run_connect(settings, console, username=username, password=password, totp_secret=totp_secret,
                label=label, browser=browser, sync_now=sync_now)  # fmt: skip


@app.command()
def sync(
    connection: Annotated[str | None, typer.Option(help="Connection id (default: every connection).")] = None,
    cadence: Annotated[str, typer.Option(help="all, fast (open items) or slow (reference data).")] = "all",
    mfa_code: Annotated[str | None, typer.Option(help="An MFA code the portal sent (SMS).")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Pull changes from the portal now, with progress."""
    from plooto_api.cli.connections import check_mfa_code, run_sync

    if cadence not in ("all", "fast", "slow"):
        raise CliError(f"--cadence must be all, fast or slow, not {cadence!r}")
    if mfa_code is not None:
        mfa_code = check_mfa_code(mfa_code, "--mfa-code")
    settings = load_store_settings(data_dir=data_dir, database_url=database_url)
    code = run_sync(settings, console, connection_id=connection, cadence=cadence, mfa_code=mfa_code)
    raise typer.Exit(code)


connections_app = typer.Typer(
    help="List, repair and remove connections (Plooto logins).", no_args_is_help=True
)
app.add_typer(connections_app, name="connections")


@connections_app.command("list")
def connections_list(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Show every connection and its state."""
    from plooto_api.cli.connections import run_list

    run_list(load_store_settings(data_dir=data_dir, database_url=database_url), console)


@connections_app.command("clear-drift")
def connections_clear_drift(
    connection: Annotated[str, typer.Argument(help="Connection id.")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Mark a connection's upstream change as reviewed, allowing writes again."""
    from plooto_api.cli.connections import run_clear_drift

    run_clear_drift(load_store_settings(data_dir=data_dir, database_url=database_url), console, connection)


@connections_app.command("resend-code")
def connections_resend_code(
    connection: Annotated[str, typer.Argument(help="Connection id.")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Have the portal send a new MFA code (SMS) to a connection waiting for one.

    The code it had sent may have expired. Give the new one with `plooto-api sync --connection ID
    --mfa-code CODE`.
    """
    from plooto_api.cli.connections import run_resend_code

    run_resend_code(load_store_settings(data_dir=data_dir, database_url=database_url), console, connection)


@connections_app.command("remove")
def connections_remove(
    connection: Annotated[str, typer.Argument(help="Connection id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Remove a connection: its credentials, portal session and everything synced from it.

    Its events and audit entries stay. The Plooto login itself is untouched.
    """
    from plooto_api.cli.connections import run_remove

    run_remove(
        load_store_settings(data_dir=data_dir, database_url=database_url), console, connection, yes=yes
    )


@connections_app.command("set-password")
def connections_set_password(
    connection: Annotated[str, typer.Argument(help="Connection id.")],
    totp_secret: Annotated[
        str | None,
        typer.Option(help="Also replace the TOTP secret.", envvar="PLOOTO_TOTP_SECRET"),
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Give a connection its new Plooto password, read from PLOOTO_PASSWORD or asked for (never a flag).

    A connection whose password was refused (requires_action: password) logs in again with it.
    """
    from plooto_api.cli.connections import run_set_password

    settings = load_store_settings(data_dir=data_dir, database_url=database_url)
    run_set_password(settings, console, connection, password=lambda: read_password("New Plooto password"),
                     totp_secret=totp_secret)  # fmt: skip


tokens_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def tokens_create(
    scopes: Annotated[
        str, typer.Option(help="Comma-separated scopes, e.g. bills:read,payments:read, or '*'.")
    ],
    company: Annotated[
        list[str] | None, typer.Option("--company", help="Limit to this company id (repeatable).")
    ] = None,
    connection: Annotated[str | None, typer.Option(help="Limit to this connection id.")] = None,
    name: Annotated[str | None, typer.Option(help="A name to recognise the token by.")] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime such as 90m, 12h, 30d or 8w (default: no expiry).")
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Create a token and print it alone on stdout (it is shown only this once)."""
    from plooto_api.cli.tokens import run_create

    settings = load_store_settings(data_dir=data_dir, database_url=database_url)
    print(run_create(settings, scopes=scopes, companies=company, connection=connection, name=name,
                     expires_in=expires_in))  # fmt: skip


@tokens_app.command("list")
def tokens_list(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """List tokens (prefix, scopes, limits, last use); never their secrets."""
    from plooto_api.cli.tokens import run_list

    run_list(load_store_settings(data_dir=data_dir, database_url=database_url), console)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (tok_…).")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Revoke a token; requests with it get 401 from now on."""
    from plooto_api.cli.tokens import run_revoke

    run_revoke(load_store_settings(data_dir=data_dir, database_url=database_url), console, token_id)


events_app = typer.Typer(
    help="Follow events live and replay them to webhook endpoints.", no_args_is_help=True
)
app.add_typer(events_app, name="events")


@events_app.command("tail")
def events_tail(
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only this type, or a family like bill.* (repeatable).")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between polls of the store.")] = 1.0,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Print one line per new event as it is recorded, until Ctrl-C."""
    from plooto_api.cli.events import run_tail

    settings = load_store_settings(data_dir=data_dir, database_url=database_url)
    run_tail(settings, console, event_types=event_type or [], interval=interval, count=count)


@events_app.command("replay")
def events_replay(
    since: Annotated[str, typer.Option(help="ISO 8601 time, or an age such as 30m, 2h, 3d.")],
    event_type: Annotated[
        str | None, typer.Option("--type", help="Only this type or family (bill.*).")
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="Only to this webhook endpoint (we_…).")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Queue past events again to their webhook endpoints (delivered by the running gateway)."""
    from plooto_api.cli.events import run_replay

    settings = load_store_settings(data_dir=data_dir, database_url=database_url)
    run_replay(settings, console, since=since, event_type=event_type, endpoint=endpoint)


vault_app = typer.Typer(help="Inspect the encrypted vault and rotate its key.", no_args_is_help=True)
app.add_typer(vault_app, name="vault")


@vault_app.command("status")
def vault_status(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Show the vault keys in force (ids only) and how many entries each one wraps."""
    from plooto_api.cli.vault import run_status

    raise typer.Exit(run_status(load_store_settings(data_dir=data_dir, database_url=database_url), console))


@vault_app.command("rotate-key")
def vault_rotate_key(
    keep_old: Annotated[
        bool, typer.Option(help="Keep the old key in the key file after re-wrapping.")
    ] = False,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Generate a new vault key and re-wrap every entry under it, while gateways keep running.

    With the key file it does everything; with PLOOTO_API_VAULT_KEY it prints the new key and the
    settings to roll out, then `plooto-api vault rewrap` finishes.
    """
    from plooto_api.cli.vault import run_rotate_key

    settings = load_store_settings(data_dir=data_dir, database_url=database_url)
    raise typer.Exit(run_rotate_key(settings, console, keep_old=keep_old))


@vault_app.command("rewrap")
def vault_rewrap(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Re-wrap every vault entry under the current key, in small batches."""
    from plooto_api.cli.vault import run_rewrap

    raise typer.Exit(run_rewrap(load_store_settings(data_dir=data_dir, database_url=database_url), console))


audit_app = typer.Typer(help="Check the append-only audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    expect_head: Annotated[
        str | None, typer.Option(help="A head hash from an earlier verify that must still be in the log.")
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Verify the hash chain: exit 0 "N entries, chain intact", or exit 1 naming the first bad entry."""
    from plooto_api.cli.audit import run_verify

    settings = load_store_settings(data_dir=data_dir, database_url=database_url)
    raise typer.Exit(run_verify(settings, console, expect_head=expect_head))


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Migrate the database schema to the newest version."""
    from plooto_api.cli.store import database_errors, describe_database, prepare_store
    from plooto_api.store.database import create_db_engine, current_revision, upgrade_to_head

    settings = load_settings(data_dir=data_dir, database_url=database_url)
    prepare_store(settings)
    with database_errors(settings):
        engine = create_db_engine(settings.resolved_database_url)
        try:
            upgrade_to_head(engine)
            console.print(f"{describe_database(settings)} is at revision {current_revision(engine)}")
        finally:
            engine.dispose()


@db_app.command("status")
def db_status(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Show the database's schema revision and the newest one this version ships."""
    from plooto_api.cli.store import describe_database
    from plooto_api.store.database import create_db_engine, current_revision, head_revision

    settings = load_store_settings(data_dir=data_dir, database_url=database_url)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        current, head = current_revision(engine), head_revision()
    finally:
        engine.dispose()
    state = "up to date" if current == head else "needs `plooto-api db upgrade`"
    console.print(f"{describe_database(settings)}: revision {current or 'none'}, newest {head} ({state})")


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


def describe_upstream_error(exc: BaseException) -> str:
    """The portal error's message, with the network's own reason when it names only an exception
    class ("could not reach the portal: ConnectError" says nothing of a refused port or a URL
    without its scheme)."""
    message = str(exc)
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        reason = str(cause).strip()
        if message.endswith(type(cause).__name__) and reason:
            return f"{message} ({reason.splitlines()[0]})"
        cause = cause.__cause__ or cause.__context__
    return message


def main() -> None:
    """Console-script entry point: one line and exit code 2 for anything the user can fix."""
    tune_gc()
    try:
        result = app(standalone_mode=False)
    except CliError as exc:
        print(f"plooto-api: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        from plooto_api.store.vault import VaultError
        from plooto_api.upstream import UpstreamError

        if isinstance(exc, UpstreamError):  # the portal refused or could not be reached: said, not traced
            print(f"plooto-api: {describe_upstream_error(exc)}", file=sys.stderr)
            sys.exit(1)
        if isinstance(exc, VaultError):  # a key not configured: the message names the setting to fix
            print(f"plooto-api: {exc}", file=sys.stderr)
            sys.exit(2)
        # Typer vendors its own click, so its usage errors are matched by shape, not by class.
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help itself, not a one-line error
            print(exc.format_message(), file=sys.stderr)  # type: ignore[attr-defined]
            sys.exit(2)
        format_message = getattr(exc, "format_message", None)
        if format_message is None or not hasattr(exc, "exit_code"):
            raise
        print(f"plooto-api: {format_message()}", file=sys.stderr)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)
