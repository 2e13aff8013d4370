"""The adaptive throttle's arithmetic (fake clock), retries over a mock transport, and a 429 storm."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from plooto_api.upstream import (
    AdaptiveThrottle,
    Credentials,
    LoopStalls,
    MemoryStateStore,
    PortalSession,
    RateLimited,
    ThrottleConfig,
    UpstreamChanged,
)
from upstream.conftest import SessionFactory
from upstream.upstream_helpers import Control, first_company, run


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def paced_answers(throttle: AdaptiveThrottle, count: int) -> None:
    """`count` requests that each start when the throttle allows (the clock stands still, so past
    the burst every start waits for its pace) and answer healthy."""
    for _ in range(count):
        throttle.reserve()
        throttle.on_response(0.01)


def test_rate_halves_on_429_and_start_waits_for_retry_after() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(ThrottleConfig(initial_rate=10, min_rate=0.5, burst=1), clock=clock)
    assert throttle.reserve() == 0
    throttle.on_rate_limited(retry_after=2)
    assert throttle.rate == 5
    assert throttle.reserve() == pytest.approx(2.0)
    # Several 429s from the same burst count as one signal (cooldown).
    throttle.on_rate_limited(retry_after=2)
    assert throttle.rate == 5
    clock.now += 1.5
    throttle.on_rate_limited(retry_after=1)
    assert throttle.rate == 2.5
    for _ in range(10):
        clock.now += 2
        throttle.on_rate_limited(None)
    assert throttle.rate == 0.5  # floor


def test_rate_grows_after_healthy_runs_up_to_max() -> None:
    clock = FakeClock()
    config = ThrottleConfig(
        initial_rate=4, max_rate=6, increase_after=5, additive_increase=1, proportional_increase=0.1
    )
    throttle = AdaptiveThrottle(config, clock=clock)
    paced_answers(throttle, 5)
    assert throttle.rate == 5
    paced_answers(throttle, 50)
    assert throttle.rate == 6


def test_a_storms_ceiling_is_forgotten_after_a_while_without_429() -> None:
    # The portal's limit was lowered to 1 req/s for a while, then restored: the ceiling the storm
    # marked, kept with the session across restarts, held the rate near 1 req/s for hours (probing
    # up 0.5% a run).
    clock = FakeClock()
    config = ThrottleConfig(initial_rate=10, increase_after=20)
    throttle = AdaptiveThrottle(config, clock=clock)
    for _ in range(6):
        clock.now += 2
        throttle.on_rate_limited(None)
    assert throttle.ceiling is not None and throttle.rate <= 1.0
    learned = throttle.learned()

    paced_answers(throttle, 200)  # within the ceiling's memory: only the slow probe
    assert throttle.rate < 1.5 * learned["rate"]
    clock.now += config.ceiling_memory + 1
    paced_answers(throttle, 200)
    assert throttle.ceiling is None and throttle.rate >= 10

    restarted = AdaptiveThrottle(config, clock=clock)  # resumed from what was saved: remembered anew
    restarted.resume(learned)
    paced_answers(restarted, 200)
    assert restarted.ceiling is not None and restarted.rate < 1.5 * learned["rate"]
    clock.now += config.ceiling_memory + 1
    paced_answers(restarted, 200)
    assert restarted.rate >= 10


def test_a_restart_does_not_make_an_old_ceiling_remembered_afresh() -> None:
    # Saved during a storm, resumed by a restart (or a CLI sync) much later: the ceiling's age is
    # kept with it, so a gateway stopped during a storm does not start days later near 1 req/s.
    clock = FakeClock()
    config = ThrottleConfig(initial_rate=10)
    storm = AdaptiveThrottle(config, clock=clock, wall=clock)
    for _ in range(6):
        clock.now += 2
        storm.on_rate_limited(None)
    learned = storm.learned()
    assert learned["ceiling"] is not None and learned["ceiling_at"] == round(clock.now)

    soon = AdaptiveThrottle(config, clock=clock, wall=clock)
    clock.now += config.ceiling_memory / 2
    soon.resume(learned)
    assert soon.ceiling == learned["ceiling"]  # still remembered, for the time left
    clock.now += config.ceiling_memory / 2 + 1
    paced_answers(soon, 40)
    assert soon.ceiling is None

    later = AdaptiveThrottle(config, clock=clock, wall=clock)
    later.resume(learned)
    assert later.ceiling is None and later.rate == config.initial_rate


def test_the_rate_does_not_grow_while_the_gateway_sends_slower_than_it() -> None:
    clock = FakeClock()
    config = ThrottleConfig(initial_rate=10, increase_after=20, proportional_increase=0.1)
    throttle = AdaptiveThrottle(config, clock=clock)
    for _ in range(200):  # one start a second against a rate of 10 a second: none waits
        clock.now += 1.0
        assert throttle.reserve() == 0
        throttle.on_response(0.01)
    assert (throttle.rate, throttle.increases) == (10, 0)
    assert throttle.learned() == {"rate": 10, "ceiling": None}  # nothing unproven is saved
    # A run in which fewer than half the starts waited proves nothing either; one where half did, does.
    # The first `waited` starts of each run come at the instant the previous run's last one came.
    for waited in (9, 10):
        for index in range(20):
            clock.now += 0.0 if index < waited else 1.0
            throttle.reserve()
            throttle.on_response(0.01)
    assert (throttle.rate, throttle.increases) == (11, 1)


def test_before_any_429_a_high_rate_grows_by_a_share_not_by_one() -> None:
    config = ThrottleConfig(
        initial_rate=10, increase_after=20, additive_increase=1, proportional_increase=0.1
    )
    throttle = AdaptiveThrottle(config, clock=FakeClock())
    rates = []
    for _ in range(4):
        paced_answers(throttle, 20)
        rates.append(throttle.rate)
    # +1 req/s or +10%, whichever is more: alike at 10 req/s, faster above it.
    assert rates == pytest.approx([11, 12.1, 13.31, 14.641])
    paced_answers(throttle, 19)
    assert throttle.rate == pytest.approx(14.641)  # only whole healthy runs count


def test_after_a_429_the_rate_recovers_fast_to_near_where_it_came_then_probes_slowly() -> None:
    clock = FakeClock()
    config = ThrottleConfig(initial_rate=20, increase_after=20, recovery_below=0.8, recovery_increase=0.1,
                            recovery_after=10, probe_increase=0.005)  # fmt: skip
    throttle = AdaptiveThrottle(config, clock=clock)
    throttle.on_rate_limited(None)
    assert (throttle.rate, throttle.ceiling) == (10, 20)
    rates = []
    for _ in range(5):
        for _ in range(10):
            throttle.on_response(0.01)
        rates.append(throttle.rate)
    # +10% per 10 healthy answers, up to 0.8 of the ceiling (not additive +1 per 20).
    assert rates == pytest.approx([11, 12.1, 13.31, 14.641, 16])
    paced_answers(throttle, 19)
    assert throttle.rate == 16
    paced_answers(throttle, 1)
    assert throttle.rate == pytest.approx(16.08)  # past it, +0.5% per 20
    clock.now += 61  # past the measure window: what passed in between says nothing of the rate
    throttle.on_rate_limited(None)  # the next 429 moves the ceiling to the rate it came at
    assert throttle.ceiling == pytest.approx(16.08)
    assert throttle.rate == pytest.approx(8.04)


def test_what_passes_between_two_429s_becomes_the_ceiling() -> None:
    clock = FakeClock()
    config = ThrottleConfig(initial_rate=40, max_rate=50, measure_min_responses=10, measured_share=0.95)
    throttle = AdaptiveThrottle(config, clock=clock)
    # A ramp overshot a portal that lets 25 a second through: its burst hid that until this 429.
    throttle.on_rate_limited(None)
    assert (throttle.rate, throttle.ceiling, throttle.measured) == (20, 40, None)
    # 4 s of starts that each waited for their pace (the gateway pushing), 100 of them answered.
    paced_answers(throttle, 100)
    clock.now += 4
    assert throttle.rate > 25  # recovering towards 0.8 of the ceiling it believes
    throttle.on_rate_limited(None)  # the bucket is empty again: it refilled 100 in 4 s
    assert throttle.measured == pytest.approx(25)
    assert throttle.ceiling == pytest.approx(25)
    assert throttle.rate == pytest.approx(23.75)  # just below it, not half of where it was

    # Starts that did not wait (a gateway sending slower than its rate, so the portal's bucket may
    # have stood full, its refill lost) do not measure the portal: halve as before. The 429 came at
    # what was sent, 2 a second, not at the rate: that is the ceiling the rate recovers towards.
    for _ in range(100):
        clock.now += 0.5
        assert throttle.reserve() == 0
        throttle.on_response(0.01)
    rate = throttle.rate
    throttle.on_rate_limited(None)
    assert throttle.rate == pytest.approx(rate / 2)
    assert throttle.measured == pytest.approx(25)  # unchanged
    assert throttle.ceiling == pytest.approx(2)


def test_a_throttle_resumes_from_what_an_earlier_one_learned() -> None:
    config = ThrottleConfig(initial_rate=10, min_rate=0.5, max_rate=50)
    earlier = AdaptiveThrottle(ThrottleConfig(initial_rate=30, max_rate=50), clock=FakeClock())
    earlier.on_rate_limited(None)
    learned = earlier.learned()
    assert {key: learned[key] for key in ("rate", "ceiling")} == {"rate": 15, "ceiling": 30}

    resumed = AdaptiveThrottle(config, clock=FakeClock())
    resumed.resume(learned)
    assert (resumed.rate, resumed.ceiling) == (15, 30)
    for _ in range(10):  # below 0.8 of the known ceiling: the fast recovery applies at once
        resumed.on_response(0.01)
    assert resumed.rate == pytest.approx(16.5)

    # Within the configured bounds, never above the ceiling; malformed state changes nothing.
    for state, expected in [
        ({"rate": 500, "ceiling": None}, (50, None)),
        ({"rate": 40, "ceiling": 20}, (20, 20)),
        ({"rate": 0.01}, (0.5, None)),
        ({"rate": "fast", "ceiling": 20}, (10, None)),
        ({"rate": float("nan")}, (10, None)),
        ({"rate": True}, (10, None)),
        (None, (10, None)),
    ]:
        fresh = AdaptiveThrottle(config, clock=FakeClock())
        fresh.resume(state)
        assert (fresh.rate, fresh.ceiling) == expected, state


def test_latency_well_above_baseline_reduces_rate() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(ThrottleConfig(initial_rate=20, increase_after=1000), clock=clock)
    for _ in range(10):
        throttle.on_response(0.02)
    throttle.on_response(0.1)  # slower but not "well above" (floor 0.2 s)
    assert throttle.rate == 20
    throttle.on_response(1.0)
    assert throttle.rate == 15


def test_pacing_spaces_starts_at_the_rate() -> None:
    clock = FakeClock()
    throttle = AdaptiveThrottle(ThrottleConfig(initial_rate=4, burst=2), clock=clock)
    waits = [throttle.reserve() for _ in range(4)]
    assert waits == pytest.approx([0, 0, 0.25, 0.5])


def test_a_start_reserved_before_a_429_waits_for_its_retry_after() -> None:
    clock = FakeClock()
    started: list[float] = []

    async def sleep(seconds: float) -> None:
        if throttle.rate == 10:  # a 429 answers another request while this start waits its turn
            throttle.on_rate_limited(retry_after=2)
        clock.now += seconds

    throttle = AdaptiveThrottle(ThrottleConfig(initial_rate=10, burst=1), clock=clock, sleep=sleep)

    async def two_starts() -> None:
        for _ in range(2):
            async with throttle.slot():
                started.append(clock.now)

    run(two_starts())
    # The second start was due at 100.1; the Retry-After that came meanwhile holds it until 102.
    assert started[0] == 100.0 and started[1] == pytest.approx(102.0)


def _mock_session(handler: Any, **throttle: Any) -> PortalSession:
    state = {
        "version": 1,
        "username": "u@example.test",
        "cookies": [
            {"name": ".Plooto.Session", "value": "s", "domain": "portal.test", "path": "/", "expires": None},
            {"name": "XSRF-TOKEN", "value": "x", "domain": "portal.test", "path": "/", "expires": None},
        ],
    }
    config = ThrottleConfig(initial_rate=1000, max_rate=1000, backoff_base=0.001, **throttle)
    return PortalSession(
        "http://portal.test", Credentials("u@example.test", "pw"), MemoryStateStore(state),
        throttle=config, transport=httpx.MockTransport(handler),
    )  # fmt: skip


SESSION_BODY = {
    "userId": "u", "email": "u@example.test", "firstName": "U", "lastName": "T", "mfaMethod": None,
    "selectedCompanyId": None, "idleExpiresAt": "2026-03-02T14:15:00Z", "absoluteExpiresAt": "2026-03-03T02:00:00Z",
}  # fmt: skip
EMPTY_PAGE = {"items": [], "pageNumber": 1, "pageSize": 25, "totalCount": 0, "totalPages": 1}


def test_a_stall_of_the_event_loop_is_measured() -> None:
    async def stall_during_a_request() -> tuple[float, float, float, bool]:
        loop = asyncio.get_running_loop()
        stalls = LoopStalls.of_running_loop()
        started = stalls.start()
        loop.call_soon(time.sleep, 0.3)  # the loop busy, as a page being parsed keeps it
        await asyncio.sleep(0.02)  # the request's own time
        elapsed = loop.time() - started
        stalled = stalls.stalled(started, loop.time())
        latency = stalls.finish(started)
        await asyncio.sleep(0.05)
        return elapsed, stalled, latency, stalls._checking

    elapsed, stalled, latency, checking = run(stall_during_a_request())
    assert elapsed >= 0.3
    assert stalled >= 0.25
    assert latency < 0.1
    assert not checking  # no request in flight: the checks stop


def _after_seven_answers(slow: float, stall: float) -> PortalSession:
    """A session after six quick keep-alives (the latency baseline) and a seventh that the portal
    takes `slow` seconds over while the gateway's own event loop is blocked for `stall` seconds."""
    pending = {"delay": 0.0}

    async def portal(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(pending.pop("delay", 0.0))
        return httpx.Response(200, json=SESSION_BODY)

    session = _mock_session(portal, increase_after=1000)

    async def answers() -> None:
        for _ in range(6):
            await session.keep_alive()
        pending["delay"] = slow
        if stall:
            asyncio.get_running_loop().call_soon(time.sleep, stall)
        await session.keep_alive()

    run(answers())
    return session


def test_a_slow_portal_slows_the_rate_but_the_gateways_own_stall_does_not() -> None:
    # The portal answers in 0.6 s: its latency, the rate comes down.
    slow = _after_seven_answers(slow=0.6, stall=0)
    assert slow.throttle.rate == 750 and slow.throttle.decreases == 1
    # The portal answers at once, but the response waits 0.6 s for the gateway's busy loop: not the
    # portal's doing. It used to cut the rate on every such stall of a long sync, and keep it cut.
    stalled = _after_seven_answers(slow=0.01, stall=0.6)
    assert stalled.throttle.rate == 1000 and stalled.throttle.decreases == 0


def test_429_is_retried_honouring_retry_after_then_raised_when_exhausted() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-XSRF-TOKEN"] == "x"
        calls.append(request.url.path)
        if request.url.path == "/api/session":
            return httpx.Response(200, json=SESSION_BODY)
        if len(calls) <= 3:
            return httpx.Response(429, json={"errorCode": "RateLimitExceeded"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json=EMPTY_PAGE)

    session = _mock_session(handler)
    page = run(session.list_changes("c", "bills", modified_since=None))
    assert page.total_count == 0
    assert session.stats.responses_429 == 2 and session.stats.retries == 2

    always = _mock_session(lambda r: httpx.Response(429, headers={"Retry-After": "0"}), max_attempts=3)
    with pytest.raises(RateLimited):
        run(always.ensure_logged_in())
    assert always.stats.requests == 3


def test_drift_in_a_page_is_never_retried_and_money_stays_decimal() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/session":
            return httpx.Response(200, json=SESSION_BODY)
        return httpx.Response(200, json={"records": [], "pageNumber": 1})

    session = _mock_session(handler)
    with pytest.raises(UpstreamChanged) as caught:
        run(session.list_changes("c", "vendors", modified_since=None))
    assert "page: missing field 'items'" in caught.value.differences
    assert session.stats.retries == 0


def test_a_restarted_session_resumes_the_learned_rate(make_session: SessionFactory) -> None:
    store = MemoryStateStore()
    config = ThrottleConfig(initial_rate=10.0, max_rate=100.0)
    session = make_session(store=store, throttle=config)

    async def learn() -> None:
        await session.ensure_logged_in()
        session.throttle.on_rate_limited(None)  # as a 429 at 10 req/s would
        session.throttle.rate = 7.25
        await session.list_companies()
        await session.aclose()

    run(learn())
    assert store.state is not None
    assert {k: store.state["throttle"][k] for k in ("rate", "ceiling")} == {"rate": 7.25, "ceiling": 10.0}
    restarted = make_session(store=store, throttle=config)

    async def resume() -> None:
        await restarted.ensure_logged_in()
        saves = store.saves
        restarted.save_state()  # nothing learned or changed since the restore: nothing to write
        assert store.saves == saves
        restarted.throttle.rate = 8.5
        restarted.save_state()
        assert store.saves == saves + 1 and store.state is not None
        assert store.state["throttle"]["rate"] == 8.5
        restarted.throttle.rate = 7.25
        await restarted.aclose()

    run(resume())
    assert restarted.stats.logins == 0  # the same saved session, cookies and all
    assert (restarted.throttle.ceiling, restarted.throttle.rate) == (10.0, pytest.approx(7.25, abs=0.2))


def test_429_storm_against_the_sandbox(make_session: SessionFactory, control: Control) -> None:
    session = make_session(
        throttle=ThrottleConfig(initial_rate=30, max_rate=60, max_concurrency=4, max_attempts=8)
    )
    feeds = (
        "bills",
        "payments",
        "invoices",
        "vendors",
        "customers",
        "users",
        "bank_accounts",
        "customer_payments",
    )

    async def scenario() -> int:
        company = await first_company(session)
        control.rate_limit(5, 5)
        results = await asyncio.gather(
            *(
                session.list_changes(company, feed, modified_since=None, page_number=n, page_size=5)
                for feed in feeds
                for n in (1, 2)
            )
        )
        await session.aclose()
        return len(results)

    assert run(scenario()) == 16
    print(
        f"storm requests={session.stats.requests} responses_429={session.stats.responses_429} "
        f"retries={session.stats.retries} final_rate={session.throttle.rate:.2f} min_rate={session.throttle.min_rate_seen:.2f}"
    )
    assert session.throttle.rate < 30
    assert session.stats.responses_429 <= 8
