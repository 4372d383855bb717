"""The outage policy, and the fault model that decides when it applies.

Only an unreachable Redis is an outage (README, "When Redis fails"): no connection, a connection
lost (after one retry), a reply error about the server's state (LOADING, READONLY...), or calls
that get no reply in time while the event loop was on time (resp.py), confirmed: one timeout
makes Redis suspect, and a second, of a call sent after the first failed, confirms it. So one
late reply, one busy moment of this process or one dropped connection does not switch every
caller of the instance to the policy.

During an outage, fail-open serves, counting in this process's memory (limits then hold per
instance only); fail-closed answers 503 with Retry-After. Redis is then left alone for
REDIS_RETRY_INTERVAL_SECONDS, so an outage costs one timeout per interval, not one per request.

A request whose own call failed without an outage (a suspect timeout, or a reply error: a script
error, WRONGTYPE, a value out of range, OOM, which concern that call's keys only) gets the
policy's answer alone: fail-open counts it in memory, fail-closed answers 503. Every other caller
stays on Redis. Reply errors are logged once per limit set and retry interval, and counted.
"""

import logging
import time

from redis.exceptions import RedisError

from ...observability.metrics import RATELIMIT_STORAGE_UP
from ...outages import Outage, Unavailable
from ...settings import OutagePolicy
from ..rules.applied import AppliedLimit, LimitSet
from ..rules.counting import Decision, HitCounter, LimitResult, Slots
from .redis_counter import RedisCounter
from .storage import error_kind

logger = logging.getLogger(__name__)

# Failures of a call to the limit storage, as opposed to a bug of ours.
STORAGE_ERRORS = (RedisError, TimeoutError, OSError)
# Reply errors remembered (to log each once per interval) at most; then forgotten at once.
MAX_REMEMBERED_ERRORS = 1000
# The 503's detail under fail-closed when Redis refused to count a request's own limits.
MISCONFIGURED = (
    "The rate limits of this request cannot be counted (a limit is misconfigured); the "
    "service's operators have been told."
)


class Failover:
    """Counts on the primary counter (Redis), and applies the outage policy when it fails."""

    def __init__(
        self,
        counter: HitCounter,
        fallback: HitCounter,
        outage_policy: OutagePolicy,
        retry_interval: float,
    ) -> None:
        self._primary = counter
        self._fallback = fallback
        self._outage_policy = outage_policy
        self._closed = outage_policy == "fail-closed"
        self._retry_interval = retry_interval
        detail = "Rate limiting is temporarily unavailable; retry later."
        self._outage = Outage(detail, retry_interval)
        # When the first timeout of a suspected outage happened (monotonic), or None.
        self._suspect_since: float | None = None
        # A reply error's limits -> until when it is not logged again.
        self._logged_errors: dict[tuple[AppliedLimit, ...], float] = {}
        RATELIMIT_STORAGE_UP.set(1 if isinstance(counter, RedisCounter) else 0)

    async def count(self, identity: str, limit_set: LimitSet) -> Decision:
        """Count one request of `identity` against `limit_set` (the counter bounds its time);
        raises Unavailable where the outage policy is fail-closed and Redis cannot count it."""
        now = time.monotonic()
        if self._outage.skips(now):
            # Redis is left alone, but what it refused lately it would refuse still.
            known = self._primary.known_refusal(identity, limit_set)
            if known is not None:
                return Decision(limit_set, known)
        else:
            try:
                counted = await self._primary.evaluate(identity, limit_set)
            except STORAGE_ERRORS as exc:
                if self._failed(exc, now, limit_set) and self._closed:
                    raise self._misconfigured() from None
            else:
                if not counted.remembered:  # a refusal answered from memory: Redis not asked
                    self._answered()
                return Decision(limit_set, counted.results, slots=counted.slots)
        if self._closed:
            raise self._unavailable()
        counted = await self._fallback.evaluate(identity, limit_set)
        return Decision(limit_set, counted.results, fallback=True, slots=counted.slots)

    async def release(self, slots: Slots) -> None:
        """Give back a finished request's concurrency slots, in the counter that gave them.
        Where Redis fails, they expire with their lease instead."""
        try:
            await slots.release()
        except STORAGE_ERRORS as exc:
            logger.info("Concurrency slots left to expire (%s: %s)", type(exc).__name__, exc)

    async def peek(self, identity: str, limit_set: LimitSet) -> Decision:
        """The state of every limit of the set, spending nothing; the outage policy as check's."""
        now = time.monotonic()
        if not self._outage.skips(now):
            try:
                results: tuple[LimitResult, ...] = await self._primary.peek(identity, limit_set)
            except STORAGE_ERRORS as exc:
                if self._failed(exc, now, limit_set) and self._closed:
                    raise self._misconfigured() from None
            else:
                self._answered()
                return Decision(limit_set, results)
        if self._closed:
            raise self._unavailable()
        return Decision(limit_set, await self._fallback.peek(identity, limit_set), fallback=True)

    def _unavailable(self) -> Unavailable:
        return self._outage.unavailable(time.monotonic())

    def _misconfigured(self) -> Unavailable:
        return Unavailable(MISCONFIGURED, retry_after=max(1, round(self._retry_interval)))

    def _answered(self) -> None:
        self._suspect_since = None
        if self._outage.answered():
            RATELIMIT_STORAGE_UP.set(1)
            logger.warning("Rate limit storage is back: limits are shared again")

    def _failed(self, exc: BaseException, sent: float, limit_set: LimitSet) -> bool:
        """Decide what one failed call (sent at monotonic time `sent`) says of Redis; True when
        it was a reply error (the call's own limits). The failed call itself is counted where
        it is made (storage.py): one per call."""
        kind = error_kind(exc)
        if kind == "reply":
            self._reply_error(exc, limit_set)
            return True
        if kind == "timeout":
            suspect = self._suspect_since
            if suspect is None or sent < suspect:
                # The first late call, or one sent before it (the same stall): suspect only.
                self._suspect_since = time.monotonic() if suspect is None else suspect
                return False
        self._suspect_since = None
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
        return False

    def _reply_error(self, exc: BaseException, limit_set: LimitSet) -> None:
        # One line per limit set (a plan's or a key's limits on a route) and interval: a bad
        # limit fails every request of its callers, and each failure is counted anyway.
        signature = limit_set.limits
        now = time.monotonic()
        if self._logged_errors.get(signature, 0.0) > now:
            return
        if len(self._logged_errors) >= MAX_REMEMBERED_ERRORS:
            self._logged_errors.clear()
        self._logged_errors[signature] = now + max(self._retry_interval, 60.0)
        logger.error(
            "Redis refused to count a request's limits (%s); that request gets policy %s, "
            "other callers are not affected. Limits: %s",
            exc,
            self._outage_policy,
            ", ".join(limit.text for limit in limit_set.limits),
        )
