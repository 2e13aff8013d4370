"""`plooto-api serve`: the gateway and its in-process worker, with the embedded sandbox by default."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import IO

import uvicorn
from rich.console import Console
from sqlalchemy.engine import make_url

from plooto_api import __version__
from plooto_api.cli.connections import print_report, sync_with_progress
from plooto_api.cli.embedded_sandbox import EmbeddedSandbox, EmbeddedSandboxError
from plooto_api.cli.store import database_errors, ensure_data_dir, prepare_store
from plooto_api.config import Settings
from plooto_api.jobs.context import JobContext
from plooto_api.services.demo import DEMO_USERNAME, ensure_admin_token, ensure_demo_connection


def _first_sync(settings: Settings, console: Console, sandbox_url: str) -> None:
    async def run() -> None:
        ctx = JobContext.from_settings(settings)
        try:
            connection_id = ensure_demo_connection(ctx, sandbox_url)
            console.print(f"syncing the demo connection {connection_id} ({DEMO_USERNAME})")
            print_report(console, await sync_with_progress(ctx, console, connection_id, "all"))
        finally:
            await ctx.aclose()

    asyncio.run(run())


LOCK_FILENAME = "serve.lock"


def _bind(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound before anything else is done, so that a port in use
    stops a second `serve` before it starts a sandbox, syncs or delivers anything (uvicorn would
    only find out once everything had run). Bound as uvicorn binds: SO_REUSEADDR, so a port whose
    last connections are in TIME_WAIT (a restart) is free."""
    from plooto_api.cli import CliError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on connections of a socket whose
    # protocol says TCP; without it each small answer waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = "already in use (pass another --port)"
        elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
            reason = f"{exc.strerror or exc} (pass a --host this machine has, such as 127.0.0.1)"
        else:
            reason = exc.strerror or str(exc)
        raise CliError(f"cannot listen on {host}:{port}: {reason}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def check_can_listen(host: str, port: int) -> None:
    """Refuse, as `serve` does, an address that cannot be listened on, before a program that would
    only find out after its start-up (`plooto-api sandbox`) begins."""
    _bind(host, port).close()


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an OS lock on the data directory for as long as this `serve` runs: two gateways on one
    directory would share its SQLite store and its embedded sandbox. The kernel drops the lock when
    the process ends, however it ends (kill -9 too), so a lock left behind never blocks a restart."""
    from plooto_api.cli import CliError

    path = data_dir / LOCK_FILENAME
    try:
        handle = path.open("a+")
    except OSError as exc:
        raise CliError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise CliError(
            f"another `plooto-api serve`{pid} is already running on the data directory {data_dir}"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class _Stopper:
    """Make SIGTERM (how a service manager, a container runtime or `kill` stops it) end `serve` as
    Ctrl-C does, through the `finally` that stops the embedded sandbox. At its default, SIGTERM
    ends the process outright (uvicorn raises it again after its own graceful shutdown), leaving
    the sandbox child running on its port.

    Before uvicorn runs, the handler raises KeyboardInterrupt; Python drops an exception raised
    where it cannot propagate (a weakref callback, a `__del__`), so the request is also kept in
    `requested` and checked before serving, and once the server exists it is told to exit instead
    (uvicorn replaces this handler with its own when it starts, and stops at once if told so)."""

    def __init__(self) -> None:
        self.requested = False
        self.server: uvicorn.Server | None = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self)

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True
            return
        raise KeyboardInterrupt


def run_serve(settings: Settings, console: Console) -> None:
    """Start everything, print where it is, and serve until Ctrl-C or SIGTERM; then stop everything."""
    from plooto_api.api.app import create_app
    from plooto_api.cli import CliError

    # What is in use is found out before anything is touched: the port, the data directory, the store.
    listener = _bind(settings.host, settings.port)
    lock: IO[str] | None = None
    sandbox: EmbeddedSandbox | None = None
    try:
        prepare_store(settings)
        if (
            settings.database_url is None or not settings.upstream_url
        ):  # the data dir holds the store or sandbox
            lock = _lock_data_dir(ensure_data_dir(settings))
    except BaseException:
        listener.close()
        raise
    port = listener.getsockname()[1]  # --port 0: the one the system chose
    console.print(f"plooto-api {__version__}")
    console.print(
        f"  store:   {make_url(settings.resolved_database_url).render_as_string(hide_password=True)}"
    )
    stopper = _Stopper()
    stopper.install()
    try:
        if not settings.upstream_url:
            sandbox = EmbeddedSandbox(settings.ensure_data_dir())
            try:
                sandbox_url = sandbox.start()
            except EmbeddedSandboxError as exc:
                raise CliError(str(exc)) from exc
            console.print(f"  sandbox: {sandbox_url}  (embedded Plooto portal emulator with demo data)")
            settings = settings.model_copy(update={"upstream_url": sandbox_url})
            _first_sync(settings, console, sandbox_url)
        else:
            console.print(f"  portal:  {settings.upstream_url}")
        with database_errors(settings):
            ctx = JobContext.from_settings(settings)
        try:
            # Only the demo's: a token printed on every start of a real deployment would sit in its logs.
            token = ensure_admin_token(ctx) if sandbox is not None else None
        finally:
            ctx.engine.dispose()
        base = f"http://{settings.host}:{port}"
        console.print(f"  gateway: {base}")
        console.print(f"  docs:    {base}/docs  (OpenAPI at {base}/openapi.json)")
        if token is not None:
            console.print(f"  token:   {token}")
            console.print(f'  try:     curl -H "Authorization: Bearer {token}" "{base}/bills?limit=3"')
        else:
            console.print("  tokens:  make one with `plooto-api tokens create --scopes '*' --name admin`"
                          + (" (the demo's was revoked)" if sandbox is not None else ""))  # fmt: skip
        console.file.flush()
        config = uvicorn.Config(
            create_app(settings), host=settings.host, port=port, log_config=None, access_log=False
        )
        server = stopper.server = uvicorn.Server(config)
        if stopper.requested:  # a SIGTERM whose KeyboardInterrupt was dropped on the way here
            raise KeyboardInterrupt
        # uvicorn re-raises Ctrl-C after a graceful shutdown; stopping is the intended outcome.
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        if sandbox is not None:
            sandbox.stop()
        listener.close()
        if lock is not None:
            lock.close()  # releases the lock; the file stays, empty of meaning without it
    console.print("plooto-api stopped")
