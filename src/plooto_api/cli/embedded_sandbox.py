"""The embedded sandbox: `plooto-api serve` with no upstream runs plooto-sandbox beside the gateway.

It is a separate process (the two never share code, only HTTP), in the gateway's process group,
keeping its state in the data directory so a restart finds the same portal, sessions included.
It reuses its previous port when it can, so saved cookies and URLs stay valid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEMO_SEED, DEMO_COMPANIES, DEMO_BILLS_PER_COMPANY = 42, 3, 50
READY_LINE = "plooto-sandbox listening on "


class EmbeddedSandboxError(RuntimeError):
    """The sandbox could not be started."""


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As uvicorn binds: a port whose last connections are in TIME_WAIT is free to reuse.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _choose_port(port_file: Path) -> int:
    if port_file.exists():
        with contextlib.suppress(ValueError):
            previous = int(port_file.read_text().strip())
            if _port_is_free(previous):
                return previous
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedSandbox:
    """A plooto-sandbox child process on a loopback port."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "sandbox"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> str:
        """Start the sandbox and wait until it accepts connections; returns its base URL."""
        port = _choose_port(self.dir / "port")
        log_path = self.dir / "sandbox.log"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "plooto_sandbox", "--host", "127.0.0.1", "--port", str(port),
                    "--seed", str(DEMO_SEED), "--companies", str(DEMO_COMPANIES),
                    "--bills-per-company", str(DEMO_BILLS_PER_COMPANY), "--state-file", str(self.dir / "state.pickle"),
                    "--parent-pid", str(os.getpid()),  # it stops if this gateway is killed
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while READY_LINE not in log_path.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise EmbeddedSandboxError(f"the embedded sandbox exited; see {log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedSandboxError(
                    f"the embedded sandbox did not start in {timeout:.0f} s; see {log_path}"
                )
            time.sleep(0.05)  # waiting for a child process to bind its port
        (self.dir / "port").write_text(str(port))
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the sandbox gracefully (it saves its state), or kill it if it will not stop."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
