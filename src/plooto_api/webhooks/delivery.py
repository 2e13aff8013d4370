"""The delivery worker: claims due deliveries, posts them signed, records every attempt, and
schedules the next try.

Semantics:
- At least once. A delivery is leased while in flight (its next attempt pushed out by `LEASE`), so
  a worker that dies mid-send leaves it to be retried, never lost. A worker claims only what it
  starts at once (a free slot each) and records attempts as they end, so a lease never runs out
  while its delivery waits its turn or its batch's slowest answer: another worker (a second
  gateway on the same database) then sent it again, and again, and recorded none as succeeded.
- One endpoint's slow or failing answers hold at most `PER_ENDPOINT` of the worker's slots: the
  other endpoints' deliveries go on beside them.
- In order per endpoint and object: a delivery waits while an earlier event of the same object is
  still pending (or retrying) for the same endpoint.
- Retries after a failure (non-2xx, no full answer within 10 s in all, connection error, any other
  error of that one attempt) on `RETRY_DELAYS`; after the last one the delivery is `failed`. One
  attempt's failure is that delivery's alone, never its batch's. At most `MAX_RESPONSE_BYTES` of an
  answer is read.
- An endpoint whose deliveries have kept failing, without a success, for `DISABLE_AFTER` is
  disabled with a `webhook_endpoint.disabled` event. A failure streak is continuing while each
  failed attempt follows the previous one within `STREAK_GAP`; after a longer quiet spell a failure
  starts a new streak.
- A delivery changed while in flight (queued again by a redelivery) is not sent a second time at
  once: the in-flight attempt is recorded, and the redelivery goes out after it.
- Time comes from the injected `now()` (scheduling, leases); the signature's `webhook-timestamp` is
  the real wall clock, since receivers compare it with theirs.
- Claiming is safe with several workers: `FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite the
  write transaction (BEGIN IMMEDIATE) serializes claims.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from plooto_api import __version__, mapping
from plooto_api.log import get_logger
from plooto_api.services import events as event_service
from plooto_api.store.base import utcnow
from plooto_api.store.database import transaction
from plooto_api.store.models import Event, WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint
from plooto_api.store.vault import Vault
from plooto_api.webhooks.signing import signed_headers
from plooto_api.webhooks.targets import address_allowed, parse_target

log = get_logger(__name__)

# After the first attempt (made as soon as the event exists): about three days in all.
RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=14),
    timedelta(hours=20),
    timedelta(hours=24),
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
REQUEST_TIMEOUT_SECONDS = 10.0  # for the whole attempt, answer included
MAX_RESPONSE_BYTES = 64 * 1024  # of an answer's body; the rest is not read
LEASE = timedelta(seconds=60)  # longer than one attempt can take (it starts when it is claimed)
PER_ENDPOINT = 4  # attempts in flight to one endpoint at most, per worker
# After an attempt ends, how long the worker waits for others to end before it records them and
# claims more, so that fast answers cost one transaction each way per group, not per delivery.
GATHER_SECONDS = 0.05
DISABLE_AFTER = timedelta(days=5)
# A failure this long after the endpoint's previous failed attempt starts a new streak: longer than
# the longest retry interval, so a delivery still retrying keeps its endpoint's streak going.
STREAK_GAP = max(RETRY_DELAYS) + timedelta(hours=1)
SECRET_PURPOSE = "webhook_secret"


def event_payload(event: Event) -> str:
    """The JSON body sent for an event: the event object, plus the Standard Webhooks `timestamp`."""
    payload = mapping.event_to_schema(event).model_dump(mode="json")
    payload["timestamp"] = payload["created_at"]
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def signing_secrets(vault: Vault, session: Session, endpoint_id: str, now: datetime) -> list[str]:
    """The endpoint's current secret, and the previous one while it is still honoured."""
    stored: dict[str, Any] | None = vault.open(session, endpoint_id, SECRET_PURPOSE)
    if not stored:
        return []
    found = [str(stored["current"])]
    previous, until = stored.get("previous"), stored.get("previous_expires_at")
    if previous and until and datetime.fromisoformat(until) > now:
        found.append(str(previous))
    return found


@dataclass
class _Claimed:
    delivery_id: str
    endpoint_id: str
    url: str
    event_id: str
    body: str
    secrets: list[str]
    claimed_at: datetime  # the row's `updated_at` as claimed: a later one means it changed in flight


@dataclass
class _Outcome:
    delivery_id: str
    attempted_at: datetime
    ok: bool
    response_status: int | None
    error: str | None
    duration_ms: int
    claimed_at: datetime | None = None


def possibly_leased(delivery: type[WebhookDelivery], now: datetime) -> ColumnElement[bool]:
    """Whether a pending delivery may be in flight: its next attempt is pushed out by no more than
    `LEASE` (a claim's lease, or a retry due within it)."""
    return and_(delivery.next_attempt_at > now, delivery.next_attempt_at <= now + LEASE)


class DeliveryWorker:
    """Delivers due webhook deliveries. One instance per process is enough; several are safe."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        vault: Vault,
        *,
        allow_private: bool,
        now: Callable[[], datetime] = utcnow,
        transport: httpx.AsyncBaseTransport | None = None,
        batch_size: int = 100,
        concurrency: int = 16,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.sessions = sessions
        self.vault = vault
        self.allow_private = allow_private
        self.now = now
        self.transport = transport
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.timeout = timeout

    async def run_once(self) -> int:
        """Attempt the deliveries due, `concurrency` at a time (at most `PER_ENDPOINT` to one
        endpoint), claiming more as attempts end, until none is due or `batch_size` were attempted;
        attempts are recorded as they end. Returns how many were attempted."""
        in_flight: dict[asyncio.Task[_Outcome], str] = {}  # attempt -> its endpoint
        attempted = 0
        async with self._client() as client:
            try:
                while True:
                    free = min(self.concurrency - len(in_flight), self.batch_size - attempted)
                    claimed = self._claim(limit=free, busy=Counter(in_flight.values())) if free > 0 else []
                    for item in claimed:
                        in_flight[asyncio.create_task(self._attempt(client, item))] = item.endpoint_id
                    attempted += len(claimed)
                    if not in_flight:
                        return attempted
                    done, pending = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    if pending:  # those ending just after it too: one record and one claim for them all
                        more, _ = await asyncio.wait(pending, timeout=GATHER_SECONDS)
                        done |= more
                    for task in done:
                        del in_flight[task]
                    # Those that ended together, in one transaction (on a thread: a write may wait for
                    # another writer, and the loop runs the other attempts meanwhile).
                    await asyncio.to_thread(self._record, [task.result() for task in done])
            finally:  # the others' attempts end, and are recorded, before the client closes
                if in_flight:
                    ended = await asyncio.gather(*in_flight)
                    await asyncio.to_thread(self._record, list(ended))

    async def run_until_idle(self, max_rounds: int = 1000) -> int:
        """Run until nothing is due at `now()` (at most `max_rounds` times `batch_size` attempts);
        returns how many attempts were made."""
        total = 0
        for _ in range(max_rounds):
            attempted = await self.run_once()
            if not attempted:
                break
            total += attempted
        return total

    async def deliver_now(self, delivery_id: str) -> bool:
        """Attempt one delivery now, whatever its schedule (still after earlier events of its object).
        False if it is not pending or must wait for an earlier one."""
        claimed = self._claim(only_id=delivery_id)
        if claimed:
            async with self._client() as client:
                outcome = await self._attempt(client, claimed[0])
            await asyncio.to_thread(self._record, [outcome])
        return bool(claimed)

    # --- claim ---------------------------------------------------------------------------------

    def _due(self, now: datetime, only_id: str | None) -> Select[WebhookDelivery, Event, WebhookEndpoint]:
        earlier = aliased(WebhookDelivery)
        earlier_event = aliased(Event)
        blocked = (
            exists()
            .where(
                earlier.endpoint_id == WebhookDelivery.endpoint_id,
                earlier.object_id == WebhookDelivery.object_id,
                earlier.status == "pending",
                earlier.id != WebhookDelivery.id,
                earlier_event.id == earlier.event_id,
                earlier_event.seq < Event.seq,
            )
            .correlate(WebhookDelivery, Event)
        )
        stmt = (
            select(WebhookDelivery, Event, WebhookEndpoint)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookEndpoint.enabled.is_(True),
                or_(WebhookDelivery.object_id.is_(None), ~blocked),
            )
        )
        if only_id is None:
            stmt = stmt.where(WebhookDelivery.next_attempt_at <= now)
        else:  # whatever its schedule, but not while it may be in flight (leased)
            stmt = stmt.where(
                WebhookDelivery.id == only_id,
                or_(WebhookDelivery.next_attempt_at.is_(None), ~possibly_leased(WebhookDelivery, now)),
            )
        return stmt.order_by(Event.seq)

    def _claim(
        self, only_id: str | None = None, *, limit: int = 1, busy: Counter[str] | None = None
    ) -> list[_Claimed]:
        """Lease up to `limit` due deliveries, in event order, at most PER_ENDPOINT to an endpoint
        counting those in flight (`busy`); the rest stay due, for the next free slot."""
        now = self.now()
        claimed: list[_Claimed] = []
        taken = Counter(busy or ())
        with transaction(self.sessions) as session:
            stmt = self._due(now, only_id)
            if busy:  # an endpoint whose slots are all taken has nothing to claim now
                full = [endpoint for endpoint, count in busy.items() if count >= PER_ENDPOINT]
                stmt = stmt.where(WebhookDelivery.endpoint_id.not_in(full)) if full else stmt
            # Enough rows to fill the slots past endpoints that fill up on the way.
            stmt = stmt.limit(limit * PER_ENDPOINT)
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
            secrets: dict[str, list[str]] = {}
            for delivery, event, endpoint in session.execute(stmt).all():
                if len(claimed) >= limit:
                    break
                if taken[endpoint.id] >= PER_ENDPOINT:
                    continue
                taken[endpoint.id] += 1
                if endpoint.id not in secrets:
                    secrets[endpoint.id] = signing_secrets(self.vault, session, endpoint.id, now)
                delivery.next_attempt_at = now + LEASE  # leased: another worker leaves it alone
                delivery.updated_at = utcnow()
                claimed.append(
                    _Claimed(
                        delivery.id,
                        endpoint.id,
                        endpoint.url,
                        event.id,
                        event_payload(event),
                        secrets[endpoint.id],
                        delivery.updated_at,
                    )
                )
        return claimed

    # --- send ----------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self.transport,
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,  # a redirect could point anywhere, past the target check
            trust_env=False,
        )

    async def _refused_address(self, url: str) -> str | None:
        if self.allow_private:
            return None
        host, port = parse_target(url)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=0)
        except OSError:
            return f"target host {host} does not resolve"
        for info in infos:
            address = str(info[4][0])
            if not address_allowed(address):
                return f"target host {host} resolves to a refused address {address}"
        return None

    async def _attempt(self, client: httpx.AsyncClient, item: _Claimed) -> _Outcome:
        attempted_at = self.now()
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            error = await self._refused_address(item.url)
            if error is None and not item.secrets:
                error = "endpoint has no signing secret"
            if error is None:
                headers = signed_headers(item.secrets, item.event_id, item.body, datetime.now(UTC))
                headers["content-type"] = "application/json"
                headers["user-agent"] = f"plooto-api-webhooks/{__version__}"
                # httpx's timeout limits each read; this one limits the whole attempt.
                async with asyncio.timeout(self.timeout):
                    status = await self._post(client, item.url, item.body.encode(), headers)
                if not 200 <= status < 300:
                    error = f"endpoint answered HTTP {status}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"no response within {self.timeout:g} s"
        except Exception as exc:  # whatever it is, it is this attempt's failure alone
            error = f"{type(exc).__name__}: {exc}"[:500]
        duration_ms = int((time.perf_counter() - started) * 1000)
        return _Outcome(
            item.delivery_id, attempted_at, error is None, status, error, duration_ms, item.claimed_at
        )

    @staticmethod
    async def _post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> int:
        """Post and read at most `MAX_RESPONSE_BYTES` of the answer; its status."""
        async with client.stream("POST", url, content=body, headers=headers) as response:
            read = 0
            if not response.is_stream_consumed:  # (an answer made in memory was read already)
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES:
                        break
            return response.status_code

    # --- record --------------------------------------------------------------------------------

    def _record(self, outcomes: list[_Outcome]) -> None:
        now = self.now()
        with transaction(self.sessions) as session:
            for outcome in outcomes:
                delivery = session.get(WebhookDelivery, outcome.delivery_id)
                if delivery is None:
                    continue  # its endpoint was deleted meanwhile
                # Attempts to one endpoint end at once and are recorded side by side: its failure
                # streak and its disabling are read and written one transaction at a time (the row
                # held on PostgreSQL; SQLite's writers are one at a time), or two disabled it twice.
                endpoint = session.get(WebhookEndpoint, delivery.endpoint_id, with_for_update=True)
                assert endpoint is not None
                previous_failure = None if outcome.ok else self._last_failure(session, endpoint.id)
                session.add(
                    WebhookDeliveryAttempt(
                        delivery_id=delivery.id,
                        attempted_at=outcome.attempted_at,
                        response_status=outcome.response_status,
                        error=outcome.error,
                        duration_ms=outcome.duration_ms,
                    )
                )
                delivery.last_attempt_at = outcome.attempted_at
                if outcome.claimed_at is not None and delivery.updated_at != outcome.claimed_at:
                    # Queued again while this attempt was in flight: the redelivery goes out now.
                    delivery.next_attempt_at = now
                elif outcome.ok:
                    delivery.attempt_count += 1
                    delivery.status = "succeeded"
                    delivery.next_attempt_at = None
                else:
                    delivery.attempt_count += 1
                    if delivery.attempt_count >= MAX_ATTEMPTS:
                        delivery.status = "failed"
                        delivery.next_attempt_at = None
                    else:
                        delivery.next_attempt_at = now + RETRY_DELAYS[delivery.attempt_count - 1]
                if outcome.ok:
                    endpoint.failing_since = None
                    continue
                log.info("webhook_attempt_failed", delivery=delivery.id, endpoint=endpoint.id,
                         attempt=delivery.attempt_count, error=outcome.error)  # fmt: skip
                if (
                    endpoint.failing_since is None
                    or previous_failure is None
                    or outcome.attempted_at - previous_failure > STREAK_GAP
                ):
                    endpoint.failing_since = outcome.attempted_at  # a new failure streak
                elif endpoint.enabled and now - endpoint.failing_since >= DISABLE_AFTER:
                    self._disable(session, endpoint, now)

    @staticmethod
    def _last_failure(session: Session, endpoint_id: str) -> datetime | None:
        """When the endpoint's latest failed attempt so far was made."""
        found: datetime | None = session.scalar(
            select(func.max(WebhookDeliveryAttempt.attempted_at))
            .join(WebhookDelivery, WebhookDelivery.id == WebhookDeliveryAttempt.delivery_id)
            .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDeliveryAttempt.error.is_not(None))
        )
        return found

    def _disable(self, session: Session, endpoint: WebhookEndpoint, now: datetime) -> None:
        endpoint.enabled = False
        endpoint.disabled_reason = "deliveries failed for 5 days"
        endpoint.updated_at = now
        log.warning("webhook_endpoint_disabled", endpoint=endpoint.id)
        session.flush()
        from plooto_api.mapping import webhook_endpoint_to_schema

        event_service.record_event(
            session,
            "webhook_endpoint.disabled",
            data=webhook_endpoint_to_schema(endpoint).model_dump(mode="json"),
            object_type="webhook_endpoint",
            object_id=endpoint.id,
        )
