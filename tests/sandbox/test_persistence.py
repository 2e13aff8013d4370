"""--state-file: writes and sessions survive a restart; a state file of ours that is corrupt falls back
to the seed; a file that is not the sandbox's is refused, never overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from plooto_sandbox import SandboxConfig, create_app
from plooto_sandbox.persistence import MAGIC, StateFileError, load_state
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


def test_a_corrupt_state_file_of_ours_falls_back_to_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "broken.state"
    path.write_bytes(MAGIC + b"cut short")
    with TestClient(create_app(config(path))) as client:
        assert client.get("/__sandbox/clock").json()["now"] == "2026-03-02T14:00:00Z"
    assert load_state(path) is not None, "replaced by a good one at shutdown"


@pytest.mark.parametrize(
    "content", [b"root:x:0:0:root:/root:/bin/bash\n", b"\x80\x05not a pickle", b"\x80\x05K\x01."]
)
def test_a_file_that_is_not_a_state_file_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    # It was read as "unreadable, start fresh", then the state was written over it at shutdown:
    # pointed at /etc/passwd by mistake, that destroyed it.
    path = tmp_path / "passwd"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match="is not a plooto-sandbox state file"):
        create_app(config(path))
    assert path.read_bytes() == content


def test_a_state_file_written_before_the_header_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.state"
    with TestClient(create_app(config(path))) as first:
        first.post("/__sandbox/clock", json={"advance_minutes": 7})
    path.write_bytes(path.read_bytes()[len(MAGIC) :])  # as the sandbox wrote it before
    with TestClient(create_app(config(path))) as second:
        assert second.get("/__sandbox/clock").json()["now"] == "2026-03-02T14:07:00Z"
    assert path.read_bytes().startswith(MAGIC)


def test_an_empty_file_starts_from_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "empty.state"
    path.touch()
    with TestClient(create_app(config(path))) as client:
        assert client.get("/__sandbox/clock").json()["now"] == "2026-03-02T14:00:00Z"
    assert path.read_bytes().startswith(MAGIC)
