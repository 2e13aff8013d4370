"""PortalState: every object of the emulated portal plus per-company change indexes and the clock.

Each (company, object kind) has a ChangeIndex: an append-only log of (modified, seq, id) kept in
modification order. Because the sandbox clock never runs backwards, appends keep the log sorted,
so `modifiedSince` is a bisect plus a walk over the changed tail.
"""

from __future__ import annotations

import heapq
import random
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from plooto_sandbox.model import (
    ApprovalPolicy,
    BankAccount,
    Bill,
    Company,
    Customer,
    CustomerPayment,
    Invoice,
    Membership,
    OutboxMessage,
    Payment,
    RecurringInvoice,
    Reminder,
    Tracked,
    User,
    Vendor,
)

KIND_OF: dict[type, str] = {
    BankAccount: "bankAccount",
    ApprovalPolicy: "approvalPolicy",
    Vendor: "vendor",
    Customer: "customer",
    Bill: "bill",
    Payment: "payment",
    Invoice: "invoice",
    RecurringInvoice: "recurringInvoice",
    Reminder: "reminder",
    CustomerPayment: "customerPayment",
}

T = TypeVar("T", bound=Tracked)


class ChangeIndex:
    """Modification-ordered log of one object kind in one company."""

    __slots__ = ("_ids", "_keys", "_latest", "_ordered_cache", "_ordered_version")

    def __init__(self) -> None:
        self._keys: list[tuple[datetime, int]] = []
        self._ids: list[str] = []
        self._latest: dict[str, int] = {}
        self._ordered_cache: list[str] = []
        self._ordered_version = -1

    def __len__(self) -> int:
        return len(self._latest)

    def record(self, object_id: str, modified: datetime, seq: int) -> None:
        """Append a modification; earlier entries for the object become stale."""
        self._keys.append((modified, seq))
        self._ids.append(object_id)
        self._latest[object_id] = seq
        # Stale entries only cost memory; compact when they dominate.
        if len(self._ids) > 1024 and len(self._ids) > 3 * len(self._latest):
            self._compact()

    def forget(self, object_id: str) -> None:
        """Drop an object removed for good: its entries become stale, so no listing returns it."""
        if self._latest.pop(object_id, None) is not None:
            self._ordered_version = -1

    def _compact(self) -> None:
        keys: list[tuple[datetime, int]] = []
        ids: list[str] = []
        for key, object_id in zip(self._keys, self._ids, strict=True):
            if self._latest.get(object_id) == key[1]:
                keys.append(key)
                ids.append(object_id)
        self._keys = keys
        self._ids = ids

    def changed_since(self, since: datetime | None) -> list[str]:
        """Ids modified at or after `since`, ordered by (modified, id); O(k log k + log n).

        The log is in (modified, seq) order; re-sorting only reorders ties within a timestamp,
        which Timsort does in near-linear time on such runs.
        """
        start = 0 if since is None else bisect_left(self._keys, (since, -1))
        latest = self._latest
        live = [
            (key[0], object_id)
            for key, object_id in zip(self._keys[start:], self._ids[start:], strict=True)
            if latest.get(object_id) == key[1]
        ]
        live.sort()
        return [object_id for _, object_id in live]

    def ordered_ids(self) -> list[str]:
        """All live ids in (modified, id) order, cached until the next modification."""
        version = len(self._keys)
        if version != self._ordered_version:
            self._ordered_cache = self.changed_since(None)
            self._ordered_version = version
        return self._ordered_cache


@dataclass(order=True, slots=True)
class ScheduledEvent:
    """Something the clock must do at `due` (payment step, invoice send, reminder…)."""

    due: datetime
    order: int
    action: str = field(compare=False)
    object_id: str = field(compare=False)
    expected: str | None = field(compare=False, default=None)


# The terms of service the portal starts with; every seeded user has accepted them.
FIRST_TERMS_VERSION = 1


class PortalState:
    """All mutable sandbox data; one instance per reset."""

    # Class-level default: a state file written before the portal had terms loads with the first
    # version in force (and `accepted_terms` counts every user as having accepted it).
    terms_version: int = FIRST_TERMS_VERSION

    def __init__(self, now: datetime, seed: int) -> None:
        self.now = now
        self.seed = seed
        self.rng = random.Random(f"portal-writes-{seed}")
        self.seq = 0
        self.last_stamp: datetime | None = None
        self.companies: dict[str, Company] = {}
        self.users: dict[str, User] = {}
        self.users_by_email: dict[str, User] = {}
        self.memberships: dict[tuple[str, str], Membership] = {}
        self.objects: dict[str, dict[str, Any]] = {kind: {} for kind in KIND_OF.values()}
        self.indexes: dict[tuple[str, str], ChangeIndex] = {}
        self.payments_by_reference: dict[tuple[str, str], list[str]] = {}
        self.events: list[ScheduledEvent] = []
        self.event_order = 0
        self.outbox: list[OutboxMessage] = []
        self.invoice_counters: dict[str, int] = {}
        # Session and device tables belong to the auth module; stored here so they persist.
        self.sessions: dict[str, Any] = {}
        self.trusted_devices: dict[str, Any] = {}
        # Terms of service: the version in force, and the version each user accepted (by user id).
        self.terms_version = FIRST_TERMS_VERSION
        self.terms_accepted: dict[str, int] = {}

    # -- terms of service --------------------------------------------------------------------
    def accepted_terms(self, user_id: str) -> int:
        """The version of the terms the user accepted (a user unknown to a state file written before
        terms existed had accepted the first)."""
        accepted: dict[str, int] = self.__dict__.get("terms_accepted", {})
        return accepted.get(user_id, FIRST_TERMS_VERSION)

    def terms_pending(self, user_id: str) -> bool:
        """Whether the user must accept the terms in force before using the portal."""
        return self.accepted_terms(user_id) < self.terms_version

    def accept_terms(self, user_id: str) -> None:
        """The user accepted the terms in force."""
        self.__dict__.setdefault("terms_accepted", {})[user_id] = self.terms_version

    def publish_terms(self) -> int:
        """New terms of service: every user must accept them before using the portal again."""
        self.terms_version += 1
        return self.terms_version

    # -- ids ---------------------------------------------------------------------------------
    def new_id(self) -> str:
        """A deterministic GUID for objects created after seeding."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # -- objects -----------------------------------------------------------------------------
    def index(self, company_id: str, kind: str) -> ChangeIndex:
        """The change index of one object kind in one company."""
        key = (company_id, kind)
        found = self.indexes.get(key)
        if found is None:
            found = self.indexes[key] = ChangeIndex()
        return found

    def add(self, obj: Tracked, company_id: str, object_id: str) -> None:
        """Register a new object created now."""
        obj.created = self.now
        self.objects[KIND_OF[type(obj)]][object_id] = obj
        self.touch(obj, company_id, object_id)

    def remove(self, obj: Tracked, company_id: str, object_id: str) -> None:
        """Delete an object for good, as the portal's Delete buttons do: no listing shows it any more
        and reading it answers 404 (nothing marks it deleted: it is simply gone)."""
        kind = KIND_OF[type(obj)]
        del self.objects[kind][object_id]
        self.index(company_id, kind).forget(object_id)

    def stamp(self) -> datetime:
        """A modification time: the clock's now, made unique and increasing with microsecond ticks.

        [choice] Like a .NET backend's high-resolution `lastModified`, no two modifications share a
        stamp, even while the sandbox clock stands still; so `modifiedSince` of the last stamp seen
        returns only that one object again, not every object changed in the same instant.
        """
        last = getattr(self, "last_stamp", None)  # absent in state files written before it existed
        stamp = self.now if last is None or self.now > last else last + timedelta(microseconds=1)
        self.last_stamp = stamp
        return stamp

    def touch(self, obj: Tracked, company_id: str, object_id: str) -> None:
        """Mark an object modified now (bumps lastModified and the change index)."""
        self.seq += 1
        stamp = self.stamp()
        obj.modified = stamp
        obj.seq = self.seq
        self.index(company_id, KIND_OF[type(obj)]).record(object_id, stamp, self.seq)

    def get(self, cls: type[T], object_id: str) -> T | None:
        """An object by id if it is of that class."""
        found = self.objects[KIND_OF[cls]].get(object_id)
        return found if isinstance(found, cls) else None

    def bill(self, bill_id: str) -> Bill | None:
        """A bill by id."""
        return self.get(Bill, bill_id)

    def payment(self, payment_id: str) -> Payment | None:
        """A payment by id."""
        return self.get(Payment, payment_id)

    def touch_bill(self, bill: Bill) -> None:
        """Mark a bill modified now."""
        self.touch(bill, bill.company_id, bill.bill_id)

    def touch_payment(self, payment: Payment) -> None:
        """Mark a payment modified now."""
        self.touch(payment, payment.company_id, payment.payment_id)

    def touch_invoice(self, invoice: Invoice) -> None:
        """Mark an invoice modified now."""
        self.touch(invoice, invoice.company_id, invoice.invoice_id)

    def index_reference(self, payment: Payment) -> None:
        """Make a payment findable by its externalReference."""
        if payment.external_reference:
            key = (payment.company_id, payment.external_reference)
            self.payments_by_reference.setdefault(key, []).append(payment.payment_id)

    # -- events ------------------------------------------------------------------------------
    def schedule(self, due: datetime, action: str, object_id: str, expected: str | None = None) -> None:
        """Queue a clock event."""
        self.event_order += 1
        heapq.heappush(self.events, ScheduledEvent(due, self.event_order, action, object_id, expected))

    def pop_due(self, until: datetime) -> ScheduledEvent | None:
        """The next event due at or before `until`, if any."""
        if self.events and self.events[0].due <= until:
            return heapq.heappop(self.events)
        return None

    # -- users -------------------------------------------------------------------------------
    def membership(self, user_id: str, company_id: str) -> Membership | None:
        """A user's membership in a company, if any."""
        return self.memberships.get((user_id, company_id))

    def companies_of(self, user_id: str) -> list[Company]:
        """Companies a user can select."""
        return [
            company
            for company in self.companies.values()
            if (user_id, company.company_id) in self.memberships
        ]

    def send(self, message: OutboxMessage) -> None:
        """Record an outgoing SMS or e-mail."""
        self.outbox.append(message)


ID_ATTRIBUTE: dict[str, str] = {
    "bankAccount": "bank_account_id",
    "approvalPolicy": "approval_policy_id",
    "vendor": "vendor_id",
    "customer": "customer_id",
    "bill": "bill_id",
    "payment": "payment_id",
    "invoice": "invoice_id",
    "recurringInvoice": "recurring_invoice_id",
    "reminder": "reminder_id",
    "customerPayment": "customer_payment_id",
}


def rebuild_indexes(state: PortalState) -> None:
    """Rebuild every change index from the objects' own stamps (after seeding or loading)."""
    state.indexes.clear()
    state.payments_by_reference.clear()
    state.seq = 0
    for kind, table in state.objects.items():
        attribute = ID_ATTRIBUTE[kind]
        # Ids are unique, so the tuple sort never falls through to comparing objects.
        rows = sorted([(obj.modified, getattr(obj, attribute), obj) for obj in table.values()])
        # Unique stamps (see PortalState.stamp): ties are broken backwards, newest first, so no
        # seeded object ends up modified after the clock's start. One made at the very stamp it shares
        # is made that microsecond earlier too. (Left tied, it had broken the index's order: its
        # bisection then missed objects modified exactly at `modifiedSince`, and a first sync at
        # scale lost seeded invoices for good.)
        following: datetime | None = None
        for index in range(len(rows) - 1, -1, -1):
            modified, object_id, obj = rows[index]
            earlier = None if following is None else following - timedelta(microseconds=1)
            if earlier is not None and modified > earlier:
                if earlier < obj.created:
                    obj.created = earlier
                modified = obj.modified = earlier
                rows[index] = (modified, object_id, obj)
            following = modified
        for modified, object_id, obj in rows:
            state.seq += 1
            obj.seq = state.seq
            state.index(obj.company_id, kind).record(object_id, modified, state.seq)
            if state.last_stamp is None or modified > state.last_stamp:
                state.last_stamp = modified
    for payment in state.objects["payment"].values():
        state.index_reference(payment)
