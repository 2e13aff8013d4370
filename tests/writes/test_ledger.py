"""The audit chain and idempotency keys, on the store alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from itertools import pairwise

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from plooto_api.services import audit, idempotency
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models import AuditEntry, IdempotencyRecord


def test_the_audit_chain_verifies_and_detects_tampering(sessions: sessionmaker[Session]) -> None:
    for n in range(5):
        with transaction(sessions) as session:
            audit.append(session, actor="tok_1", action="create_payment.succeeded", object_id=f"pay_{n}",
                         detail={"amount": "10.00", "n": n}, upstream_evidence={"trace_id": f"t{n}", "http_status": 201})  # fmt: skip
    with sessions() as session:
        assert audit.verify_chain(session) == []
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
        assert rows[0].prev_hash is None and all(b.prev_hash == a.hash for a, b in pairwise(rows))
    with transaction(sessions) as session:
        session.execute(
            update(AuditEntry).where(AuditEntry.object_id == "pay_2").values(detail={"amount": "99.00"})
        )
    with sessions() as session:
        problems = audit.verify_chain(session)
    assert len(problems) == 1 and "hash does not match its content" in problems[0]
    with transaction(sessions) as session:
        session.execute(AuditEntry.__table__.delete().where(AuditEntry.object_id == "pay_3"))
    with sessions() as session:
        assert any("prev_hash" in p for p in audit.verify_chain(session))


def test_idempotency_claims_replays_and_refuses(sessions: sessionmaker[Session]) -> None:
    args = {"owner": "tok_1", "key": "k1", "method": "POST", "path": "/create_payment"}
    first = idempotency.claim(sessions, **args, fingerprint="a")
    assert first.outcome == "claimed" and first.record_id is not None
    assert idempotency.claim(sessions, **args, fingerprint="a").outcome == "in_flight"
    assert idempotency.claim(sessions, **args, fingerprint="b").outcome == "reused"
    assert idempotency.claim(sessions, **{**args, "owner": "tok_2"}, fingerprint="a").outcome == "claimed"
    idempotency.complete(sessions, first.record_id, 201, {"id": "pay_1"})
    replay = idempotency.claim(sessions, **args, fingerprint="a")
    assert (replay.outcome, replay.response_status, replay.response_body) == ("replay", 201, {"id": "pay_1"})
    with transaction(sessions) as session:  # seven days later the key is forgotten
        session.execute(update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert idempotency.claim(sessions, **args, fingerprint="b").outcome == "claimed"
    with pytest.raises(idempotency.InvalidKey):
        idempotency.claim(sessions, **{**args, "key": "x" * 256}, fingerprint="a")


def test_fifty_concurrent_claims_have_one_winner(sessions: sessionmaker[Session]) -> None:
    def attempt(_: int) -> str:
        return idempotency.claim(sessions, owner="tok_1", key="same", method="POST", path="/p",
                                 fingerprint="h").outcome  # fmt: skip

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert outcomes.count("claimed") == 1 and outcomes.count("in_flight") == 49
