"""Property-based API testing: schemathesis against the real gateway's /openapi.json.

Runs `plooto-api serve` (embedded sandbox) on a real port and lets schemathesis generate requests
for every operation, valid and invalid. Nothing may answer 5xx, and every documented response must
match its schema.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]


@pytest.mark.slow
def test_no_server_errors_and_no_schema_violations(
    tmp_path: Path, process_database_env: dict[str, str]
) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is a test dependency"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLOOTO_API_")} | process_database_env
    port = free_port()
    out = tmp_path / "serve.out"
    with out.open("w") as handle:
        server = subprocess.Popen([*CLI, "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=handle,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        token = None
        while token is None:
            assert server.poll() is None and time.monotonic() < deadline, out.read_text()[-3000:]
            match = re.search(r"token:\s+(papi_\S+)", out.read_text())
            token = match.group(1) if match else None
            time.sleep(0.1)  # waiting for the gateway's first sync
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        result = subprocess.run(
            [
                schemathesis, "run", f"{base}/openapi.json",
                "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
                "--header", f"Authorization: Bearer {token}",
                "--max-examples", os.environ.get("PLOOTO_API_SCHEMATHESIS_EXAMPLES", "12"),
                "--generation-deterministic", "--request-timeout", "30", "--no-color",
            ],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
