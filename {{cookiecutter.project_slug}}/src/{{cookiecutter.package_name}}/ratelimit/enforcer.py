"""Deciding whether a request passes its limits, and what to do when Redis is away."""

import logging
import time

from redis.exceptions import RedisError

from ..observability.metrics import RATELIMIT_STORAGE_ERRORS
from ..settings import OutagePolicy
from .counters import Counter
from .results import Decision
from .rules import LimitSet

logger = logging.getLogger(__name__)

# Failures that mean "the limit storage is unreachable", as opposed to a bug.
STORAGE_ERRORS = (RedisError, TimeoutError, OSError)


class StorageUnavailable(Exception):
    """Redis is unreachable and the outage policy is fail-closed."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("rate limit storage unavailable")
        self.retry_after = retry_after


class Enforcer:
    """Decides whether a request passes its limits; applies the outage policy when Redis fails.

    After a failure, Redis is not tried again for `retry_interval` seconds (one request then
    probes it), so an outage costs one timeout per interval rather than one per request.
    """

    def __init__(
        self,
        counter: Counter,
        fallback: Counter,
        outage_policy: OutagePolicy,
        retry_interval: float,
    ) -> None:
        self._primary = counter
        self._fallback = fallback
        self._outage_policy = outage_policy
        self._retry_interval = retry_interval
        self._down_until = 0.0
        self._down = False

    async def check(self, identity: str, limit_set: LimitSet) -> Decision:
        """Count one request of `identity` against `limit_set`. The counter bounds its time."""
        if time.monotonic() >= self._down_until:
            try:
                results = await self._primary.evaluate(identity, limit_set)
            except STORAGE_ERRORS as exc:
                self._mark_down(exc)
            else:
                if self._down:
                    self._down = False
                    logger.warning("Rate limit storage is back: limits are shared again")
                return Decision(limit_set, results)
        if self._outage_policy == "fail-closed":
            raise StorageUnavailable(retry_after=max(1, round(self._retry_interval)))
        results = await self._fallback.evaluate(identity, limit_set)
        return Decision(limit_set, results, fallback=True)

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
