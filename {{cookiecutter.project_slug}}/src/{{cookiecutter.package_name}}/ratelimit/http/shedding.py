"""Load shedding: an overloaded instance refuses the lowest plan priorities first (503 with
Retry-After), so that the CPU it has left serves the plans that matter, instead of every
caller waiting in the same queue until they all time out.

Overload is event-loop lag, what every request of the instance feels whatever its cause (a
CPU-heavy burst, a blocking call): a task sleeps a fixed interval and records how late it
woke. A request compares that, or how overdue the probe is right now (so a loop blocked since
the last measurement is seen before the probe runs again), with its plan's threshold.

Graded: with LOAD_SHEDDING_LAG_MS = T, a plan of priority p is shed from a lag of T x (p + 1)
when p <= LOAD_SHEDDING_MAX_PRIORITY: anonymous (0) at T, free (1) at 2T, pro and above never
(by default). CallerMiddleware asks once the caller is resolved, before routing: a shed request
spends no quota and never runs its endpoint. The question costs a comparison or two.

The `ratelimit` logger says when an episode starts (the lag, the priorities shed) and when it
ends (how long, the peak lag, how many requests of each plan were shed), never per request: a
line per shed request would spend CPU exactly when there is none to spare. Metrics:
`event_loop_lag_seconds`, `load_shed_total{plan}`.
"""

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from ...observability.metrics import EVENT_LOOP_LAG, LOAD_SHED, labelled
from ...problems import ProblemResponse, unavailable
from ...settings import Settings
from .responses import refusal_logger

# How often the probe measures: one timer a tenth of a second costs nothing, and a lag is
# seen within this time (a loop blocked right now, at once: see sheds()).
PROBE_INTERVAL = 0.1
# An episode ends once the lag has stayed under the threshold this long, so that a lag
# hovering around it does not log a start and an end every interval.
QUIET_PERIOD = 1.0
# Long enough for a burst to drain; short enough that a shed caller is back soon after.
RETRY_AFTER = 2
DETAIL = "The service is overloaded and serves higher plans first; retry after Retry-After."


class LoadShedder:
    def __init__(self, lag_threshold: float, max_priority: int) -> None:
        self.lag_threshold = lag_threshold  # seconds
        self.max_priority = max_priority
        # The lag from which each priority up to max_priority is shed, worked out once.
        self._thresholds = tuple(lag_threshold * (p + 1) for p in range(max_priority + 1))
        # How late the probe woke last time, and when it is due next (never, while it is not
        # running): both in time.monotonic() seconds, asyncio's clock.
        self.lag = 0.0
        self._due = math.inf
        # The episode under way: when it started, its peak lag, since when the lag has been
        # under the threshold, and the requests shed so far, by plan.
        self._started: float | None = None
        self._peak = 0.0
        self._quiet_since: float | None = None
        self._shed: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "LoadShedder | None":
        """None when LOAD_SHEDDING_LAG_MS is 0: no probe, and nothing asked per request."""
        if settings.load_shedding_lag_ms <= 0:
            return None
        return cls(settings.load_shedding_lag_ms / 1000, settings.load_shedding_max_priority)

    def sheds(self, priority: int) -> bool:
        """Whether a request of a plan of this priority is to be refused now."""
        if priority > self.max_priority:
            return False
        lag = time.monotonic() - self._due  # > 0: the probe is overdue, the loop blocked
        if lag < self.lag:
            lag = self.lag
        return lag >= self._thresholds[priority]

    def shed(self, plan: str, path: str) -> ProblemResponse:
        """The 503 of a request sheds() refused, counted for the metrics and the episode."""
        labelled(LOAD_SHED, plan).inc()
        self._shed[plan] = self._shed.get(plan, 0) + 1
        return unavailable(DETAIL, path, RETRY_AFTER, shed=True)  # the load test's verdict reads it

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Measure the lag while the app runs (entered in the rate limiter's lifespan)."""
        probe = asyncio.create_task(self._probe(), name="event-loop lag probe")
        try:
            yield
        finally:
            probe.cancel()
            with suppress(asyncio.CancelledError):
                await probe
            self._due, self.lag = math.inf, 0.0
            if self._started is not None:
                self._end(time.monotonic())

    async def _probe(self) -> None:
        while True:
            self._due = time.monotonic() + PROBE_INTERVAL
            await asyncio.sleep(PROBE_INTERVAL)
            now = time.monotonic()
            self.lag = max(0.0, now - self._due)
            EVENT_LOOP_LAG.set(self.lag)
            self._follow_episode(now)

    def _priorities(self, lag: float) -> list[int]:
        return [p for p, threshold in enumerate(self._thresholds) if lag >= threshold]

    def _follow_episode(self, now: float) -> None:
        lag = self.lag
        if lag >= self.lag_threshold:
            self._quiet_since = None
            if self._started is None:
                self._started, self._peak = now, lag
                refusal_logger.warning(
                    "load shedding started",
                    extra={
                        "lag_ms": round(lag * 1000, 1),
                        "threshold_ms": round(self.lag_threshold * 1000, 1),
                        "priorities": self._priorities(lag),
                    },
                )
            self._peak = max(self._peak, lag)
        elif self._started is not None:
            if self._quiet_since is None:
                self._quiet_since = now
            elif now - self._quiet_since >= QUIET_PERIOD:
                self._end(now)

    def _end(self, now: float) -> None:
        started = self._started if self._started is not None else now
        refusal_logger.warning(
            "load shedding ended",
            extra={
                "duration_s": round(now - started, 1),
                "peak_lag_ms": round(self._peak * 1000, 1),
                "priorities": self._priorities(self._peak),
                "shed": dict(self._shed),
                "shed_total": sum(self._shed.values()),
            },
        )
        self._started, self._quiet_since, self._peak = None, None, 0.0
        self._shed.clear()
