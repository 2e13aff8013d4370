"""Routes that write to the portal: payments, bills, invoices, approvals, cancel, remind.

Each route checks its scope, honours `Idempotency-Key`, lets `services.writes` resolve the request
against the store (clear 4xx before anything is sent), records the intent and runs the write as a
job. If the portal answers within the short wait the object comes back; otherwise `202` with the
operation to poll at `GET /operations/{id}`.
"""

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, Self, get_args, get_origin

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from sqlalchemy.orm import Session

from plooto_api import schemas
from plooto_api.api.auth import require_scope
from plooto_api.api.errors import ApiError, error_body, invalid_request, not_json_message
from plooto_api.services import idempotency, uploads, writes
from plooto_api.services.tokens import Principal
from plooto_api.store import models
from plooto_api.upstream import DOCUMENT_DATE_RANGE, SCHEDULE_HORIZON, WRITE_LIMITS

router = APIRouter(tags=["writes"])

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class _Reach:
    """How far from the portal's today a date of a write may be (upstream.portal states its reach)."""

    ahead: timedelta
    behind: timedelta | None  # None: any day before today

    def refusal(self, day: date, today: date) -> str | None:
        """Why the portal would refuse `day` on `today`, or None. A day of slack each way: today is
        the portal's by what this process last heard of its clock; near the edge the portal decides."""
        latest = today + self.ahead
        if self.behind is None:
            if day <= latest + _SLACK:
                return None
            return f"must be at most {self.ahead.days} days ahead, {latest.isoformat()} at the latest"
        earliest = today - self.behind
        if earliest - _SLACK <= day <= latest + _SLACK:
            return None
        return f"must be between {earliest.isoformat()} and {latest.isoformat()}"


_SLACK = timedelta(days=1)
# Dates the portal would refuse are refused here, before anything is recorded, by the portal's
# today (its clock may differ from this machine's; the sandbox's is simulated): see _out_of_reach.
ScheduleDate = Annotated[date, _Reach(SCHEDULE_HORIZON, None)]  # a debit or a send: ≤ a year ahead
DocumentDate = Annotated[date, _Reach(DOCUMENT_DATE_RANGE, DOCUMENT_DATE_RANGE)]  # ± ten years


def _reach_of(field: FieldInfo) -> _Reach | None:
    """The reach a field's type declares (`ScheduleDate`, `DocumentDate`, or either `| None`)."""
    found = [item for item in field.metadata if isinstance(item, _Reach)]
    for arg in get_args(field.annotation):
        if get_origin(arg) is Annotated:
            found += [item for item in get_args(arg)[1:] if isinstance(item, _Reach)]
    return found[0] if found else None


def _out_of_reach(body: BaseModel, today: date, prefix: str = "") -> tuple[str, str] | None:
    """The first date of `body` (nested bodies included) the portal would refuse on `today`, as
    (its dotted name, why), or None."""
    for name, field in type(body).model_fields.items():
        value = getattr(body, name)
        if isinstance(value, BaseModel):
            found = _out_of_reach(value, today, f"{prefix}{name}.")
            if found is not None:
                return found
            continue
        reach = _reach_of(field)
        why = reach.refusal(value, today) if reach is not None and isinstance(value, date) else None
        if why is not None:
            return f"{prefix}{name}", why
    return None


async def _check_dates(request: Request, body: BaseModel, connection_id: str) -> None:
    portal = await request.app.state.ctx.portals.get(connection_id)
    today = portal.known_today()  # on the loop, as the session restores its saved state everywhere
    refused = _out_of_reach(body, today)
    if refused is not None:
        name, why = refused
        raise writes.WriteRefused(400, "invalid_request", f"{name}: {why}", param=name)
    recurring = getattr(body, "recurring", None)
    issued = getattr(body, "issue_date", None) or today
    if recurring is not None and recurring.end_date is not None and recurring.end_date < issued:
        raise writes.WriteRefused(
            400, "invalid_request", f"recurring.end_date: before the invoice's issue date, {issued.isoformat()}",
            param="recurring.end_date",
        )  # fmt: skip


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreatePayment(Body):
    bill_id: str = Field(min_length=1, max_length=64, description="An approved bill.")
    amount: Decimal | None = Field(None, description="Decimal string; default: the amount due.")
    method: Literal["eft", "ach", "cheque", "wire", "card", "instant", "email_transfer"] | None = Field(
        None, description="Default: the vendor's default method for the currencies."
    )
    debit_bank_account_id: str | None = Field(
        None, min_length=1, max_length=64, description="Default: the company's account."
    )
    scheduled_for: ScheduleDate | None = Field(
        None, description="Debit date, at most 365 days ahead; default: the earliest the portal allows."
    )
    memo: str | None = Field(None, max_length=255)


# What the portal accepts (upstream.WRITE_LIMITS) is checked here, so that a value it would refuse is
# a 400 naming the field before anything is recorded or sent, not a portal refusal after.
_LIMITS = WRITE_LIMITS
LineAmount = Annotated[
    Decimal,
    Field(max_digits=_LIMITS.amount_digits, decimal_places=_LIMITS.amount_places, examples=["125.00"]),
]
Quantity = Annotated[
    Decimal, Field(gt=0, max_digits=_LIMITS.quantity_digits, decimal_places=_LIMITS.quantity_places)
]


class Line(Body):
    description: str = Field(min_length=1, max_length=500)
    quantity: Quantity | None = Field(None, description="More than zero; default 1.")
    unit_price: LineAmount | None = None
    amount: LineAmount | None = Field(
        None, description="Needed without unit_price; default quantity times unit_price."
    )
    account_code: str | None = Field(None, max_length=_LIMITS.account_code_length)

    @model_validator(mode="after")
    def _priced(self) -> Self:
        if self.amount is None and self.unit_price is None:
            raise ValueError("a line needs an amount or a unit_price")
        return self


class CreateBill(Body):
    vendor_id: str = Field(min_length=1, max_length=64)
    number: str = Field(min_length=1, max_length=_LIMITS.number_length)
    issue_date: DocumentDate = Field(description="Within ten years of today, as is due_date.")
    due_date: DocumentDate
    lines: list[Line] = Field(min_length=1, max_length=500)
    currency: str | None = Field(None, min_length=3, max_length=3)
    memo: str | None = Field(None, max_length=200)


class Reminders(Body):
    enabled: bool = True
    days_before_due: list[Annotated[int, Field(ge=0, le=_LIMITS.reminder_days_before)]] = Field(
        default_factory=list, max_length=10
    )
    days_after_due: list[Annotated[int, Field(ge=0, le=_LIMITS.reminder_days_after)]] = Field(
        default_factory=list, max_length=10
    )

    @field_validator("days_before_due", "days_after_due")
    @classmethod
    def _each_day_once(cls, days: list[int], info: ValidationInfo) -> list[int]:
        # The portal makes a reminder of each entry: a day given twice (0 is the due day in both
        # lists) sends the customer the same reminder twice.
        earlier = info.data.get("days_before_due", []) if info.field_name == "days_after_due" else []
        if len(set(days)) != len(days) or (0 in days and 0 in earlier):
            raise ValueError(
                "each day once: a day given twice (0, the due day, in both lists) sends two reminders"
            )
        return days


class Recurring(Body):
    frequency: Literal["weekly", "biweekly", "monthly"]
    end_date: DocumentDate | None = None


class CreateInvoice(Body):
    customer_id: str = Field(min_length=1, max_length=64)
    number: str | None = Field(None, max_length=_LIMITS.number_length)
    issue_date: DocumentDate | None = Field(None, description="Within ten years of today, as is due_date.")
    terms: Literal["DueOnReceipt", "Net15", "Net30", "Net45", "Net60"] | None = None
    due_date: DocumentDate | None = None
    lines: list[Line] = Field(min_length=1, max_length=500)
    memo: str | None = Field(None, max_length=200)
    send: Literal["now", "scheduled", "draft"] = "now"
    scheduled_send_date: ScheduleDate | None = Field(
        None, description="With send=scheduled only; at most 365 days ahead."
    )
    reminders: Reminders | None = None
    recurring: Recurring | None = None


class Decision(Body):
    comment: str | None = Field(None, max_length=500)


def _json_object(raw: str | bytes, what: str, param: str | None) -> dict[str, Any]:
    """`raw` parsed as the JSON object a write takes, or a 400 that says what is wrong with it."""
    if not raw.strip():
        raise ApiError(400, "invalid_request", f"{what} is empty; send a JSON object", param=param)
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        message = not_json_message(what, exc.msg, exc.pos)
    except UnicodeDecodeError:
        message = not_json_message(what, "it is not UTF-8 text")
    except RecursionError:
        message = not_json_message(what, "it is nested too deeply")
    else:
        if isinstance(payload, dict):
            return payload
        message = f"{what} must be a JSON object"
    raise ApiError(400, "invalid_request", message, param=param)


def _error(request: Request, status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(request, code, message, param), status_code=status)


async def _perform(
    request: Request,
    principal: Principal,
    fingerprint_body: Any,
    prepare: Callable[[Session], writes.Intent],
    dated: BaseModel | None = None,
) -> JSONResponse:
    """Idempotency, store checks, intent, job, short wait: the same for every write. `dated`: the
    body whose dates are checked against the portal's today (see _out_of_reach)."""
    state = request.app.state
    sessions = state.sessions
    key = request.headers.get(IDEMPOTENCY_HEADER)
    record_id: int | None = None
    if key is not None:
        fingerprint = idempotency.request_hash(request.method, request.url.path, fingerprint_body)
        try:
            claim = await asyncio.to_thread(
                idempotency.claim, sessions, owner=principal.token_id, key=key, method=request.method,
                path=request.url.path, fingerprint=fingerprint,
            )  # fmt: skip
        except idempotency.InvalidKey as exc:
            raise ApiError(400, "invalid_idempotency_key", str(exc), param=IDEMPOTENCY_HEADER) from exc
        if claim.outcome == "reused":
            raise ApiError(422, "idempotency_key_reused",
                           "this Idempotency-Key was used with a different request", param=IDEMPOTENCY_HEADER)  # fmt: skip
        if claim.outcome == "in_flight":
            raise ApiError(409, "idempotency_key_in_flight",
                           "a request with this Idempotency-Key is still in progress; retry later",
                           param=IDEMPOTENCY_HEADER)  # fmt: skip
        if claim.outcome == "replay":  # the first answer, headers and all
            headers = {
                REPLAYED_HEADER: "true",
                **({"Operation-Id": claim.operation_id} if claim.operation_id else {}),
            }
            return JSONResponse(
                claim.response_body, status_code=claim.response_status or 200, headers=headers
            )
        record_id = claim.record_id
    try:
        with sessions() as session:
            intent = prepare(session)
        if dated is not None:
            await _check_dates(request, dated, intent.connection_id)
        operation = writes.record_intent(sessions, principal, intent, idempotency_record=record_id,
                                         request_id=getattr(request.state, "request_id", None))  # fmt: skip
    except writes.WriteRefused as exc:
        # Refused before anything was recorded or sent: as Stripe does with a request that failed
        # validation, the key is not kept, so a retry with it once the cause is gone (drift cleared,
        # the bill approved or synced) is carried out instead of replaying the refusal for 7 days.
        if record_id is not None:
            await asyncio.to_thread(idempotency.release, sessions, record_id)
        return JSONResponse(error_body(request, exc.code, exc.message, exc.param), status_code=exc.status)
    except BaseException:
        if record_id is not None:
            idempotency.release(sessions, record_id)
        raise
    task = state.jobs.enqueue(
        "writes.execute", {"operation_id": operation.id}, key=f"operation:{operation.id}"
    )
    with contextlib.suppress(TimeoutError):  # still running: answer 202 with the operation
        await asyncio.wait_for(asyncio.shield(task), timeout=state.settings.write_wait_seconds)
    with sessions() as session:
        row = session.get(models.Operation, operation.id)
        assert row is not None
    if row.status == "succeeded":
        status, body = (201 if row.kind.startswith("create_") else 200), writes.response_body(row)
    elif row.status in ("failed", "requires_action"):
        status, body = writes.error_response(row)
        body["error"]["request_id"] = getattr(request.state, "request_id", None)
    else:
        status, body = 202, writes.operation_json(row)
    if record_id is not None:
        await asyncio.to_thread(idempotency.complete, sessions, record_id, status, body)
    return JSONResponse(body, status_code=status, headers={"Operation-Id": row.id})


_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": schemas.Operation, "description": "The portal has not answered yet: the operation to poll "
          "(`GET /operations/{id}`; its id is also the `Operation-Id` header)."},
    409: {"description": "writes_blocked, idempotency_key_in_flight, or the object's state forbids it."},
    422: {"description": "A rule refused it (bill_not_approved, amount_exceeds_amount_due, the portal's refusal, "
          "idempotency_key_reused)."},
}  # fmt: skip


@router.post("/create_payment", status_code=201, response_model=schemas.Payment, responses=_RESPONSES,
             summary="Pay an approved bill")  # fmt: skip
async def create_payment(
    request: Request,
    body: CreatePayment,
    principal: Annotated[Principal, Depends(require_scope("payments:write"))],
) -> JSONResponse:
    data = body.model_dump()
    return await _perform(request, principal, body.model_dump(mode="json"),
                          lambda s: writes.prepare_create_payment(s, principal, data), body)  # fmt: skip


@router.post("/create_invoice", status_code=201, response_model=schemas.Invoice, responses=_RESPONSES,
             summary="Create (and send) an invoice")  # fmt: skip
async def create_invoice(
    request: Request,
    body: CreateInvoice,
    principal: Annotated[Principal, Depends(require_scope("invoices:write"))],
) -> JSONResponse:
    data = body.model_dump(mode="json")
    return await _perform(
        request, principal, data, lambda s: writes.prepare_create_invoice(s, principal, data), body
    )


@router.post(
    "/create_bill", status_code=201, response_model=schemas.Bill, responses=_RESPONSES,
    summary="Create a bill (JSON, or multipart with a file)",
    description="JSON body, or multipart/form-data with a `bill` field (the same JSON) and a `file` attachment.",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/CreateBill"}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["bill"], "properties": {
            "bill": {"type": "string", "description": "The bill as JSON (CreateBill)."},
            "file": {"type": "string", "format": "binary", "description": "PDF, PNG or JPEG attachment."},
        }}},
    }}},
)  # fmt: skip
async def create_bill(
    request: Request, principal: Annotated[Principal, Depends(require_scope("bills:write"))]
) -> JSONResponse:
    attachment: tuple[str, bytes, str] | None = None
    content_type = request.headers.get("content-type", "")
    what, param = "the body", None
    if content_type.startswith("multipart/form-data"):
        what, param = "the bill part", "bill"
        form = await request.form()
        raw = form.get("bill")
        if not isinstance(raw, str):
            raise ApiError(400, "invalid_request", "multipart requests carry the bill as a `bill` JSON field",
                           param="bill")  # fmt: skip
        payload = _json_object(raw, what, param)
        upload = form.get("file")
        if upload is not None and not isinstance(upload, str):
            content = await upload.read()
            try:  # the type comes from the bytes, not from what the client declared
                sniffed = uploads.check_upload(content, max_bytes=request.app.state.settings.max_upload_bytes)
            except uploads.UploadRefused as refused:
                raise ApiError(refused.status, refused.code, refused.message, param="file") from None
            attachment = (upload.filename or "attachment", content, sniffed)
    else:
        payload = _json_object(await request.body(), what, param)
    try:
        body = CreateBill.model_validate(payload)
    except ValidationError as exc:
        raise invalid_request(exc.errors(), what=what, param=param) from None
    data = body.model_dump(mode="json")
    # The file's bytes count: another file of the same name and size is another request.
    fingerprint = {
        **data,
        "attachment": [attachment[0], hashlib.sha256(attachment[1]).hexdigest()] if attachment else None,
    }
    return await _perform(request, principal, fingerprint,
                          lambda s: writes.prepare_create_bill(s, principal, data, attachment), body)  # fmt: skip


@router.post("/approvals/{approval_id}/approve", response_model=schemas.Bill | schemas.Payment, responses=_RESPONSES,
             summary="Approve a bill or a payment")  # fmt: skip
async def approve(
    request: Request, approval_id: str, principal: Annotated[Principal, Depends(require_scope("approvals:write"))],
    body: Decision | None = None,
) -> JSONResponse:  # fmt: skip
    comment = body.comment if body else None
    return await _perform(request, principal, {"id": approval_id, "comment": comment},
                          lambda s: writes.prepare_decision(s, principal, approval_id, "approve", comment))  # fmt: skip


@router.post("/approvals/{approval_id}/reject", response_model=schemas.Bill | schemas.Payment, responses=_RESPONSES,
             summary="Reject a bill or a payment")  # fmt: skip
async def reject(
    request: Request, approval_id: str, principal: Annotated[Principal, Depends(require_scope("approvals:write"))],
    body: Decision | None = None,
) -> JSONResponse:  # fmt: skip
    comment = body.comment if body else None
    return await _perform(request, principal, {"id": approval_id, "comment": comment},
                          lambda s: writes.prepare_decision(s, principal, approval_id, "reject", comment))  # fmt: skip


class NoBody(Body):
    """What a route that takes no body accepts: none, or `{}`. Anything else is refused, as the
    other writes refuse fields they do not take, rather than dropped while the write is carried out."""


@router.post(
    "/payments/{payment_id}/cancel",
    response_model=schemas.Payment,
    responses=_RESPONSES,
    summary="Cancel a payment not yet debited",
)
async def cancel_payment(
    request: Request,
    payment_id: str,
    principal: Annotated[Principal, Depends(require_scope("payments:write"))],
    body: NoBody | None = None,
) -> JSONResponse:
    return await _perform(request, principal, {"id": payment_id},
                          lambda s: writes.prepare_cancel_payment(s, principal, payment_id))  # fmt: skip


@router.post(
    "/invoices/{invoice_id}/remind",
    response_model=schemas.Invoice,
    responses=_RESPONSES,
    summary="Send a reminder for an invoice now",
)
async def remind(
    request: Request,
    invoice_id: str,
    principal: Annotated[Principal, Depends(require_scope("invoices:write"))],
    body: NoBody | None = None,
) -> JSONResponse:
    return await _perform(request, principal, {"id": invoice_id},
                          lambda s: writes.prepare_remind(s, principal, invoice_id))  # fmt: skip
