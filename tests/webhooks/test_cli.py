"""`plooto-api events tail` follows new events; `plooto-api events replay` re-queues deliveries."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.services.events import record_event
from plooto_api.store.database import transaction
from plooto_api.store.models import WebhookDelivery, WebhookEndpoint

CLI = [sys.executable, "-c", "from plooto_api.cli import main; main()"]


def test_tail_prints_new_events_of_the_chosen_types(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    with transaction(sessions) as session:
        record_event(session, "bill.created", data={}, object_id="bill_old")  # before the tail: not shown
    proc = subprocess.Popen(
        [*CLI, "events", "tail", "--type", "payment.*", "--type", "invoice.paid", "--interval", "0.1",
         "--count", "2", "--database-url", database_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        assert "following events" in proc.stdout.readline()
        with transaction(sessions) as session:
            for event_type in ("bill.updated", "payment.sent", "invoice.paid"):
                record_event(session, event_type, data={}, object_id=f"obj_{event_type}")
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a child process with a deadline
        out = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    lines = out.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["payment.sent", "invoice.paid"]
    assert lines[0].split()[3] == "obj_payment.sent"


def test_replay_requeues_deliveries(database_url: str, sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as session:
        session.add(WebhookEndpoint(id="we_1", url="https://example.com/hooks"))
    with transaction(sessions) as session:
        for n in range(3):
            record_event(session, "bill.updated" if n else "payment.sent", data={}, object_id=f"o{n}")
    with transaction(sessions) as session:
        for delivery in session.scalars(select(WebhookDelivery)):
            delivery.status = "failed"
    result = subprocess.run(
        [*CLI, "events", "replay", "--since", "1h", "--type", "bill.*", "--endpoint", "we_1",
         "--database-url", database_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "queued 2 deliveries" in result.stdout
    with sessions() as session:
        assert sorted(session.scalars(select(WebhookDelivery.status))) == ["failed", "pending", "pending"]
    bad = subprocess.run([*CLI, "events", "replay", "--since", "yesterday", "--database-url", database_url],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--since" in bad.stderr
    missing = subprocess.run([*CLI, "events", "replay", "--since", "1h", "--endpoint", "we_nope",
                              "--database-url", database_url], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "we_nope" in missing.stderr
