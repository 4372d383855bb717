"""Prometheus metrics, served at /metrics (api/routes/metrics.py) by prometheus-client.

Labels are route templates, plan names and outcomes, never raw paths, addresses or keys: their
number stays bounded and nothing secret leaves the process.

They are prometheus-client's own Counter, Histogram and Gauge: safe to update from any thread
(a sync endpoint runs in a worker thread), and multiprocess-aware: with several uvicorn workers
(`--workers N`), set PROMETHEUS_MULTIPROC_DIR to an empty directory of the container's own and
/metrics adds up every worker's numbers (README, "Logs, metrics, request ids"). Each update
takes prometheus-client's lock; what that costs a request is in the README's benchmark.
"""

from typing import TypeVar

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
    "Failed calls to the rate-limit storage (Redis), by kind: timeout, connection (an outage "
    "once confirmed), server (Redis cannot count now), reply (one call's keys); a batched "
    "call that times out or loses its connection fails once",
    ["kind"],
)
for _kind in ("timeout", "connection", "server", "reply"):  # each exposed from the start, at 0
    RATELIMIT_STORAGE_ERRORS.labels(_kind)
RATELIMIT_STORAGE_MAY_EVICT = Gauge(
    "ratelimit_storage_may_evict",
    "1 when the limits' Redis may evict their keys (a maxmemory-policy other than "
    "noeviction: callers then get fresh budgets), 0 when it may not, -1 when it could not be "
    "checked (INFO denied)",
    multiprocess_mode="max",  # with several workers: the worst any of them saw
)
RATELIMIT_STORAGE_UP = Gauge(
    "ratelimit_storage_up",
    "1 while limits are counted in the shared storage (Redis), 0 while the outage policy "
    "decides or no Redis is configured",
    multiprocess_mode="livemin",  # with several workers: 0 when any live one decides without it
)
PLAN_ERRORS = Counter(
    "plan_config_errors_total",
    "Plan rows whose limits the service cannot read (reported once per plan per cache TTL)",
    ["plan"],
)
PLAN_INACTIVE = Counter(
    "plan_inactive_total",
    "The anonymous plan found inactive (by plain SQL): its callers get 503 (once per cache TTL)",
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
    multiprocess_mode="livemax",  # with several workers: the most lagging live one
)
LOAD_SHED = Counter(
    "load_shed_total",
    "Requests refused with 503 before routing because the instance was overloaded",
    ["plan"],
)


Metric = TypeVar("Metric", Counter, Gauge, Histogram)


def labelled(metric: Metric, *labels: str) -> Metric:
    """The label set `labels` of `metric`, created on first use: `labelled(REQUESTS, ...).inc()`."""
    return metric.labels(*labels)
