"""The `audit verify` command: walk the hash chain of the audit log and say where it breaks."""

from __future__ import annotations

import re

from rich.console import Console
from sqlalchemy import func, select

from plooto_api.cli import CliError
from plooto_api.config import Settings
from plooto_api.services import audit
from plooto_api.store.database import create_db_engine, session_factory
from plooto_api.store.models import AuditEntry

_HEAD_HASH = re.compile(r"[0-9a-f]{64}")


def run_verify(settings: Settings, console: Console, *, expect_head: str | None = None) -> int:
    """0 and "N entries, chain intact" when every entry verifies; 1 and the first bad entry otherwise.

    The chain proves that no entry was edited, removed or reordered, except for the newest ones:
    dropping the tail leaves a shorter valid chain. `expect_head` (a head hash printed by an earlier
    run and kept elsewhere) closes that gap: it must still be in the chain.
    """
    if expect_head is not None:
        expect_head = expect_head.strip().lower()
        # A typo is the user's to fix, not a removed entry: a head hash is an entry's SHA-256.
        if not _HEAD_HASH.fullmatch(expect_head):
            raise CliError(
                "--expect-head: not a head hash (64 hexadecimal characters, as `audit verify` prints)"
            )
    engine = create_db_engine(settings.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            problems = audit.verify_chain(session)
            count = session.scalar(select(func.count()).select_from(AuditEntry)) or 0
            head = session.execute(
                select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)
            ).first()
            anchored = expect_head is None or session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.hash == expect_head)
            )
    finally:
        engine.dispose()
    if problems:
        console.print(f"audit chain broken: {problems[0]}")
        if len(problems) > 1:
            console.print(f"({len(problems) - 1} more problem(s) after it)")
        return 1
    if not anchored:
        console.print(f"audit chain broken: the expected head {expect_head} is no longer in the log "
                      "(entries after an earlier verification were removed)")  # fmt: skip
        return 1
    suffix = f" (head: entry {head.seq}, hash {head.hash})" if head else ""
    console.print(f"{count} entries, chain intact{suffix}")
    return 0
