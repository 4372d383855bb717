"""Prometheus metrics (prometheus-client), served at /metrics (api/routes/metrics.py).

Labels are route templates, plan names and outcomes, never raw paths, addresses or keys: their
number stays bounded and nothing secret leaves the process. One process per container: the
default registry is enough (several uvicorn workers would need prometheus-client's multiprocess
mode).
"""

from functools import lru_cache
from typing import TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
# Status classes ("2xx"), not codes: each label set costs one series per bucket.
REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival in the app to its last response byte",
    ["method", "route", "status"],
    # Finer than prometheus-client's default buckets at the low end, where a fast API answers.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RATELIMIT_DECISIONS = Counter(
    "ratelimit_decisions_total",
    "Rate-limit decisions; fallback: decided in memory while Redis was away",
    ["plan", "route", "decision"],
)
RATELIMIT_CHECK_SECONDS = Histogram(
    "ratelimit_check_seconds",
    "Time to decide one request's limits",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
RATELIMIT_STORAGE_ERRORS = Counter(
    "ratelimit_storage_errors_total",
    "Failed calls to the rate-limit storage (Redis); one batched call fails once",
)
RATELIMIT_STORAGE_UP = Gauge(
    "ratelimit_storage_up",
    "1 while limits are counted in the shared storage (Redis), 0 while the outage policy "
    "decides or no Redis is configured",
)
PLAN_ERRORS = Counter(
    "plan_config_errors_total",
    "Plan rows whose limits the service cannot read (reported once per plan per cache TTL)",
    ["plan"],
)
PLAN_CACHE = Counter(
    "plan_cache_lookups_total",
    "Plan and API key lookups; stale: served past its TTL while the database was away",
    ["result"],
)

EVENT_LOOP_LAG = Gauge(
    "event_loop_lag_seconds",
    "How late the load-shedding probe's timer last fired: what every request waits for the "
    "event loop (0 while load shedding is off)",
)
LOAD_SHED = Counter(
    "load_shed_total",
    "Requests refused with 503 before routing because the instance was overloaded",
    ["plan"],
)

Metric = TypeVar("Metric", Counter, Histogram)


@lru_cache(maxsize=4096)
def _child(metric: Counter | Histogram, *labels: str) -> Counter | Histogram:
    return metric.labels(*labels)


def child(metric: Metric, *labels: str) -> Metric:
    """`metric.labels(*labels)`, kept: prometheus-client validates and locks on every call."""
    return cast(Metric, _child(metric, *labels))
