"""`GET /approvals`: bills and payments awaiting approval (or decided), one list."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from plooto_api.api.auth import require_scope
from plooto_api.api.errors import ApiError
from plooto_api.schemas import ApprovalStep, Bill, Money, Payment
from plooto_api.schemas.objects import ApprovalStatus
from plooto_api.services import approvals
from plooto_api.services.objects import readable_object_types
from plooto_api.services.tokens import Principal
from plooto_api.store.pagination import DEFAULT_LIMIT, MAX_LIMIT, InvalidCursor, PageRequest

router = APIRouter(tags=["approvals"])


class ApprovalItem(BaseModel):
    """A bill or payment in its approval workflow."""

    id: str = Field(description="The bill's or payment's id (an approval is read and decided by it).")
    object: Literal["approval"] = "approval"
    type: Literal["bill", "payment"]
    company_id: str
    status: ApprovalStatus | None
    amount: Money | None = None
    steps: list[ApprovalStep]
    bill: Bill | None = Field(
        None,
        description="The bill itself (type bill), for a token that may read bills (`bills:read`); null otherwise.",
    )
    payment: Payment | None = Field(
        None,
        description="The payment itself (type payment), for a token with `payments:read`; null otherwise.",
    )


class ApprovalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApprovalItem]
    has_more: bool
    next_cursor: str | None = None


@router.get("/approvals", response_model=ApprovalList, summary="List bills and payments awaiting approval")
def list_approvals(
    request: Request,
    principal: Annotated[Principal, Depends(require_scope("approvals:read"))],
    company: Annotated[str | None, Query(max_length=64, description="company (client book) id")] = None,
    status: Annotated[
        Literal["pending", "approved", "rejected"],
        Query(
            description="pending: awaiting approval now; approved: every required approval was given; "
            "rejected: an approver refused. Objects that needed no approval, and payments cancelled "
            "before their approvals were given, are in none of these lists."
        ),
    ] = "pending",
    type: Annotated[
        Literal["bill", "payment"] | None, Query(description="bill or payment; both by default")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> Any:
    try:
        with request.app.state.sessions() as session:
            # An approval shows the bill or payment it is about to a token that may read it.
            types = readable_object_types(principal.scopes)
            readable = {"bill", "payment"} if types is None else types & {"bill", "payment"}
            page = approvals.list_approvals(session, principal.access, PageRequest(limit, cursor),
                                            kind=type, status=status, company=company, readable=readable)  # fmt: skip
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc), param="cursor") from exc
    return JSONResponse({"object": "list", "data": page.items, "has_more": page.has_more,
                         "next_cursor": page.next_cursor})  # fmt: skip
