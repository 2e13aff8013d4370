"""Per-session throttle: a concurrency cap plus an adaptive request rate (AIMD on a paced bucket).

Multiplicative decrease on 429 (and a pause for its Retry-After) and on latency well above the
moving baseline (the portal's latency: stalls of the gateway's own event loop are taken out, see
LoopStalls). Until the first 429 the rate ramps up after each run of healthy responses by a half
(or 1 req/s, whichever is more): from the default 10 req/s a limit of 25 is reached in about 60
responses, where +10% a run took 200, the whole of a 10,000-bill initial sync. Only a run in
which at least half the starts waited for their pace counts: a gateway that sends slower than its
rate (busy, or with little to fetch) learns nothing about a higher one.
A 429 marks the rate it came at as the portal's ceiling (forgotten after `ceiling_memory` seconds
without a 429: a storm's low limit is not kept for hours): the rate then recovers quickly to just
below that ceiling and probes past it slowly, so a long sync runs near the limit and meets it
rarely (AIMD alone would saw between half the limit and the limit, with a 429 every cycle). A fast
ramp overshoots (the portal's burst hides it for a while), so that first ceiling is high; what the
portal lets through between two 429s measures its rate, and becomes the ceiling (on_rate_limited).

What a throttle has learned (its rate and the ceiling) is kept with the session's state, so a
restarted gateway resumes near the portal's limit instead of ramping up to it again.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from plooto_api.upstream._models import ThrottleConfig


class LoopStalls:
    """When this process's event loop could not run: a measured request latency includes those
    stalls, which are the gateway's own doing, not the portal's.

    While a sync is busy (a page parsed on the loop, the store's writer thread holding the GIL) a
    response may wait on the loop for a good part of a second after it arrived. Taken as the
    portal's latency, that cut the rate on every such stall and left it there, saved with the
    session: after a long initial sync on a slow machine, every later sync was paced at a fraction
    of what the portal allows. While requests are in flight, a callback due every `INTERVAL`
    seconds notes how late it runs; the stalls that overlap a request are taken out of its latency.
    """

    INTERVAL = 0.01  # seconds between checks while requests are in flight
    MIN_STALL = 0.005  # later than this counts as a stall
    KEEP = 120.0  # seconds of stalls kept (at most 100 a second): longer than a read may take

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopStalls] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._stalls: deque[tuple[float, float]] = deque()  # (start, end) on the loop's clock
        self._in_flight = 0
        self._checking = False

    @classmethod
    def of_running_loop(cls) -> LoopStalls:
        """The monitor of the running loop (it holds no reference to the loop: a closed loop drops
        its pending check, and with it the monitor)."""
        loop = asyncio.get_running_loop()
        monitor = cls._by_loop.get(loop)
        if monitor is None:
            monitor = cls._by_loop[loop] = cls()
        return monitor

    def start(self) -> float:
        """A request begins: the loop's time now. Each `start` needs its `finish`."""
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        if not self._checking:
            self._checking = True
            due = loop.time() + self.INTERVAL
            loop.call_at(due, self._check, due)
        return loop.time()

    def finish(self, started: float) -> float:
        """The request that began at `started` is over: its latency, the loop's stalls taken out."""
        self._in_flight -= 1
        now = asyncio.get_running_loop().time()
        return max(0.0, (now - started) - self.stalled(started, now))

    def _check(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - due > self.MIN_STALL:
            self._stalls.append((due, now))
        while self._stalls and self._stalls[0][1] < now - self.KEEP:
            self._stalls.popleft()
        if self._in_flight > 0:
            next_due = now + self.INTERVAL
            loop.call_at(next_due, self._check, next_due)
        else:  # nothing to measure: an idle gateway is not woken a hundred times a second
            self._checking = False

    def stalled(self, start: float, end: float) -> float:
        """Seconds between `start` and `end` (the loop's clock) during which the loop was stalled."""
        total = 0.0
        for stall_start, stall_end in reversed(self._stalls):
            if stall_end <= start:
                break
            total += max(0.0, min(stall_end, end) - max(stall_start, start))
        return total


class AdaptiveThrottle:
    """Paces request starts at `rate` per second (with a small burst) and adapts the rate."""

    def __init__(
        self,
        config: ThrottleConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._wall = wall  # for what is saved across restarts (the monotonic clock starts anew)
        self.rate = min(max(config.initial_rate, config.min_rate), config.max_rate)
        self._clock = clock
        self._sleep = sleep
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._next_start = float("-inf")  # a fresh throttle has its whole burst
        self._blocked_until = 0.0
        self._last_decrease = -1e9
        self._healthy = 0
        self._waited = 0  # starts of the current healthy run that had to wait for their pace
        self.baseline: float | None = None
        self.ceiling: float | None = None  # the rate the last 429 came at, or what was measured (below)
        self._ceiling_since = clock()  # when the ceiling was last confirmed (a 429, or resumed)
        self.measured: float | None = None  # the rate the portal let through between its last two 429s
        self._last_limited: float | None = None  # when the last 429 came
        self._passed = 0  # healthy responses since then
        self._paced_starts = self._starts = 0  # starts since then, and those that waited for their pace
        self._samples = 0
        self.decreases = 0
        self.increases = 0
        self.min_rate_seen = self.rate

    # -- what it has learned --------------------------------------------------------------------

    def learned(self) -> dict[str, float | None]:
        """The rate and ceiling to resume from after a restart (see `resume`), with when the ceiling
        was last confirmed (wall-clock seconds), so a restart does not make it remembered afresh."""
        learned: dict[str, float | None] = {
            "rate": round(self.rate, 3),
            "ceiling": None if self.ceiling is None else round(self.ceiling, 3),
        }
        if self.ceiling is not None:
            learned["ceiling_at"] = round(self._wall() - (self._clock() - self._ceiling_since))
        return learned

    def resume(self, learned: Mapping[str, object] | None) -> None:
        """Start from what an earlier run learned: its rate (within the configured bounds, and not
        above its ceiling) and its ceiling. Anything malformed is ignored: the configured start stands."""

        def positive(value: object) -> float | None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                return None
            return float(value) if math.isfinite(value) and value > 0 else None

        if not learned:
            return
        rate, ceiling = positive(learned.get("rate")), positive(learned.get("ceiling"))
        if rate is None:
            return
        cfg = self.config
        since = self._clock()
        if ceiling is not None:
            at = positive(learned.get("ceiling_at"))
            age = 0.0 if at is None else max(0.0, self._wall() - at)  # saved before its time was kept: now
            if age > cfg.ceiling_memory:
                return  # a ceiling no 429 confirmed for that long is forgotten, and the rate it held
            since -= age
            rate = min(rate, ceiling)
        self.rate = min(max(rate, cfg.min_rate), cfg.max_rate)
        self.ceiling = ceiling
        self._ceiling_since = since
        self.min_rate_seen = self.rate

    # -- pacing --------------------------------------------------------------------------------

    def reserve(self) -> float:
        """Claim the next start slot; returns how long to wait for it (0 = go now)."""
        now = self._clock()
        interval = 1.0 / self.rate
        # Idle time earns at most `burst` immediate starts.
        earliest = max(self._next_start, now - (self.config.burst - 1) * interval, self._blocked_until)
        self._next_start = earliest + interval
        self._starts += 1
        if earliest > now:
            self._waited += 1
            self._paced_starts += 1
        return max(0.0, earliest - now)

    def held(self) -> bool:
        """Whether a 429's Retry-After still holds every start (a start reserved before it arrived too)."""
        return self._clock() < self._blocked_until

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a concurrency slot and wait for the paced start time, and past any Retry-After that
        arrived while waiting: a start reserved before the 429 came is held by it all the same."""
        async with self._semaphore:
            while True:
                delay = self.reserve()
                if delay > 0:
                    await self._sleep(delay)
                if not self.held():
                    break
            yield

    # -- feedback ------------------------------------------------------------------------------

    def _decrease(self, factor: float) -> bool:
        return self._decrease_to(self.rate * factor)

    def _decrease_to(self, rate: float) -> bool:
        """Lower the rate to `rate` (within the configured floor) unless a decrease came just now."""
        now = self._clock()
        if now - self._last_decrease < self.config.decrease_cooldown:
            return False
        self._last_decrease = now
        self.rate = min(self.rate, max(self.config.min_rate, rate))
        self.min_rate_seen = min(self.min_rate_seen, self.rate)
        self.decreases += 1
        self._healthy = self._waited = 0
        # Re-pace the queue at the new rate from now on.
        self._next_start = max(self._next_start, now + 1.0 / self.rate)
        return True

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429: slow down and hold every start until Retry-After has passed.

        The first 429 halves the rate and marks the rate it came at as the ceiling. The portal's
        bucket was empty then; at the next 429 it is empty again, so what it let through in between
        is what it refilled (less any refill lost while it stood full): a measure of its rate from
        below. When the gateway was pushing at its pace all along (so the bucket had no time to
        stand full), that measure becomes the ceiling and the rate drops to just below it, not
        to half: a ramp that overshot the limit (the bucket's burst hides an overshoot for a while)
        then settles after its second 429 instead of meeting the limit again and again."""
        now = self._clock()
        cfg = self.config
        if retry_after is not None and retry_after > 0:
            self._blocked_until = max(self._blocked_until, now + retry_after)
        rate = self.rate
        self._ceiling_since = now
        measured, pushed = self._measure(now)
        if measured is not None and pushed:
            ceiling = max(cfg.min_rate, min(rate, measured))
            if self._decrease_to(cfg.measured_share * ceiling):
                self.measured, self.ceiling = measured, ceiling
        elif self._decrease(cfg.decrease_factor_429):
            # A gateway that did not keep to its pace (busy writing) sent slower than its rate: the
            # 429 came at what it sent, which is what passed. (Only a floor under the portal's rate,
            # its bucket may have stood full: the ceiling, not the rate to drop to.)
            self.ceiling = rate if measured is None else max(cfg.min_rate, min(rate, measured))
        self._healthy = self._waited = 0

    def _measure(self, now: float) -> tuple[float | None, bool]:
        """Responses per second the portal let through since its last 429 (None when too few, or too
        long ago), and whether the starts kept to their pace all along, so that it measures the
        portal's rate (see on_rate_limited). Starts counting afresh."""
        cfg = self.config
        last, passed = self._last_limited, self._passed
        pushed = self._starts > 0 and self._paced_starts >= cfg.measure_paced_share * self._starts
        self._last_limited, self._passed, self._starts, self._paced_starts = now, 0, 0, 0
        if last is None or passed < cfg.measure_min_responses or not 0 < now - last <= cfg.measure_window:
            return None, pushed
        return passed / (now - last), pushed

    def on_response(self, latency: float) -> None:
        """A healthy (non-429, non-5xx) response took `latency` seconds."""
        cfg = self.config
        baseline = self.baseline
        if baseline is not None and self._samples >= 5:
            slow = latency > baseline * cfg.latency_factor and latency - baseline > cfg.latency_floor
            if slow:
                self._decrease(cfg.decrease_factor_latency)
                # A slow answer still informs the baseline, slowly, so a lasting shift is accepted.
                self.baseline = baseline + 0.02 * (latency - baseline)
                return
        self.baseline = latency if baseline is None else baseline + 0.1 * (latency - baseline)
        self._samples += 1
        self._healthy += 1
        self._passed += 1
        self._grow()

    def _grow(self) -> None:
        cfg = self.config
        if self.ceiling is not None and self._clock() - self._ceiling_since > cfg.ceiling_memory:
            self.ceiling = None  # no 429 for a long while: the limit may be higher now (a storm passed)
        if self.ceiling is not None and self.rate < cfg.recovery_below * self.ceiling:
            if self._healthy >= cfg.recovery_after:  # well below the known limit: recover fast
                self._healthy = self._waited = 0
                self.rate = min(cfg.recovery_below * self.ceiling, self.rate * (1 + cfg.recovery_increase))
                self.increases += 1
            return
        if self._healthy < cfg.increase_after or self.rate >= cfg.max_rate:
            return
        # Grow only past a rate that held requests back: when the gateway sends slower than its rate
        # (busy writing, or little to fetch), a healthy run proves nothing about a higher one, and an
        # unproven rate would be saved and resumed, to meet the portal's limit in a burst later.
        paced = 2 * self._waited >= self._healthy
        self._healthy = self._waited = 0
        if not paced:
            return
        if self.ceiling is None:  # no limit met yet
            step = max(cfg.additive_increase, self.rate * cfg.proportional_increase)
            self.rate = min(cfg.max_rate, self.rate + step)
        else:  # near or past the known limit: probe slowly
            self.rate = min(cfg.max_rate, self.rate * (1 + cfg.probe_increase))
        self.increases += 1

    def on_failure(self) -> None:
        """A 5xx or transport error: not a rate signal, but it breaks the healthy run."""
        self._healthy = self._waited = 0
