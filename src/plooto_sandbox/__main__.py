"""`python -m plooto_sandbox`: run the emulated portal with uvicorn and print the demo users."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import uvicorn

from plooto_sandbox.app import create_app
from plooto_sandbox.config import SandboxConfig
from plooto_sandbox.instance import Sandbox
from plooto_sandbox.persistence import StateFileError
from plooto_sandbox.seed import demo_users


def _utc_timestamp(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI flags (the contract `plooto-api sandbox` relies on)."""
    parser = argparse.ArgumentParser(prog="plooto_sandbox", description="Run the Plooto portal emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--companies", type=int, default=3)
    parser.add_argument("--bills-per-company", type=int, default=50)
    parser.add_argument("--no-control", action="store_true", help="disable the /__sandbox control API")
    parser.add_argument("--state-file", type=Path, default=None, help="persist state here across restarts")
    parser.add_argument(
        "--start-time",
        type=_utc_timestamp,
        default=None,
        help="initial sandbox clock, ISO-8601 (default 2026-03-02T14:00:00Z)",
    )
    parser.add_argument("--session-idle-minutes", type=int, default=15)
    parser.add_argument("--session-absolute-hours", type=int, default=12)
    parser.add_argument("--rate-limit", type=float, default=25.0, help="requests per second per session")
    parser.add_argument("--rate-burst", type=int, default=50)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--parent-pid", type=int, default=None,
        help="stop (saving state) when this process is gone, even killed: an embedded sandbox",
    )  # fmt: skip
    return parser.parse_args(argv)


def _stop_with_parent(server: uvicorn.Server, parent_pid: int) -> None:
    """Shut `server` down gracefully once `parent_pid` is no longer this process's parent (it ended,
    however: a gateway killed with -9 left its embedded sandbox running, holding its port and
    writing the state file that the gateway's next sandbox reads)."""

    def watch() -> None:
        while not server.should_exit:
            if os.getppid() != parent_pid:
                server.should_exit = True  # as SIGTERM does: uvicorn's loop checks it
                return
            time.sleep(1.0)  # a second's delay is plenty for a process that outlived its parent

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class AnnouncingServer(uvicorn.Server):
    """Prints the ready line only once the socket accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self.ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start uvicorn, then announce readiness on stdout."""
        await super().startup(sockets=sockets)
        if self.started:
            print(self.ready_line, flush=True)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound as uvicorn binds it (SO_REUSEADDR: a port in TIME_WAIT is free),
    before the demo data is seeded and its users printed: a port in use is said in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on connections of a socket whose
    # protocol says TCP; without it each small answer waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> int:
    """Seed, print the demo users, serve until interrupted."""
    args = parse_args(argv)
    if args.companies < 1 or args.bills_per_company < 0:
        print("--companies must be at least 1 and --bills-per-company at least 0", file=sys.stderr)
        return 2
    try:
        listener = _listen(args.host, args.port)
    except OSError as exc:
        reason = (
            "already in use (pass another --port)" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        )
        print(f"plooto_sandbox: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 2
    port = listener.getsockname()[1]  # --port 0: the one the system chose
    config = SandboxConfig(
        seed=args.seed,
        companies=args.companies,
        bills_per_company=args.bills_per_company,
        control_enabled=not args.no_control,
        state_file=args.state_file,
        session_idle_minutes=args.session_idle_minutes,
        session_absolute_hours=args.session_absolute_hours,
        rate_limit_per_second=args.rate_limit,
        rate_limit_burst=args.rate_burst,
    )
    if args.start_time is not None:
        config.start_time = args.start_time
    try:
        app = create_app(config)
    except StateFileError as exc:
        listener.close()
        print(f"plooto_sandbox: --state-file: {exc}", file=sys.stderr)
        return 2
    sandbox: Sandbox = app.state.sandbox
    print("Demo users (password: see README; never printed):", flush=True)
    for user in demo_users(sandbox.state):
        reach = (
            f"{len(user.roles)} companies"
            if len(user.roles) > 1
            else ", ".join(f"{c}: {r}" for c, r in user.roles.items())
        )
        mfa = user.mfa_method or "none"
        print(f"  {user.email:45} mfa={mfa:5} {reach}", flush=True)
    server = AnnouncingServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            # The app sends its own Date header (the sandbox clock); uvicorn's would contradict it.
            date_header=False,
            server_header=False,
        ),
        f"plooto-sandbox listening on http://{args.host}:{port}",
    )
    if args.parent_pid is not None:
        _stop_with_parent(server, args.parent_pid)
    try:
        asyncio.run(server.serve(sockets=[listener]))
    finally:
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
