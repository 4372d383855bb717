"""The outage policy: what a check decides while Redis is unreachable.

fail-open serves, counting in this process's memory (limits then hold per instance only);
fail-closed answers 503 with Retry-After. Either way, after a failure Redis is left alone for
REDIS_RETRY_INTERVAL_SECONDS (one request then probes it), so an outage costs one timeout per
interval rather than one per request.
"""

import logging
import time

from redis.exceptions import RedisError

from ..observability.metrics import RATELIMIT_STORAGE_UP
from ..outages import Outage
from ..settings import OutagePolicy
from .counting import Counter, Decision, Slots
from .redis_counter import RedisCounter
from .rules import LimitSet

logger = logging.getLogger(__name__)

# Failures that mean "the limit storage is unreachable", as opposed to a bug.
STORAGE_ERRORS = (RedisError, TimeoutError, OSError)


class Failover:
    """Counts on the primary counter (Redis), and applies the outage policy when it fails."""

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
        detail = "Rate limiting is temporarily unavailable; retry later."
        self._outage = Outage(detail, retry_interval)
        RATELIMIT_STORAGE_UP.set(1 if isinstance(counter, RedisCounter) else 0)

    def remembered(self, identity: str, limit_set: LimitSet) -> Decision | None:
        """A refusal known in this process (the storage could only refuse again), or None."""
        known = self._primary.remembered(identity, limit_set)
        return None if known is None else Decision(limit_set, known)

    async def check(self, identity: str, limit_set: LimitSet) -> Decision:
        """Count one request of `identity` against `limit_set` (the counter bounds its time);
        raises Unavailable while Redis is away under fail-closed."""
        known = self.remembered(identity, limit_set)
        if known is not None:  # answered without the storage: says nothing of its health
            return known
        outage = self._outage
        now = time.monotonic()
        if not outage.skips(now):
            try:
                results, slots = await self._primary.evaluate(identity, limit_set)
            except STORAGE_ERRORS as exc:
                self._failed(exc)
            else:
                if outage.answered():
                    RATELIMIT_STORAGE_UP.set(1)
                    logger.warning("Rate limit storage is back: limits are shared again")
                return Decision(limit_set, results, slots=slots)
        if self._outage_policy == "fail-closed":
            raise outage.unavailable(now)
        results, slots = await self._fallback.evaluate(identity, limit_set)
        return Decision(limit_set, results, fallback=True, slots=slots)

    async def release(self, slots: Slots) -> None:
        """Give back a finished request's concurrency slots, in the counter that gave them.
        Where Redis fails, they expire with their lease instead."""
        try:
            await slots.release()
        except STORAGE_ERRORS as exc:
            logger.info("Concurrency slots left to expire (%s: %s)", type(exc).__name__, exc)

    async def peek(self, identity: str, limit_set: LimitSet) -> Decision:
        """The state of every limit of the set, spending nothing; the outage policy as check's."""
        if not self._outage.skips(time.monotonic()):
            try:
                return Decision(limit_set, await self._primary.peek(identity, limit_set))
            except STORAGE_ERRORS as exc:
                self._failed(exc)
        if self._outage_policy == "fail-closed":
            raise self._outage.unavailable(time.monotonic())
        return Decision(limit_set, await self._fallback.peek(identity, limit_set), fallback=True)

    def _failed(self, exc: BaseException) -> None:
        # The failed call itself is counted where it is made (storage.py): one per call.
        if self._outage.failed():
            RATELIMIT_STORAGE_UP.set(0)
            logger.warning(
                "Rate limit storage unreachable (%s: %s); policy %s%s",
                type(exc).__name__,
                exc,
                self._outage_policy,
                ": limits are per process until it returns"
                if self._outage_policy == "fail-open"
                else ": limited routes answer 503",
            )
