"""Prometheus metrics of the gateway (`GET /metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
