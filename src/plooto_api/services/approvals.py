"""Bills and payments awaiting (or past) approval, as one list across both kinds."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Set as AbstractSet
from typing import Any, Literal

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from plooto_api import mapping
from plooto_api.store import models
from plooto_api.store.pagination import InvalidCursor, Page, PageRequest, encode_cursor
from plooto_api.store.repository import ObjectRepository
from plooto_api.store.scope import AccessScope

ApprovalType = Literal["bill", "payment"]
ApprovalStatus = Literal["pending", "approved", "rejected"]


def _ulid(object_id: str) -> str:
    return object_id.split("_", 1)[-1]  # ids sort by creation time after their type prefix


def _conditions(kind: ApprovalType, status: ApprovalStatus, company: str | None) -> list[ColumnElement[bool]]:
    """The objects listed under `status`, by their approval state (schemas.Approval): pending = awaiting
    approval now; approved = every required approval given; rejected = an approver refused. Objects
    that needed no approval are in none of them, and so is a payment cancelled (or deleted) before
    its approvals were given: its approval stays `pending`, but nothing awaits it any more."""
    model: Any = models.Bill if kind == "bill" else models.Payment
    where: list[ColumnElement[bool]] = [model.deleted_at.is_(None)]
    if company:
        where.append(model.company_id == company)
    if kind == "bill":
        where.append(models.Bill.approval_status == status)
        if status == "pending":
            where.append(models.Bill.status == "pending_approval")
        return where
    where.append(models.Payment.direction == "payable")
    if status == "pending":
        where.append(models.Payment.status == "pending_approval")
    else:  # a payment's approval state is in its `approval` document (upstream.portal sets it)
        where.append(models.Payment.approval["status"].as_string() == status)
    return where


def _decode(cursor: str | None) -> dict[str, str | None]:
    if not cursor:
        return {"bill": None, "payment": None}
    try:
        data = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not valid") from exc
    if not isinstance(data, dict) or data.get("v") != "approvals":
        raise InvalidCursor("cursor is not valid")
    return {"bill": data.get("bill"), "payment": data.get("payment")}


def _encode(positions: dict[str, str | None]) -> str:
    raw = json.dumps({"v": "approvals", **positions}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def approval_json(row: Any, *, with_object: bool) -> dict[str, Any]:
    """One approval: the bill or payment, its approval state and, `with_object`, the object itself
    (the caller may read bills or payments; an `approvals:read` token alone sees the approval only)."""
    obj = mapping.to_schema(row).model_dump(mode="json")
    kind = obj["object"]
    approval = obj.get("approval") or {}
    return {
        "id": obj["id"], "object": "approval", "type": kind, "company_id": obj["company_id"],
        "status": approval.get("status") or ("pending" if obj.get("status") == "pending_approval" else None),
        "amount": obj.get("total") if kind == "bill" else obj.get("amount"),
        "steps": approval.get("steps", []), kind: obj if with_object else None,
    }  # fmt: skip


def list_approvals(
    session: Session,
    access: AccessScope,
    page: PageRequest,
    *,
    kind: ApprovalType | None,
    status: ApprovalStatus,
    company: str | None,
    readable: AbstractSet[str] = frozenset({"bill", "payment"}),
) -> Page[dict[str, Any]]:
    """A page of approvals, oldest first, across bills and payments; each with its object if the
    caller may read objects of its type (`readable`)."""
    positions = _decode(page.cursor)
    candidates: list[tuple[str, str, Any]] = []
    more: dict[str, bool] = {}
    for this in ("bill", "payment"):
        if kind is not None and kind != this:
            continue
        model: Any = models.Bill if this == "bill" else models.Payment
        after = positions[this]
        sub = ObjectRepository(session, model).list(
            access, PageRequest(page.limit, encode_cursor(after, model.__tablename__) if after else None),
            _conditions(this, status, company),
        )  # fmt: skip
        more[this] = sub.has_more
        candidates.extend((_ulid(row.id), this, row) for row in sub.items)
    candidates.sort(key=lambda c: c[0])
    taken = candidates[: page.limit]
    for _key, this, row in taken:
        positions[this] = row.id
    left = len(candidates) > len(taken) or any(more.values())
    return Page(
        items=[approval_json(row, with_object=this in readable) for _key, this, row in taken],
        has_more=left,
        next_cursor=_encode(positions) if left else None,
    )
