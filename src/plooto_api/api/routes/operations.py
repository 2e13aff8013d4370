"""`GET /operations/{id}`: a write in flight or finished, with its result or error."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from plooto_api.api.auth import current_principal
from plooto_api.api.errors import ApiError
from plooto_api.schemas import Operation
from plooto_api.services import writes
from plooto_api.services.tokens import Principal

router = APIRouter(tags=["operations"])


@router.get("/operations/{operation_id}", response_model=Operation, summary="Get one operation (a write)")
def get_operation(
    request: Request, operation_id: str, principal: Annotated[Principal, Depends(current_principal)]
) -> Any:
    with request.app.state.sessions() as session:
        row = writes.get_operation(session, principal, operation_id[:64])
    if row is None:
        raise ApiError(404, "not_found", f"no operation {operation_id[:64]}", param="id")
    return JSONResponse(writes.operation_json(row))
