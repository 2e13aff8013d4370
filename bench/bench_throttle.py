"""Throttle benchmark: how much of a portal's rate limit the adaptive throttle itself can use.

Runs the gateway's real `AdaptiveThrottle` against the sandbox's real `RateLimiter` (a token bucket
whose burst equals its rate, as in bench_sync) on one simulated clock, with a client that costs
nothing: requests start as soon as the throttle allows (up to its concurrency cap) and answer after
a fixed latency; a 429 carries the sandbox's Retry-After. It separates the throttle's ceiling from
the gateway's CPU, which bench_sync measures together. Deterministic; prints `name value unit`.

    .venv/bin/python bench/bench_throttle.py [--limits 5 10 15 25 50] [--requests 215 1000 3000]

215 requests is bench_sync's initial sync of 10,000 bills; 3,000 is about 140,000 bills. The
`_resumed` rows are a 215-request sync by a throttle that resumes what a run of about 3,000 requests
learned (as a restarted gateway does from the saved session state), against a portal bucket that is
full: the mean over 21 such runs (2,000 to 4,000 requests) and the worst 429 share among them.
"""

from __future__ import annotations

import argparse
import heapq

from plooto_api.upstream import AdaptiveThrottle, ThrottleConfig
from plooto_sandbox.faults import RateLimiter, retry_after_seconds


def simulate(
    limit: float, requests: int, latency: float = 0.05, learned: dict[str, float | None] | None = None
) -> tuple[float, float, dict[str, float | None]]:
    """(successful requests/s as a fraction of `limit`, share of requests answered 429 in %, what
    the throttle learned); `learned` is what it starts from."""
    now = 0.0
    config = ThrottleConfig()
    throttle = AdaptiveThrottle(config, clock=lambda: now)
    throttle.resume(learned)
    portal = RateLimiter(limit, int(limit), clock=lambda: now)
    answers: list[tuple[float, float | None]] = []  # (time the answer arrives, Retry-After or None)
    ok = limited = 0
    while ok < requests:
        # Start the next request when both a concurrency slot and the throttle's pace allow it.
        if len(answers) >= config.max_concurrency:
            now, retry_after = heapq.heappop(answers)
            ok, limited = _answer(throttle, retry_after, latency, ok, limited)
            continue
        # As AdaptiveThrottle.slot: wait for the paced start, and past a Retry-After met meanwhile.
        while True:
            start = now + throttle.reserve()
            while answers and answers[0][0] <= start:  # answers that arrive while it waits are seen first
                now, retry_after = heapq.heappop(answers)
                ok, limited = _answer(throttle, retry_after, latency, ok, limited)
            now = max(now, start)
            if not throttle.held():
                break
        wait = portal.take("session")
        heapq.heappush(answers, (now + latency, None if wait is None else float(retry_after_seconds(wait))))
    return ok / now / limit, 100 * limited / (ok + limited), throttle.learned()


def _answer(throttle: AdaptiveThrottle, retry_after: float | None, latency: float, ok: int,
            limited: int) -> tuple[int, int]:  # fmt: skip
    if retry_after is None:
        throttle.on_response(latency)
        return ok + 1, limited
    throttle.on_rate_limited(retry_after)
    return ok, limited + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limits", type=float, nargs="+", default=[5.0, 10.0, 15.0, 25.0, 50.0])
    parser.add_argument("--requests", type=int, nargs="+", default=[215, 1000, 3000])
    args = parser.parse_args()
    for limit in args.limits:
        for requests in args.requests:
            fraction, share, _ = simulate(limit, requests)
            name = f"throttle_at_{limit:g}_req_s_{requests}_requests"
            print(f"{name}_fraction_of_limit {fraction:.3f} ratio")
            print(f"{name}_429_share {share:.2f} %")
        # Where a long run stops in its slow saw-tooth decides the rate it hands on, so resume from
        # several: runs of 2,000 to 4,000 requests. The mean fraction, and the worst 429 share.
        resumed = [simulate(limit, 215, learned=simulate(limit, end)[2]) for end in range(2000, 4001, 100)]
        name = f"throttle_at_{limit:g}_req_s_215_requests_resumed"
        print(f"{name}_fraction_of_limit {sum(r[0] for r in resumed) / len(resumed):.3f} ratio")
        print(f"{name}_429_share {max(r[1] for r in resumed):.2f} %")


if __name__ == "__main__":
    main()
