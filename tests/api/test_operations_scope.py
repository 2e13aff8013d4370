"""`GET /operations/{id}`: the read scope of what the write acts on, and the token's tenants."""

from __future__ import annotations

from typing import Any

import pytest

from plooto_api.api.routes.operations import READ_SCOPES
from plooto_api.services.tokens import READ_SCOPES as KNOWN_READ_SCOPES
from plooto_api.services.tokens import create_token
from plooto_api.services.writes import KINDS
from plooto_api.store import models
from plooto_api.store.base import new_id, utcnow
from plooto_api.store.database import transaction

# What each kind of write returns: a token that may read it may read the operation.
OBJECT_TYPES = {
    "create_payment": "payment", "cancel_payment": "payment", "create_bill": "bill",
    "create_invoice": "invoice", "send_reminder": "invoice", "approve_bill": "bill", "reject_bill": "bill",
    "approve_payment": "payment", "reject_payment": "payment",
}  # fmt: skip


def _operation(world: dict[str, Any], tenant: str, kind: str) -> str:
    """A finished operation of `kind` in `tenant`, carrying the object it wrote."""
    obj = next(o for o in world[tenant]["objects"] if o.object == OBJECT_TYPES[kind])
    now = utcnow()
    operation_id = new_id("op")
    with transaction(world["client"].app.state.sessions) as session:
        session.add(models.Operation(
            id=operation_id, connection_id=world[tenant]["connection"], company_id=world[tenant]["company"],
            kind=kind, status="succeeded", request={"object_type": obj.object, "object_id": obj.id},
            result={"object": obj.model_dump(mode="json")}, reference=f"papi-{operation_id}",
            upstream_id=obj.upstream_id, attempts=1, created_at=now, updated_at=now, finished_at=now,
        ))  # fmt: skip
    return operation_id


def _token(world: dict[str, Any], *scopes: str, **limits: Any) -> str:
    with transaction(world["client"].app.state.sessions) as session:
        return create_token(session, scopes=list(scopes), **limits)[1]


def _get(world: dict[str, Any], operation_id: str, token: str) -> Any:
    return world["client"].get(f"/operations/{operation_id}", headers={"Authorization": f"Bearer {token}"})


def test_every_kind_of_write_names_a_read_scope() -> None:
    assert set(READ_SCOPES) == set(KINDS)
    assert set(READ_SCOPES.values()) <= set(KNOWN_READ_SCOPES)


@pytest.mark.parametrize("kind", sorted(OBJECT_TYPES))
def test_an_operation_takes_the_read_scope_of_what_it_writes(world: dict[str, Any], kind: str) -> None:
    operation_id = _operation(world, "a", kind)
    needed = READ_SCOPES[kind]
    seen = _get(world, operation_id, _token(world, needed))
    assert seen.status_code == 200, seen.text
    assert (
        seen.json()["id"] == operation_id and seen.json()["result"]["object"]["object"] == OBJECT_TYPES[kind]
    )
    assert _get(world, operation_id, world["tokens"]["admin"]).status_code == 200
    others = sorted(set(KNOWN_READ_SCOPES) - {needed})
    write = (
        f"{OBJECT_TYPES[kind]}s:write" if not kind.startswith(("approve", "reject")) else "approvals:write"
    )
    for scopes in (others, [write]):
        denied = _get(world, operation_id, _token(world, *scopes))
        assert denied.status_code == 403, (scopes, denied.text)
        error = denied.json()["error"]
        assert error["code"] == "insufficient_scope" and needed in error["message"]
        assert error["request_id"] and "result" not in denied.text


def test_a_payment_is_not_read_through_a_bills_token(world: dict[str, Any]) -> None:
    # The tester's repro: a bills:read token read a create_payment operation, payment and all.
    operation_id = _operation(world, "a", "create_payment")
    denied = _get(world, operation_id, world["tokens"]["bills_only"])
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_scope"
    assert "P-1" not in denied.text


def test_other_tenants_operations_do_not_exist(world: dict[str, Any]) -> None:
    mine, theirs = _operation(world, "a", "create_payment"), _operation(world, "b", "create_payment")
    company_a = _token(world, "payments:read", company_ids=[world["a"]["company"]])
    connection_b = _token(world, "payments:read", connection_id=world["b"]["connection"])
    assert _get(world, mine, company_a).status_code == 200
    assert _get(world, theirs, connection_b).status_code == 200
    for operation_id, token in ((theirs, company_a), (mine, connection_b)):
        hidden = _get(world, operation_id, token)
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    assert _get(world, "op_missing", world["tokens"]["admin"]).status_code == 404
    assert _get(world, mine, "").status_code == 401


def test_the_token_that_made_a_write_follows_its_operation(world: dict[str, Any]) -> None:
    # A 202 answers with the operation to poll: the writer's token may poll it without the read scope.
    with transaction(world["client"].app.state.sessions) as session:
        row, writer = create_token(session, scopes=["payments:write"])
    operation_id = _operation(world, "a", "create_payment")
    with transaction(world["client"].app.state.sessions) as session:
        operation = session.get(models.Operation, operation_id)
        assert operation is not None
        operation.created_by = row.id
    assert _get(world, operation_id, writer).status_code == 200
    assert _get(world, operation_id, _token(world, "payments:write")).status_code == 403
