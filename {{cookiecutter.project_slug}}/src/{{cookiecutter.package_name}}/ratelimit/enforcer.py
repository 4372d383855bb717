"""Counting hits against limits, asynchronously, and what to do when Redis is away."""

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError

from ..observability.metrics import RATELIMIT_STORAGE_ERRORS
from ..settings import OutagePolicy, Strategy
from .rules import AppliedLimit

logger = logging.getLogger(__name__)

STRATEGIES: dict[Strategy, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}


@dataclass(frozen=True, slots=True)
class LimitResult:
    limit: AppliedLimit
    allowed: bool
    remaining: int
    reset_at: float  # epoch seconds at which the window frees capacity again


@dataclass(frozen=True, slots=True)
class Decision:
    results: tuple[LimitResult, ...]
    # True when Redis was unreachable and the in-memory, per-process fallback decided.
    fallback: bool = False

    @property
    def allowed(self) -> bool:
        return all(result.allowed for result in self.results)

    @property
    def binding(self) -> LimitResult:
        """The limit to report: the one that refused, else the one closest to refusing."""
        for result in self.results:
            if not result.allowed:
                return result
        return min(self.results, key=lambda result: (result.remaining, -result.reset_at))


class StorageUnavailable(Exception):
    """Redis is unreachable and the outage policy is fail-closed."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("rate limit storage unavailable")
        self.retry_after = retry_after


async def _evaluate(
    strategy: RateLimiter, limits: Sequence[AppliedLimit]
) -> tuple[LimitResult, ...]:
    allowed = []
    for limit in limits:
        ok = await strategy.hit(limit.item, limit.subject, *limit.namespace, cost=limit.cost)
        allowed.append(ok)
        if not ok:
            break  # like slowapi: limits after the first refusal are not charged
    stats = await asyncio.gather(
        *(
            strategy.get_window_stats(limit.item, limit.subject, *limit.namespace)
            for limit in limits[: len(allowed)]
        )
    )
    return tuple(
        LimitResult(limit=limit, allowed=ok, remaining=stat.remaining, reset_at=stat.reset_time)
        for limit, ok, stat in zip(limits[: len(allowed)], allowed, stats, strict=True)
    )


class Enforcer:
    """Decides whether a request passes its limits; applies the outage policy when Redis fails.

    After a failure, Redis is not tried again for `retry_interval` seconds (one request then
    probes it), so an outage costs one timeout per interval rather than one per request.
    """

    def __init__(
        self,
        storage: Storage,
        strategy: Strategy,
        outage_policy: OutagePolicy,
        timeout: float,
        retry_interval: float,
    ) -> None:
        self._primary = STRATEGIES[strategy](storage)
        self._fallback = STRATEGIES[strategy](MemoryStorage())
        self._outage_policy = outage_policy
        # A hard bound on one whole check, above the per-call socket timeouts.
        self._timeout = timeout * 4
        self._retry_interval = retry_interval
        self._down_until = 0.0
        self._down = False

    async def check(self, limits: Sequence[AppliedLimit]) -> Decision:
        if time.monotonic() >= self._down_until:
            try:
                async with asyncio.timeout(self._timeout):
                    results = await _evaluate(self._primary, limits)
            except (StorageError, TimeoutError, OSError) as exc:
                self._mark_down(exc)
            else:
                if self._down:
                    self._down = False
                    logger.warning("Rate limit storage is back: limits are shared again")
                return Decision(results)
        if self._outage_policy == "fail-closed":
            raise StorageUnavailable(retry_after=max(1, round(self._retry_interval)))
        return Decision(await _evaluate(self._fallback, limits), fallback=True)

    def _mark_down(self, exc: BaseException) -> None:
        RATELIMIT_STORAGE_ERRORS.inc()
        self._down_until = time.monotonic() + self._retry_interval
        if not self._down:
            self._down = True
            logger.warning(
                "Rate limit storage unreachable (%s: %s); policy %s%s",
                type(exc).__name__,
                exc,
                self._outage_policy,
                ": limits are per process until it returns"
                if self._outage_policy == "fail-open"
                else ": limited routes answer 503",
            )
