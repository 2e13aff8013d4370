"""Deterministic demo data at any scale: firm users, client companies, AP and AR in every status.

One `random.Random` per company (derived from the seed and the company's position) makes the
output identical for the same seed and scale; each company gets exactly `bills_per_company` bills.
"""

from __future__ import annotations

import gc
import hashlib
import random
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from plooto_sandbox import payables, receivables
from plooto_sandbox.auth import hash_password
from plooto_sandbox.business_days import at_local, calendar_for, local_date
from plooto_sandbox.model import (
    ROLE_PERMISSIONS,
    AccountingLink,
    Allocation,
    ApprovalLevel,
    ApprovalPolicy,
    ApprovalStatus,
    ApprovalStep,
    Attachment,
    AuditEntry,
    BankAccount,
    Bill,
    CapturedDocument,
    Company,
    Customer,
    CustomerPayment,
    CustomerPaymentStatus,
    ExtractedField,
    FailureReason,
    Invoice,
    LineItem,
    Membership,
    PayeeMethod,
    Payment,
    PaymentApproval,
    PaymentLine,
    PaymentMethod,
    PaymentStatus,
    Permission,
    RecurringInvoice,
    Reminder,
    Role,
    User,
    Vendor,
)
from plooto_sandbox.money import ZERO, cents, money
from plooto_sandbox.rails import estimated_arrival, fee_for, mid_market_rate, portal_rate, timeline
from plooto_sandbox.store import PortalState, rebuild_indexes

DEMO_PASSWORD = "sandbox-password"
DEMO_TOTP_SECRET = "PLOOTOSANDBOXTOTPSECRETKEY234567"
CONTROLLER_EMAIL = "controller@northwind-cpa.test"
CLERK_EMAIL = "clerk@northwind-cpa.test"

COMPANY_NAMES = [
    "Maple Leaf Bakery Ltd.",
    "Harbourfront Logistics Inc.",
    "Prairie Sky Dental",
    "Cascadia Outfitters LLC",
    "Laurentian Timber Co.",
    "Bluenose Marine Supply",
    "Okanagan Orchards Ltd.",
    "Great Lakes Tooling Inc.",
]
VENDOR_WORDS = [
    "Acme",
    "Northern",
    "Summit",
    "Pioneer",
    "Coastal",
    "Granite",
    "Evergreen",
    "Polar",
    "Aurora",
    "Birch",
]
VENDOR_KINDS = [
    "Supplies",
    "Logistics",
    "Paper Co.",
    "Electric",
    "IT Services",
    "Janitorial",
    "Print Shop",
    "Foods",
]
CUSTOMER_WORDS = [
    "Riverside",
    "Lakeview",
    "Hillcrest",
    "Oakridge",
    "Bayview",
    "Westgate",
    "Kingsway",
    "Parkdale",
]
CUSTOMER_KINDS = ["Cafe", "Clinic", "Studio", "Property Mgmt", "Fitness", "Academy", "Garage", "Florist"]
LINE_DESCRIPTIONS = [
    "Monthly service",
    "Consulting hours",
    "Materials",
    "Freight",
    "Maintenance",
    "Licence fee",
    "Repairs",
]
ACCOUNT_CODES = ["5000", "5100", "5200", "6100", "6300", "6800"]
QUANTITIES = [1, 1, 2, 3]
PROVIDERS = ["QuickBooksOnline", "Xero", "NetSuite", None]
RETURN_REASONS = [
    FailureReason.INVALID_ACCOUNT,
    FailureReason.INCORRECT_ACCOUNT_HOLDER_NAME,
    FailureReason.ACCOUNT_CLOSED,
]
STALE_VENDOR_NAME = "Stale Bank Details Inc."
HOLD_REASON = "The account for user Dana Controller has been temporarily locked. Please contact Plooto support for assistance."

# (bill scenario, payment status, rail hint). Cycled per bill so that every bill and payment
# status appears once a company has at least len(BILL_SCENARIOS) bills.
BILL_SCENARIOS: list[tuple[str, PaymentStatus | None, str]] = [
    ("open", None, ""),
    ("approval", None, ""),
    ("pay", PaymentStatus.COMPLETED, ""),
    ("pay", PaymentStatus.APPROVAL_REQUIRED, ""),
    ("pay", PaymentStatus.PENDING, ""),
    ("pay", PaymentStatus.FUNDS_DEBITED, ""),
    ("pay", PaymentStatus.CLEARING, ""),
    ("pay", PaymentStatus.COMPLETED, "cheque"),
    ("pay", PaymentStatus.EXCHANGING, "wire"),
    ("pay", PaymentStatus.PROCESSING, "wire"),
    ("pay", PaymentStatus.ON_HOLD, ""),
    ("pay", PaymentStatus.RECALLED, "emt"),
    ("pay", PaymentStatus.REJECTED, ""),
    ("pay", PaymentStatus.CANCELLED, ""),
    ("pay", PaymentStatus.DELETED, ""),
    ("pay", PaymentStatus.FAILED, ""),
    ("pay", PaymentStatus.RETURNED, "returns"),
    ("partial", PaymentStatus.COMPLETED, ""),
    ("rejected", None, ""),
    ("void", None, ""),
    ("pay", PaymentStatus.COMPLETED, "card"),
    ("pay", PaymentStatus.CLEARING, "emt"),
]
INVOICE_SCENARIOS = [
    "draft",
    "sent",
    "viewed",
    "partial",
    "paid",
    "overdue",
    "void",
    "scheduled",
    "inflight",
    "paid",
]


@dataclass(slots=True)
class DemoUser:
    """A seeded login as printed at start-up (never with its password or secret)."""

    email: str
    mfa_method: str | None
    roles: dict[str, str]


def slugify(name: str) -> str:
    """Lower-case, non-alphanumerics to "-" (used in demo user e-mails)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class _Ids:
    """Sequential GUIDs: a seeded random stem and a counter in the last group.

    SQL Server's NEWSEQUENTIALID() produces ids of this kind, and they cost one string format each,
    which matters at 100k-object scale.
    """

    __slots__ = ("_counter", "_stem")

    def __init__(self, rng: random.Random) -> None:
        h = f"{rng.getrandbits(80):020x}"
        self._stem = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-"
        self._counter = 0

    def __call__(self) -> str:
        self._counter += 1
        return f"{self._stem}{self._counter:012x}"


def _user(
    ids: _Ids,
    email: str,
    first: str,
    last: str,
    salt: bytes,
    mfa: str | None,
    secret: str | None,
    phone: str | None,
) -> User:
    return User(
        user_id=ids(),
        email=email,
        first_name=first,
        last_name=last,
        password_salt=salt,
        password_hash=hash_password(DEMO_PASSWORD, salt),
        mfa_method=mfa,
        totp_secret=secret,
        phone=phone,
    )


def seed_portal(seed: int, companies: int, bills_per_company: int, now: datetime) -> PortalState:
    """Build a complete portal state; same arguments give the same data."""
    now = now.replace(microsecond=0)
    # Seeding allocates hundreds of thousands of long-lived objects; cyclic GC passes over them
    # would only cost time, so collection is paused while they are built.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _seed(seed, companies, bills_per_company, now)
    finally:
        if was_enabled:
            gc.enable()


def _seed(seed: int, companies: int, bills_per_company: int, now: datetime) -> PortalState:
    state = PortalState(now, seed)
    ids = _Ids(random.Random(f"firm-{seed}"))
    # One salt for all seeded users lets the scrypt hash be computed once per seed; users created
    # any other way would get their own salt.
    salt = hashlib.sha256(f"plooto-sandbox-{seed}".encode()).digest()[:16]
    controller = _user(ids, CONTROLLER_EMAIL, "Dana", "Controller", salt, "Totp", DEMO_TOTP_SECRET, None)
    clerk = _user(ids, CLERK_EMAIL, "Sam", "Clerk", salt, "Sms", None, "+1-555-0100")
    for firm_user in (controller, clerk):
        state.users[firm_user.user_id] = firm_user
        state.users_by_email[firm_user.email] = firm_user
    for position in range(companies):
        _CompanySeeder(state, seed, position, bills_per_company, controller, clerk, salt).run()
    for user_id in state.users:  # every seeded user has accepted the terms in force
        state.accept_terms(user_id)
    rebuild_indexes(state)
    return state


def demo_users(state: PortalState) -> list[DemoUser]:
    """Seeded logins with their role in each company, for printing and `GET /__sandbox/users`."""
    result: list[DemoUser] = []
    for user in state.users.values():
        roles = {
            state.companies[company_id].name: membership.role.value
            for (user_id, company_id), membership in state.memberships.items()
            if user_id == user.user_id
        }
        result.append(DemoUser(user.email, user.mfa_method, roles))
    return result


class _CompanySeeder:
    """Builds one company's data with its own RNG."""

    def __init__(
        self,
        state: PortalState,
        seed: int,
        position: int,
        bills: int,
        controller: User,
        clerk: User,
        salt: bytes,
    ) -> None:
        self.state = state
        self.position = position
        self.bill_count = bills
        self.rng = random.Random(f"company-{seed}-{position}")
        self.ids = _Ids(self.rng)
        self.controller = controller
        self.clerk = clerk
        self.salt = salt
        self.now = state.now
        self.today = local_date(state.now)
        self.placement_cache: dict[tuple[PaymentMethod, str, bool, PaymentStatus], date | None] = {}

    # -- helpers ------------------------------------------------------------------------------
    def between(self, low: int, high: int) -> int:
        """Like randrange(low, high) but several times cheaper; the seed's only hot RNG call."""
        return low + int(self.rng.random() * (high - low))

    def past_moment(self, max_days: int, min_days: int = 0) -> datetime:
        seconds = self.between(min_days * 86400, max(max_days * 86400, min_days * 86400 + 1))
        return self.now - timedelta(seconds=seconds)

    def link(self, kind: str, synced: datetime | None) -> AccountingLink | None:
        provider = self.company.accounting_provider
        if provider is None:
            return None
        external = self.ids() if provider == "Xero" else str(self.between(100, 999999))
        return AccountingLink(provider, external, "Synced" if synced else "Pending", synced)

    def put(self, kind: str, object_id: str, obj: object) -> None:
        self.state.objects[kind][object_id] = obj

    # -- the company ---------------------------------------------------------------------------
    def run(self) -> None:
        self.make_company()
        self.make_users()
        self.make_bank_accounts()
        self.make_policies()
        self.make_vendors()
        self.make_customers()
        self.make_bills()
        self.make_invoices()

    def make_company(self) -> None:
        base = COMPANY_NAMES[self.position % len(COMPANY_NAMES)]
        lap = self.position // len(COMPANY_NAMES)
        name = base if lap == 0 else f"{base} #{lap + 1}"
        us = self.position % 4 == 3
        self.company = Company(
            company_id=self.ids(),
            name=name,
            slug=slugify(name),
            country="US" if us else "CA",
            base_currency="USD" if us else "CAD",
            status="Active",
            accounting_provider=PROVIDERS[self.position % len(PROVIDERS)],
            is_accounting_firm=False,
            instant_balances={"CAD": Decimal("25000.00"), "USD": Decimal("10000.00")},
        )
        self.state.companies[self.company.company_id] = self.company

    def make_users(self) -> None:
        company_id = self.company.company_id
        for firm_user in (self.controller, self.clerk):
            self.state.memberships[(firm_user.user_id, company_id)] = Membership(
                firm_user.user_id, company_id, Role.ADMINISTRATOR, ROLE_PERMISSIONS[Role.ADMINISTRATOR]
            )
        self.role_users: dict[Role, User] = {}
        for role, first in (
            (Role.CFO, "Casey"),
            (Role.ACCOUNTANT, "Alex"),
            (Role.VIEWER, "Vic"),
            (Role.CUSTOM, "Chris"),
        ):
            email = f"{role.value.lower()}@{self.company.slug}.test"
            member = _user(self.ids, email, first, role.value, self.salt, None, None, None)
            self.state.users[member.user_id] = member
            self.state.users_by_email[email] = member
            permissions = (
                frozenset({Permission.EDIT_PAYEES, Permission.APPROVE_PAYMENTS})
                if role is Role.CUSTOM
                else ROLE_PERMISSIONS[role]
            )
            self.state.memberships[(member.user_id, company_id)] = Membership(
                member.user_id, company_id, role, permissions
            )
            self.role_users[role] = member

    def make_bank_accounts(self) -> None:
        signers = [self.controller.user_id, self.clerk.user_id, self.role_users[Role.CFO].user_id]
        specs = [
            ("Main Account", "Royal Bank of Canada", "CAD", 1, "Verified"),
            ("US Operating", "TD Bank N.A.", "USD", 1, "Verified"),
            ("Reserve Account", "Bank of Montreal", "CAD", 2, "Verified"),
        ]
        if self.position % 2 == 0:
            specs.append(("Payroll Account", "Scotiabank", "CAD", 1, "BankValidationPending"))
        self.accounts: list[BankAccount] = []
        for name, institution, currency, required, verification in specs:
            created = self.past_moment(400, 200)
            account = BankAccount(
                created=created,
                modified=created,
                seq=0,
                bank_account_id=self.ids(),
                company_id=self.company.company_id,
                name=name,
                institution_name=institution,
                currency=currency,
                account_number=f"{self.between(10**6, 10**7)}{self.between(1000, 9999)}",
                verification_status=verification,
                signing_authorities=list(signers),
                required_approvals=required,
            )
            self.accounts.append(account)
            self.put("bankAccount", account.bank_account_id, account)
        self.account_by_currency = {"CAD": self.accounts[0], "USD": self.accounts[1]}

    def make_policies(self) -> None:
        cfo = self.role_users[Role.CFO].user_id
        custom = self.role_users[Role.CUSTOM].user_id
        specs = [
            ("CAD bills over 5,000", "CAD", Decimal("5000.00"), [[self.clerk.user_id, cfo]]),
            (
                "CAD bills over 25,000",
                "CAD",
                Decimal("25000.00"),
                [[self.clerk.user_id, cfo], [self.controller.user_id, custom]],
            ),
            ("USD bills over 5,000", "USD", Decimal("5000.00"), [[self.clerk.user_id, cfo]]),
            ("EUR bills over 5,000", "EUR", Decimal("5000.00"), [[self.clerk.user_id, cfo]]),
        ]
        self.policies: list[ApprovalPolicy] = []
        for name, currency, minimum, levels in specs:
            created = self.past_moment(400, 200)
            policy = ApprovalPolicy(
                created=created,
                modified=created,
                seq=0,
                approval_policy_id=self.ids(),
                company_id=self.company.company_id,
                name=name,
                currency=currency,
                minimum_amount=minimum,
                levels=[ApprovalLevel(i + 1, list(users)) for i, users in enumerate(levels)],
            )
            self.policies.append(policy)
            self.put("approvalPolicy", policy.approval_policy_id, policy)

    def make_vendors(self) -> None:
        count = max(4, self.bill_count // 8)
        base = self.company.base_currency
        other = "USD" if base == "CAD" else "CAD"
        self.vendors: list[Vendor] = []
        for index in range(count):
            roll = self.rng.random()
            currency = base if roll < 0.8 else (other if roll < 0.95 else "EUR")
            kind_roll = self.rng.random()
            kind = (
                "BankAccount"
                if kind_roll < 0.7 or currency == "EUR"
                else ("Cheque" if kind_roll < 0.85 else "EmailMoneyTransfer")
            )
            # The first four vendors are fixed so every rail scenario has a suitable payee.
            if index < 4:
                currency = base
                kind = ["BankAccount", "Cheque", "EmailMoneyTransfer", "BankAccount"][index]
            name = f"{VENDOR_WORDS[index % len(VENDOR_WORDS)]} {VENDOR_KINDS[(index // len(VENDOR_WORDS)) % len(VENDOR_KINDS)]}"
            if index >= len(VENDOR_WORDS) * len(VENDOR_KINDS):
                name += f" {index}"
            if index == 3:
                # The one payee whose bank returns every payment; named so humans can spot it.
                name = STALE_VENDOR_NAME
            email = f"ap@{slugify(name)}.example"
            method = PayeeMethod(
                payment_method_id=self.ids(),
                type=kind,
                currency=currency,
                institution_name="HSBC Bank"
                if currency == "EUR"
                else ("Desjardins" if kind == "BankAccount" else None),
                account_number=f"{self.between(10**8, 10**9)}" if kind == "BankAccount" else None,
                account_holder_name=name if kind == "BankAccount" else None,
                mailing_address=f"{self.between(1, 999)} King St W, Toronto ON" if kind == "Cheque" else None,
                return_reason=RETURN_REASONS[self.position % len(RETURN_REASONS)] if index == 3 else None,
            )
            created = self.past_moment(365, 120)
            modified = self.past_moment(119, 0) if self.rng.random() < 0.3 else created
            vendor = Vendor(
                created=created,
                modified=modified,
                seq=0,
                vendor_id=self.ids(),
                company_id=self.company.company_id,
                display_name=name,
                email=email,
                currency=currency,
                network_connected=self.rng.random() < 0.3,
                payment_methods=[method],
                default_payment_method_id=method.payment_method_id,
                accounting=self.link("vendor", modified),
            )
            self.vendors.append(vendor)
            self.put("vendor", vendor.vendor_id, vendor)
        self.regular_vendors = [v for i, v in enumerate(self.vendors) if i != 3]

    def make_customers(self) -> None:
        count = max(3, self.bill_count // 10)
        self.customers: list[Customer] = []
        for index in range(count):
            name = f"{CUSTOMER_WORDS[index % len(CUSTOMER_WORDS)]} {CUSTOMER_KINDS[(index // len(CUSTOMER_WORDS)) % len(CUSTOMER_KINDS)]}"
            if index >= len(CUSTOMER_WORDS) * len(CUSTOMER_KINDS):
                name += f" {index}"
            created = self.past_moment(365, 120)
            modified = self.past_moment(119, 0) if self.rng.random() < 0.3 else created
            customer = Customer(
                created=created,
                modified=modified,
                seq=0,
                customer_id=self.ids(),
                company_id=self.company.company_id,
                display_name=name,
                email=f"billing@{slugify(name)}.example",
                currency=self.company.base_currency,
                pad_status="Active" if index % 3 != 2 else ("Pending" if index % 2 else "None"),
                card_last4=f"{self.between(1000, 9999)}" if index % 2 == 0 else None,
                accounting=self.link("customer", modified),
            )
            self.customers.append(customer)
            self.put("customer", customer.customer_id, customer)

    # -- bills and payments ---------------------------------------------------------------------
    def lines(self, low: int, high: int) -> list[LineItem]:
        items: list[LineItem] = []
        rng = self.rng
        for _ in range(1 + int(rng.random() * 3)):
            quantity = QUANTITIES[int(rng.random() * 4)]
            unit = cents(low + int(rng.random() * (high - low)) // quantity)
            items.append(
                LineItem(
                    self.ids(),
                    LINE_DESCRIPTIONS[int(rng.random() * len(LINE_DESCRIPTIONS))],
                    Decimal(quantity),
                    unit,
                    unit * quantity,
                    ACCOUNT_CODES[int(rng.random() * len(ACCOUNT_CODES))],
                )
            )
        return items

    def make_bills(self) -> None:
        accountant = self.role_users[Role.ACCOUNTANT].user_id
        company_id = self.company.company_id
        for index in range(self.bill_count):
            scenario, payment_status, hint = BILL_SCENARIOS[index % len(BILL_SCENARIOS)]
            if hint == "returns":
                vendor = self.vendors[3]
            elif hint == "emt":
                vendor = self.vendors[2]
            elif hint == "cheque":
                vendor = self.vendors[1]
            elif hint in ("wire", "card"):
                vendor = self.vendors[0]
            else:
                vendor = self.regular_vendors[self.between(0, len(self.regular_vendors))]
            needs_approval = scenario in ("approval", "rejected")
            lines = self.lines(600_000, 4_000_000) if needs_approval else self.lines(5_000, 400_000)
            total = money(sum((line.amount for line in lines), ZERO))
            if not needs_approval and total >= Decimal("5000.00"):
                # Keep approved bills below the policy thresholds so their history stays simple.
                lines = lines[:1]
                lines[0].quantity = Decimal(1)
                lines[0].unit_price = lines[0].amount = cents(self.between(5_000, 400_000))
                total = lines[0].amount
            issue = self.today - timedelta(days=self.between(3, 75))
            created = max(
                at_local(issue, time(10, 0)) + timedelta(seconds=self.between(0, 28800)),
                self.now - timedelta(days=90),
            )
            created = min(created, self.now - timedelta(minutes=5))
            source = (
                "AccountingSync"
                if self.company.accounting_provider and index % 3 == 0
                else ("Capture" if index % 9 == 4 else "Manual")
            )
            bill = Bill(
                created=created,
                modified=created,
                seq=0,
                bill_id=self.ids(),
                company_id=company_id,
                vendor_id=vendor.vendor_id,
                bill_number=f"B{self.position + 1:02d}-{index + 1:06d}",
                currency=vendor.currency,
                issue_date=issue,
                due_date=issue + timedelta(days=30),
                line_items=lines,
                total=total,
                approval="Approved",
                voided=scenario == "void",
                source=source,
                memo=None,
                created_by=accountant,
                approval_policy_id=None,
                approval_steps=[],
                attachments=[],
                captured=None,
                payment_ids=[],
                accounting=self.link("bill", created) if source == "AccountingSync" else None,
                paid_amount=ZERO,
                scheduled_amount=ZERO,
            )
            if source == "Capture":
                bill.captured = self.captured(bill, vendor)
                bill.attachments.append(self.scan(bill.captured, created))
            if index % 5 == 1:
                bill.attachments.append(
                    Attachment(
                        self.ids(),
                        f"invoice-{bill.bill_number}.pdf",
                        "application/pdf",
                        self.between(20_000, 400_000),
                        created,
                    )
                )
            if needs_approval:
                self.route_for_approval(bill, rejected=scenario == "rejected")
            if payment_status is not None:
                self.pay(bill, vendor, payment_status, hint, partial=scenario == "partial")
            self.put("bill", bill.bill_id, bill)

    def captured(self, bill: Bill, vendor: Vendor) -> CapturedDocument:
        def confidence() -> Decimal:
            return Decimal(self.between(720, 999)).scaleb(-3)

        fields = {
            "vendorName": ExtractedField(vendor.display_name, confidence()),
            "billNumber": ExtractedField(bill.bill_number, confidence()),
            "issueDate": ExtractedField(bill.issue_date.isoformat(), confidence()),
            "dueDate": ExtractedField(bill.due_date.isoformat(), confidence()),
            "totalAmount": ExtractedField(format(bill.total, "f"), confidence()),
            "currency": ExtractedField(bill.currency, confidence()),
        }
        overall = min(f.confidence for f in fields.values())
        return CapturedDocument(self.ids(), f"scan-{bill.bill_number}.pdf", fields, overall)

    @staticmethod
    def scan(document: CapturedDocument, uploaded: datetime) -> Attachment:
        """The scanned file a captured document was read from: it stays on the bill Capture made
        of it, as an upload's does (api.py). Its id and size come from the document's id, not from
        the seed's random stream, so every other seeded object is as it was without it."""
        digest = hashlib.sha256(document.document_id.encode()).digest()
        size = 20_000 + int.from_bytes(digest[16:20], "big") % 380_000
        file_id = str(uuid.UUID(bytes=digest[:16], version=4))
        return Attachment(file_id, document.file_name, "application/pdf", size, uploaded)

    def route_for_approval(self, bill: Bill, rejected: bool) -> None:
        policy = payables.policy_for(self.state, self.company.company_id, bill.currency, bill.total)
        if policy is None:
            return
        steps: list[ApprovalStep] = []
        for level in policy.levels:
            status = (
                ApprovalStatus.APPROVAL_MANDATORY
                if level.level == 1
                else ApprovalStatus.AWAITING_PREVIOUS_LEVEL
            )
            steps.extend(
                ApprovalStep(self.ids(), level.level, uid, status) for uid in level.approver_user_ids
            )
        bill.approval_policy_id = policy.approval_policy_id
        bill.approval_steps = steps
        bill.approval = "Pending"
        if rejected:
            first = steps[0]
            first.status = ApprovalStatus.REJECTED
            first.decision_date = bill.created + timedelta(hours=3)
            first.comment = "Duplicate of an earlier bill"
            for other in steps[1:]:
                other.status = ApprovalStatus.SKIPPED
            bill.approval = "Rejected"
            bill.modified = min(first.decision_date, self.now)

    def placed_debit_date(
        self, method: PaymentMethod, source: str, cross: bool, target: PaymentStatus
    ) -> date | None:
        """A debit date that puts a payment in `target` right now (events at `now` not yet run)."""
        key = (method, source, cross, target)
        if key not in self.placement_cache:
            calendar = calendar_for(source)
            found: date | None = None
            day = self.today
            for _ in range(15):
                reached = PaymentStatus.PENDING
                for due, status in timeline(method, source, day, cross):
                    if due < self.now:
                        reached = status
                if reached is target:
                    found = day
                    break
                day -= timedelta(days=1)
                while not calendar.is_business_day(day):
                    day -= timedelta(days=1)
            self.placement_cache[key] = found
        return self.placement_cache[key]

    def pay(self, bill: Bill, vendor: Vendor, status: PaymentStatus, hint: str, partial: bool) -> None:
        method_info = vendor.payment_methods[0]
        if hint == "wire":
            account = self.account_by_currency["USD" if bill.currency == "CAD" else "CAD"]
            method = PaymentMethod.WIRE
        else:
            account = self.account_by_currency.get(bill.currency, self.accounts[0])
            method = payables.default_method(vendor, method_info.type, account.currency, bill.currency)
            if hint == "card":
                method = PaymentMethod.CARD
        if self.rng.random() < 0.15 and status is PaymentStatus.COMPLETED and method is PaymentMethod.EFT:
            method = PaymentMethod.PLOOTO_INSTANT
        source, destination = account.currency, bill.currency
        amount = money(bill.total * Decimal("0.4")) if partial else bill.total
        exchange_rate = portal_rate(source, destination)
        source_amount = money(amount * exchange_rate)
        initiator = self.controller if self.rng.random() < 0.5 else self.clerk
        calendar = calendar_for(source)
        created = min(bill.created + timedelta(hours=self.between(1, 48)), self.now - timedelta(minutes=1))
        approvals = [
            PaymentApproval(uid, ApprovalStatus.APPROVAL_MANDATORY)
            for uid in account.signing_authorities
            if uid != initiator.user_id
        ]
        payment = Payment(
            created=created,
            modified=created,
            seq=0,
            payment_id=self.ids(),
            company_id=self.company.company_id,
            line_items=[PaymentLine(bill.bill_id, f"Payment for {bill.bill_number}", amount)],
            vendor_id=vendor.vendor_id,
            payee_method_id=method_info.payment_method_id,
            method=method,
            amount=amount,
            destination_currency=destination,
            source_currency=source,
            source_amount=source_amount,
            exchange_rate=exchange_rate,
            mid_market_rate=mid_market_rate(source, destination),
            fee=fee_for(method, source_amount),
            debit_bank_account_id=account.bank_account_id,
            requested_debit_date=self.today,
            scheduled_debit_date=None,
            debited_date=None,
            estimated_arrival=None,
            completed_date=None,
            status=status,
            failure_reason=None,
            hold_reason=None,
            status_before_hold=None,
            memo=f"Payment for {bill.bill_number}",
            external_reference=None,
            initiated_by=initiator.user_id,
            approvals=approvals,
            required_approvals=account.required_approvals,
            audit=[AuditEntry(created, f"Payment initiated by {initiator.display_name} ({initiator.email})")],
            accounting=None,
        )
        modified = created
        if status in (
            PaymentStatus.APPROVAL_REQUIRED,
            PaymentStatus.REJECTED,
            PaymentStatus.CANCELLED,
            PaymentStatus.DELETED,
        ):
            payment.requested_debit_date = self.today + timedelta(days=self.between(1, 10))
            payment.estimated_arrival = estimated_arrival(
                method, source, calendar.next_business_day_on_or_after(payment.requested_debit_date)
            )
            if status is PaymentStatus.REJECTED and approvals:
                approvals[0].status = ApprovalStatus.REJECTED
                approvals[0].decision_date = modified = created + timedelta(hours=2)
            if status is not PaymentStatus.APPROVAL_REQUIRED:
                for slot in approvals:
                    if slot.status is ApprovalStatus.APPROVAL_MANDATORY:
                        slot.status = ApprovalStatus.SKIPPED
                modified = created + timedelta(hours=2)
        else:
            for slot in approvals[: account.required_approvals]:
                slot.status = ApprovalStatus.APPROVED
                slot.decision_date = created + timedelta(minutes=30)
            for slot in approvals[account.required_approvals :]:
                slot.status = ApprovalStatus.SKIPPED
            modified = self.place(payment, status, calendar, created)
        payment.modified = min(max(modified, created), self.now)
        payment.audit.append(AuditEntry(payment.modified, f"Status changed to {status.value}"))
        if status is PaymentStatus.COMPLETED:
            payment.accounting = self.link("payment", payment.modified)
        self.put("payment", payment.payment_id, payment)
        bill.payment_ids.append(payment.payment_id)
        if status is PaymentStatus.COMPLETED:
            bill.paid_amount += amount
        elif status not in payables.DEAD_PAYMENT_STATUSES:
            bill.scheduled_amount += amount
        bill.modified = max(bill.modified, payment.modified)

    def place(self, payment: Payment, status: PaymentStatus, calendar: object, created: datetime) -> datetime:
        """Give a released payment dates consistent with `status`; return its last change time."""
        method, source = payment.method, payment.source_currency
        cross = source != payment.destination_currency
        cal = calendar_for(source)
        if status in (PaymentStatus.PENDING, PaymentStatus.ON_HOLD):
            debit = cal.add_business_days(self.today, self.between(1, 6))
            payment.requested_debit_date = payment.scheduled_debit_date = debit
            payment.estimated_arrival = estimated_arrival(method, source, debit)
            if status is PaymentStatus.ON_HOLD:
                payment.status_before_hold = PaymentStatus.PENDING
                payment.hold_reason = HOLD_REASON
            else:
                payables.schedule_next_step(self.state, payment)
            return created + timedelta(hours=1)
        if status in (
            PaymentStatus.FUNDS_DEBITED,
            PaymentStatus.CLEARING,
            PaymentStatus.EXCHANGING,
            PaymentStatus.PROCESSING,
        ):
            debit_or_none = self.placed_debit_date(method, source, cross, status)
            debit = debit_or_none or cal.add_business_days(self.today - timedelta(days=10), 1)
            payment.requested_debit_date = payment.scheduled_debit_date = payment.debited_date = debit
            payment.estimated_arrival = estimated_arrival(method, source, debit)
            payables.schedule_next_step(self.state, payment)
            reached = [due for due, s in timeline(method, source, debit, cross) if s is status]
            return reached[0] if reached else created
        # Finished payments: debited some business days ago.
        back = self.between(6, 41)
        debit = self.today - timedelta(days=back)
        debit = cal.next_business_day_on_or_after(debit)
        payment.requested_debit_date = payment.scheduled_debit_date = payment.debited_date = debit
        payment.estimated_arrival = estimated_arrival(method, source, debit)
        finished = at_local(payment.estimated_arrival, time(9, 0))
        if status is PaymentStatus.COMPLETED:
            payment.completed_date = payment.estimated_arrival
        elif status is PaymentStatus.FAILED:
            payment.failure_reason = FailureReason.INSUFFICIENT_FUNDS
            finished = at_local(debit, time(15, 0))
        elif status is PaymentStatus.RETURNED:
            vendor_method = self.vendors[3].payment_methods[0]
            payment.failure_reason = vendor_method.return_reason or FailureReason.INVALID_ACCOUNT
        elif status is PaymentStatus.RECALLED:
            finished = at_local(cal.add_business_days(debit, 6), time(11, 0))
        return finished

    # -- receivables -----------------------------------------------------------------------------
    def make_invoices(self) -> None:
        count = max(8, self.bill_count // 2)
        company_id = self.company.company_id
        number = 1000
        plans: list[RecurringInvoice] = []
        for plan_index in range(max(2, self.bill_count // 50)):
            customer = self.customers[plan_index % len(self.customers)]
            start = self.today - timedelta(days=self.between(20, 60))
            created = at_local(start, time(8, 0))
            plan = RecurringInvoice(
                created=created,
                modified=created,
                seq=0,
                recurring_invoice_id=self.ids(),
                company_id=company_id,
                customer_id=customer.customer_id,
                currency=customer.currency,
                line_items=[
                    LineItem(self.ids(), "Monthly retainer", Decimal(1), cents(150_000), cents(150_000), None)
                ],
                terms="Net15",
                frequency="Monthly" if plan_index % 2 == 0 else "Weekly",
                start_date=start,
                end_date=None,
                next_issue_date=None,
                status="Active" if plan_index != 1 else "Cancelled",
            )
            if plan.status == "Active":
                nxt = start
                while nxt <= self.today:
                    nxt = receivables.next_period(nxt, plan.frequency)
                plan.next_issue_date = nxt
                self.state.schedule(at_local(nxt, time(8, 0)), "recurring", plan.recurring_invoice_id)
            else:
                plan.modified = min(created + timedelta(days=10), self.now)
            plans.append(plan)
            self.put("recurringInvoice", plan.recurring_invoice_id, plan)
        for index in range(count):
            scenario = INVOICE_SCENARIOS[index % len(INVOICE_SCENARIOS)]
            customer = self.customers[self.between(0, len(self.customers))]
            number += 1
            terms = self.rng.choice(["Net15", "Net30", "Net30", "DueOnReceipt"])
            if scenario == "overdue":
                issue = self.today - timedelta(days=self.between(40, 70))
                terms = "Net30"
            elif scenario in ("draft", "scheduled"):
                issue = self.today
            else:
                issue = self.today - timedelta(days=self.between(1, 14))
                if terms == "DueOnReceipt":
                    terms = "Net15"
            due = issue + timedelta(days=receivables.TERMS_DAYS[terms])
            lines = [
                LineItem(
                    self.ids(),
                    self.rng.choice(LINE_DESCRIPTIONS),
                    Decimal(q),
                    money(price),
                    money(price * q),
                    None,
                )
                for q, price in [(self.between(1, 6), cents(self.between(5_000, 200_000)))]
            ]
            created = min(at_local(issue, time(9, 30)), self.now - timedelta(minutes=1))
            linked_plan: RecurringInvoice | None = (
                plans[0] if index % 25 == 3 and plans[0].status == "Active" else None
            )
            invoice = Invoice(
                created=created,
                modified=created,
                seq=0,
                invoice_id=self.ids(),
                company_id=company_id,
                invoice_number=f"INV-{number:06d}",
                customer_id=customer.customer_id,
                currency=customer.currency,
                issue_date=issue,
                due_date=due,
                terms=terms,
                line_items=lines,
                total=lines[0].amount,
                amount_paid=ZERO,
                delivery="Draft",
                overdue=False,
                sent_date=None,
                viewed_date=None,
                scheduled_send_date=None,
                reminder_schedule=receivables.default_reminders(),
                recurring_invoice_id=linked_plan.recurring_invoice_id if linked_plan else None,
                memo=None,
                accounting=None,
            )
            if linked_plan is not None:
                linked_plan.invoice_ids.append(invoice.invoice_id)
            self.put("invoice", invoice.invoice_id, invoice)
            self.shape_invoice(invoice, customer, scenario)
        self.state.invoice_counters[company_id] = number

    def shape_invoice(self, invoice: Invoice, customer: Customer, scenario: str) -> None:
        if scenario == "draft":
            return
        if scenario == "scheduled":
            invoice.scheduled_send_date = self.today + timedelta(days=self.between(1, 5))
            self.state.schedule(
                at_local(invoice.scheduled_send_date, time(9, 0)), "invoice_send", invoice.invoice_id, "Draft"
            )
            return
        invoice.delivery = "Sent"
        invoice.sent_date = invoice.created
        invoice.accounting = self.link("invoice", invoice.created)
        if scenario == "void":
            invoice.delivery = "Void"
            invoice.modified = min(invoice.created + timedelta(days=1), self.now)
            return
        if scenario == "viewed":
            invoice.delivery = "Viewed"
            invoice.viewed_date = invoice.modified = min(invoice.created + timedelta(hours=5), self.now)
        if scenario in ("paid", "partial"):
            amount = invoice.total if scenario == "paid" else money(invoice.total / 2)
            self.collected(invoice, customer, amount, CustomerPaymentStatus.COMPLETED)
            invoice.amount_paid = amount
        if scenario == "inflight":
            self.collected(invoice, customer, invoice.total, CustomerPaymentStatus.CLEARING)
        if scenario == "overdue":
            invoice.overdue = True
            invoice.modified = at_local(invoice.due_date + timedelta(days=1), time(0, 0))
            for kind, offset in (("BeforeDue", -3), ("AfterDue", 1)):
                sent = at_local(invoice.due_date + timedelta(days=offset), time(9, 0))
                self.reminder(invoice, customer, kind, sent, sent)
            self.collected(invoice, customer, invoice.total, CustomerPaymentStatus.FAILED)
        # Future reminders and the overdue check are armed like a freshly sent invoice.
        if invoice.status in receivables.OPEN_STATUSES:
            for kind, offset in [("BeforeDue", -3), ("AfterDue", 1), ("AfterDue", 7)]:
                when = at_local(invoice.due_date + timedelta(days=offset), time(9, 0))
                if when > self.now:
                    reminder = self.reminder(invoice, customer, kind, when, None)
                    self.state.schedule(when, "reminder", reminder.reminder_id, "Scheduled")
            if not invoice.overdue:
                self.state.schedule(
                    at_local(invoice.due_date + timedelta(days=1), time(0, 0)),
                    "invoice_overdue",
                    invoice.invoice_id,
                )

    def reminder(
        self, invoice: Invoice, customer: Customer, kind: str, when: datetime, sent: datetime | None
    ) -> Reminder:
        created = min(invoice.created, self.now)
        reminder = Reminder(
            created=created,
            modified=sent or created,
            seq=0,
            reminder_id=self.ids(),
            company_id=invoice.company_id,
            invoice_id=invoice.invoice_id,
            kind=kind,
            scheduled_for=when,
            sent_at=sent,
            status="Sent" if sent else "Scheduled",
            recipient=customer.email,
        )
        self.put("reminder", reminder.reminder_id, reminder)
        return reminder

    def collected(
        self, invoice: Invoice, customer: Customer, amount: Decimal, status: CustomerPaymentStatus
    ) -> None:
        method = "Card" if customer.card_last4 and self.rng.random() < 0.4 else "PreAuthorizedDebit"
        calendar = calendar_for(customer.currency)
        if status is CustomerPaymentStatus.CLEARING:
            debit = self.today - timedelta(days=1)
            debit = (
                debit
                if calendar.is_business_day(debit)
                else calendar.next_business_day_on_or_after(debit - timedelta(days=3))
            )
            modified = at_local(calendar.add_business_days(debit, 1), time(9, 0)) - timedelta(seconds=1)
        else:
            debit = min(
                invoice.issue_date + timedelta(days=self.between(1, 10)), self.today - timedelta(days=3)
            )
            modified = at_local(calendar.add_business_days(debit, 2), time(9, 0))
        fee = money(amount * Decimal("0.029") + Decimal("0.30")) if method == "Card" else Decimal("0.50")
        created = min(at_local(debit, time(8, 0)), self.now - timedelta(minutes=1))
        payment = CustomerPayment(
            created=created,
            modified=min(modified, self.now),
            seq=0,
            customer_payment_id=self.ids(),
            company_id=invoice.company_id,
            customer_id=customer.customer_id,
            method=method,
            amount=amount,
            currency=customer.currency,
            fee=fee,
            status=status,
            failure_reason="InsufficientFunds" if status is CustomerPaymentStatus.FAILED else None,
            debit_date=debit,
            deposit_date=calendar.add_business_days(debit, 2),
            allocations=[]
            if status is CustomerPaymentStatus.FAILED
            else [Allocation(invoice.invoice_id, amount)],
            accounting=self.link("customerPayment", modified)
            if status is CustomerPaymentStatus.COMPLETED
            else None,
        )
        # As a seeded payable's trail: its first status and the one it is in now.
        payment.audit.append(AuditEntry(created, f"Status changed to {CustomerPaymentStatus.PENDING.value}"))
        if status is CustomerPaymentStatus.FAILED:
            payment.audit.append(AuditEntry(payment.modified, f"Payment failed: {payment.failure_reason}"))
        payment.audit.append(AuditEntry(payment.modified, f"Status changed to {status.value}"))
        self.put("customerPayment", payment.customer_payment_id, payment)
        invoice.modified = max(invoice.modified, payment.modified)
        if status is CustomerPaymentStatus.CLEARING:
            due = at_local(calendar.add_business_days(debit, 2), time(9, 0))
            self.state.schedule(
                max(due, self.now), "customer_payment", payment.customer_payment_id, "Clearing"
            )
