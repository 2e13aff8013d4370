"""--state-file: writes and sessions survive a restart; a corrupt file falls back to the seed."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from plooto_sandbox import SandboxConfig, create_app
from sandbox.sandbox_helpers import CONTROLLER, login


def config(path: Path) -> SandboxConfig:
    return SandboxConfig(seed=4, companies=1, bills_per_company=10, state_file=path)


def test_state_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.state"
    with TestClient(create_app(config(path))) as first:
        headers = login(first, CONTROLLER)
        company_id = first.get("/api/companies", headers=headers).json()["items"][0]["companyId"]
        first.post("/__sandbox/mutate", json={"action": "createBills", "companyId": company_id, "count": 2})
        first.post("/__sandbox/clock", json={"advance_minutes": 3})
        cookies = dict(first.cookies)
    assert path.exists()
    with TestClient(create_app(config(path))) as second:
        second.cookies.update(cookies)
        bills = second.get(f"/api/companies/{company_id}/bills", headers=headers).json()
        assert bills["totalCount"] == 12
        assert second.get("/__sandbox/clock").json()["now"] == "2026-03-02T14:03:00Z"


def test_corrupt_state_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "broken.state"
    path.write_bytes(b"not a pickle")
    with TestClient(create_app(config(path))) as client:
        assert client.get("/__sandbox/clock").json()["now"] == "2026-03-02T14:00:00Z"
