"""Prometheus metrics of the gateway (`GET /metrics`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "plooto_api_http_requests_total",
    "HTTP requests served.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "plooto_api_http_request_duration_seconds",
    "Time to serve an HTTP request.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
SYNC_RUNS = Counter(
    "plooto_api_sync_runs_total", "Sync runs by outcome.", ["cadence", "outcome"], registry=REGISTRY
)
SYNC_OBJECTS = Counter(
    "plooto_api_sync_objects_total", "Objects written by sync.", ["object_type", "change"], registry=REGISTRY
)
CONNECTIONS = Gauge("plooto_api_connections", "Connections by state.", ["state"], registry=REGISTRY)


class PortalCalls(Collector):
    """The gateway's calls to the portal, from its portal sessions' counters (`source`: the serving
    process's PortalRegistry.totals), so that retry storms and the share of 429s show."""

    COUNTERS = (
        ("requests", "plooto_api_portal_requests", "Requests sent to the portal."),
        ("responses_429", "plooto_api_portal_rate_limited", "Portal answers 429 (rate limited)."),
        ("retries", "plooto_api_portal_retries", "Portal requests sent again after a failure."),
        ("logins", "plooto_api_portal_logins", "Sign-ins attempted (username and password sent)."),
        ("relogins", "plooto_api_portal_relogins", "Sessions lost and signed in again."),
        ("mfa_answers", "plooto_api_portal_mfa_answers", "MFA codes sent."),
    )

    def __init__(self) -> None:
        self.source: Callable[[], Any] | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.source() if self.source is not None else None
        for field, name, documentation in self.COUNTERS:
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], getattr(stats, field, 0))
            yield family


PORTAL_CALLS = PortalCalls()
REGISTRY.register(PORTAL_CALLS)
