"""Prometheus metrics, served at /metrics (api/routes/metrics.py) by prometheus-client.

Labels are route templates, plan names and outcomes, never raw paths, addresses or keys: their
number stays bounded and nothing secret leaves the process.

Every request updates about five of these, so they are plain floats, not prometheus-client's
Counter and Histogram, whose every update takes a lock: each metric below is a collector on
prometheus-client's default registry that builds its samples when scraped, exactly as
prometheus-client would expose them (names, help, labels, buckets, `_created`;
tests/test_observability.py compares the two). Updates are `+=` on a float, without a lock:
every update and every scrape runs on the event loop's one thread, where code is interrupted
only at an `await`, so no update interleaves with another or with a scrape. `+=` is not atomic
across threads: code that runs in a worker thread (asyncio.to_thread, a sync endpoint) must not
update them. One process per container: the numbers live in this process (several uvicorn
workers would each expose their own).
"""

import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# As prometheus-client reads it: its own metrics (process_*, python_*) follow the same switch.
CREATED = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in (
    "true",
    "1",
    "t",
)


class Counted:
    """One label set of a counter."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Observed:
    """One label set of a histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # upper bounds, +Inf last
        self.counts = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount
        self.sum += amount


Child = TypeVar("Child", Counted, Observed)


class Family(Collector, Generic[Child]):
    """A metric's label sets, created on first use and exposed in that order."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.children: dict[tuple[str, ...], Child] = {}
        if not labelnames:  # a metric without labels is exposed from the start, at 0
            self.labels()
        registry.register(self)

    def labels(self, *values: str) -> Child:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            child = self.children[values] = self.new_child()
        return child

    def new_child(self) -> Child:
        raise NotImplementedError


class Counter(Family[Counted]):
    def new_child(self) -> Counted:
        return Counted()

    def inc(self, amount: float = 1.0) -> None:
        self.children[()].value += amount

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            family.add_metric(values, child.value, child.created if CREATED else None)
        return [family]


class Histogram(Family[Observed]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.bounds = (*buckets, float("inf"))
        self.les = [floatToGoString(bound) for bound in self.bounds]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def new_child(self) -> Observed:
        return Observed(self.bounds)

    def observe(self, amount: float) -> None:
        self.children[()].observe(amount)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            cumulative: list[tuple[str, float]] = []
            total = 0.0
            for le, count in zip(self.les, child.counts, strict=True):
                total += count
                cumulative.append((le, total))
            family.add_metric(values, cumulative, child.sum)
            if CREATED:
                labels = dict(zip(self.labelnames, values, strict=True))
                family.add_sample(self.name + "_created", labels, child.created)
        return [family]


class Gauge(Collector):
    """A gauge without labels: set when the state changes, not per request."""

    def __init__(
        self, name: str, documentation: str, registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.name, self.documentation, self.value = name, documentation, 0.0
        registry.register(self)

    def set(self, value: float) -> None:
        self.value = float(value)

    def collect(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, value=self.value)]


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
)
LOAD_SHED = Counter(
    "load_shed_total",
    "Requests refused with 503 before routing because the instance was overloaded",
    ["plan"],
)


def child(metric: Family[Child], *labels: str) -> Child:
    """The label set `labels` of `metric`, created on first use: `child(REQUESTS, ...).inc()`."""
    return metric.labels(*labels)
