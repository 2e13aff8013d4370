"""`GET /operations/{id}`: a write in flight or finished, with its result or error.

An operation carries the object its write made or changed, so reading it takes the read scope of
that object (the token that made the write may always follow it: its 202 points here); a token limited
to companies or a connection sees only its own tenants' operations.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from plooto_api.api.auth import current_principal, require
from plooto_api.api.errors import ApiError
from plooto_api.schemas import Operation
from plooto_api.services import writes
from plooto_api.services.tokens import Principal

router = APIRouter(tags=["operations"])

# The scope that reads what each kind of write acts on: an operation's result is that object whole,
# so a decision on a bill or payment is read with the scope that reads bills or payments.
READ_SCOPES: dict[str, str] = {
    "create_payment": "payments:read",
    "cancel_payment": "payments:read",
    "create_bill": "bills:read",
    "create_invoice": "invoices:read",
    "send_reminder": "invoices:read",
    "approve_bill": "bills:read",
    "reject_bill": "bills:read",
    "approve_payment": "payments:read",
    "reject_payment": "payments:read",
}
UNLISTED_KIND_SCOPE = "*"  # a kind missing above stays hidden from all but full-access tokens


def read_scope(kind: str) -> str:
    """The scope a token needs to see an operation of this kind."""
    return READ_SCOPES.get(kind, UNLISTED_KIND_SCOPE)


@router.get(
    "/operations/{operation_id}", response_model=Operation, summary="Get one operation (a write)",
    description="Needs the read scope of what the write acts on (its result is that object): "
    "`payments:read` (create_payment, cancel_payment, approve_payment, reject_payment), `bills:read` "
    "(create_bill, approve_bill, reject_bill), `invoices:read` (create_invoice, send_reminder). The token "
    "that made the write may always read it.",
    responses={403: {"description": "insufficient_scope"}, 404: {"description": "not_found"}},
)  # fmt: skip
def get_operation(
    request: Request, operation_id: str, principal: Annotated[Principal, Depends(current_principal)]
) -> Any:
    with request.app.state.sessions() as session:
        row = writes.get_operation(session, principal, operation_id[:64])
    if row is None:  # another tenant's operation does not exist for this token
        raise ApiError(404, "not_found", f"no operation {operation_id[:64]}", param="id")
    if (
        row.created_by != principal.token_id
    ):  # the token that made the write may follow it (its 202 points here)
        require(principal, read_scope(row.kind))
    return JSONResponse(writes.operation_json(row))
