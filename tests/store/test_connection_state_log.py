"""A connection's state change is logged, saying when it needs a person, so operators tailing the
gateway's log see it without reading events."""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker
from structlog.testing import capture_logs

from plooto_api.config import Settings
from plooto_api.services.connections import change_state, create_connection
from plooto_api.store.database import transaction
from plooto_api.store.vault import Vault, generate_key


def test_a_connection_needing_a_person_is_logged_and_so_is_its_repair(
    sessions: sessionmaker[Session],
) -> None:
    vault = Vault.from_settings(Settings(vault_key=SecretStr(generate_key())))
    with transaction(sessions) as session:
        connection = create_connection(session, vault, username="clerk@northwind-cpa.test", password="s3cret-pw",
                                       upstream_url="http://127.0.0.1:9")  # fmt: skip
        with capture_logs() as logs:
            change_state(session, connection, "requires_action", reason="password")
            change_state(session, connection, "requires_action", reason="password")  # no change, no line
            change_state(session, connection, "healthy")
    assert [(e["needs_a_person"], e["state"], e.get("reason")) for e in logs] == [
        (True, "requires_action", "password"),
        (False, "healthy", None),
    ]
    assert logs[0]["connection"] == connection.id and "s3cret-pw" not in repr(logs)
