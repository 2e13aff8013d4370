"""`plooto-api serve`: the gateway and its in-process worker, with the embedded sandbox by default."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from types import FrameType

import uvicorn
from rich.console import Console
from sqlalchemy.engine import make_url

from plooto_api import __version__
from plooto_api.cli.connections import print_report, sync_with_progress
from plooto_api.cli.embedded_sandbox import EmbeddedSandbox, EmbeddedSandboxError
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

    console.print(f"plooto-api {__version__}")
    console.print(
        f"  store:   {make_url(settings.resolved_database_url).render_as_string(hide_password=True)}"
    )
    sandbox: EmbeddedSandbox | None = None
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
        ctx = JobContext.from_settings(settings)
        try:
            token = ensure_admin_token(ctx)
        finally:
            ctx.engine.dispose()
        base = f"http://{settings.host}:{settings.port}"
        console.print(f"  gateway: {base}")
        console.print(f"  docs:    {base}/docs  (OpenAPI at {base}/openapi.json)")
        console.print(f"  token:   {token}")
        console.print(f'  try:     curl -H "Authorization: Bearer {token}" {base}/bills?limit=3')
        console.file.flush()
        config = uvicorn.Config(
            create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False
        )
        server = stopper.server = uvicorn.Server(config)
        if stopper.requested:  # a SIGTERM whose KeyboardInterrupt was dropped on the way here
            raise KeyboardInterrupt
        # uvicorn re-raises Ctrl-C after a graceful shutdown; stopping is the intended outcome.
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if sandbox is not None:
            sandbox.stop()
    console.print("plooto-api stopped")
