"""Counts kept in this process's memory: where no Redis is configured, and the fail-open
fallback while Redis is away. Not shared with any other instance."""

import math
import time

from limits.aio.storage import MemoryStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from ...settings import STRATEGIES, Strategy
from ..rules.applied import AppliedLimit, LimitSet
from ..rules.counting import Count, Held, LimitResult, Slots

# The `limits` strategy counting each algorithm in memory; GCRA is MemoryGcra, below.
MEMORY_STRATEGIES: dict[Strategy, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}
if set(MEMORY_STRATEGIES) | {"gcra"} != set(STRATEGIES):  # settings.py holds the one list
    raise RuntimeError("memory_counters.py does not count every strategy of settings.STRATEGIES")


def strategy_for(strategy: Strategy, limit: AppliedLimit, moving_window_max_hits: int) -> Strategy:
    """The algorithm that counts `limit`: the configured one, except that a moving window of
    more hits than `moving_window_max_hits` is counted by the sliding window counter (the
    moving window keeps one entry per hit for its whole window; check.lua does the same)."""
    if strategy == "moving-window" and limit.item.amount > moving_window_max_hits:
        return "sliding-window-counter"
    return strategy


def memory_counter(strategy: Strategy, moving_window_max_hits: int) -> "MemoryCounter | MemoryGcra":
    """Counts kept in this process: no Redis configured, or the fail-open fallback."""
    if strategy == "gcra":
        return MemoryGcra()
    return MemoryCounter(strategy, moving_window_max_hits)


def _all_or_nothing(limits: tuple[AppliedLimit, ...], allowed: list[bool]) -> bool:
    """Whether the request is admitted: no enforced limit refused it (check.lua's rule)."""
    return all(ok for limit, ok in zip(limits, allowed, strict=True) if not limit.shadow)


class InProcessSlots:
    """Concurrency slots counted in this process (no Redis, or the fail-open fallback)."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def key(self, identity: str, limit: AppliedLimit) -> str:
        return f"{limit.subject or identity}:{limit.key_suffix}"

    def in_flight(self, key: str) -> int:
        return self._held.get(key, 0)

    def take(self, keys: list[str]) -> Held:
        for key in keys:
            self._held[key] = self._held.get(key, 0) + 1
        return tuple((key, "") for key in keys)

    async def release(self, held: Held) -> None:
        for key, _ in held:
            count = self._held.get(key, 0) - 1
            if count > 0:
                self._held[key] = count
            else:
                self._held.pop(key, None)


class MemoryCounter:
    """Per-process counts with the `limits` library: not shared with any other instance."""

    def __init__(self, strategy: Strategy, moving_window_max_hits: int) -> None:
        storage = MemoryStorage()
        self._configured = strategy
        self._max_hits = moving_window_max_hits
        self._limiters = {
            name: MEMORY_STRATEGIES[name](storage) for name in {strategy, "sliding-window-counter"}
        }
        self._slots = InProcessSlots()

    def _limiter(self, limit: AppliedLimit) -> RateLimiter:
        return self._limiters[strategy_for(self._configured, limit, self._max_hits)]

    def known_refusal(self, identity: str, limit_set: LimitSet) -> None:
        return None  # counted here already: nothing to spare

    async def evaluate(self, identity: str, limit_set: LimitSet) -> Count:
        """All or nothing, like check.lua: a request refused by one limit spends none of the
        others, so every limit is tested before any is hit. Not atomic as the script is: memory
        storage does no I/O, but its expiry task can hold a key's lock for a moment, and a
        concurrent request of this process then passes between test and hit."""
        limits = limit_set.limits
        allowed = await self._test(identity, limits)
        admitted = _all_or_nothing(limits, allowed)
        slots = []
        if admitted:
            for limit, ok in zip(limits, allowed, strict=True):
                if not ok:
                    continue  # a shadow limit that would have refused: not counted
                if limit.concurrent:
                    slots.append(self._slots.key(identity, limit))
                else:
                    subject = limit.subject or identity
                    await self._limiter(limit).hit(
                        limit.item, subject, *limit.namespace, cost=limit.cost
                    )
        held = Slots(self, self._slots.take(slots)) if slots else None
        return Count(await self._results(identity, limits, allowed), held)

    async def release(self, held: Held) -> None:
        await self._slots.release(held)

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        allowed = await self._test(identity, limit_set.limits)
        return await self._results(identity, limit_set.limits, allowed)

    async def _test(self, identity: str, limits: tuple[AppliedLimit, ...]) -> list[bool]:
        """Whether each limit would admit one more request, spending nothing."""
        allowed = []
        for limit in limits:
            if limit.concurrent:
                in_flight = self._slots.in_flight(self._slots.key(identity, limit))
                allowed.append(in_flight < limit.item.amount)
            else:
                subject = limit.subject or identity
                ok = await self._limiter(limit).test(
                    limit.item, subject, *limit.namespace, cost=limit.cost
                )
                allowed.append(ok)
        return allowed

    async def _results(
        self, identity: str, limits: tuple[AppliedLimit, ...], allowed: list[bool]
    ) -> tuple[LimitResult, ...]:
        results = []
        for limit, ok in zip(limits, allowed, strict=True):
            if limit.concurrent:
                in_flight = self._slots.in_flight(self._slots.key(identity, limit))
                remaining, reset_at = max(limit.item.amount - in_flight, 0), time.time() + 1
            else:
                stats = await self._limiter(limit).get_window_stats(
                    limit.item, limit.subject or identity, *limit.namespace
                )
                remaining, reset_at = stats.remaining, stats.reset_time
            results.append(LimitResult(limit, ok, remaining, reset_at))
        return tuple(results)


class MemoryGcra:
    """GCRA (a token bucket) in process memory, as check.lua does it in Redis.

    Ours because the `limits` library has no GCRA. All or nothing, like the script.
    """

    def __init__(self) -> None:
        # counter key -> theoretical arrival time of its next request (monotonic seconds)
        self._arrivals: dict[tuple[str, str], float] = {}
        self._slots = InProcessSlots()

    def known_refusal(self, identity: str, limit_set: LimitSet) -> None:
        return None  # counted here already: nothing to spare

    async def evaluate(self, identity: str, limit_set: LimitSet) -> Count:
        now, wall = time.monotonic(), time.time()
        planned = []
        for limit in limit_set.limits:
            if limit.concurrent:
                key = ("", self._slots.key(identity, limit))
                in_use = self._slots.in_flight(key[1])
                after = now + 1  # Retry-After 1 when full
            else:
                key = (limit.subject or identity, limit.key_suffix)
                interval = limit.window_seconds / limit.item.amount
                arrival = max(self._arrivals.get(key, now), now)
                after = arrival + interval * limit.cost
                in_use = math.ceil((arrival - now) / interval - 1e-9)
            allowed = in_use + limit.cost <= limit.item.amount
            planned.append((limit, key, after, in_use, allowed))
        admitted = _all_or_nothing(limit_set.limits, [allowed for *_, allowed in planned])
        slots = []
        if admitted:
            if len(self._arrivals) > 100_000:  # forget the buckets that are full again
                self._arrivals = {k: v for k, v in self._arrivals.items() if v > now}
            for limit, key, after, _, allowed in planned:
                if not allowed:
                    continue  # a shadow limit that would have refused: not counted
                if limit.concurrent:
                    slots.append(key[1])
                else:
                    self._arrivals[key] = after
        results = []
        for limit, _, after, in_use, allowed in planned:
            spent = limit.cost if admitted and allowed else 0
            if limit.concurrent:
                reset_at = wall + 1
            else:
                reset_at = wall + (after if allowed else after - limit.window_seconds) - now
            results.append(
                LimitResult(limit, allowed, max(limit.item.amount - in_use - spent, 0), reset_at)
            )
        held = Slots(self, self._slots.take(slots)) if slots else None
        return Count(tuple(results), held)

    async def release(self, held: Held) -> None:
        await self._slots.release(held)

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        now, wall = time.monotonic(), time.time()
        results = []
        for limit in limit_set.limits:
            if limit.concurrent:
                in_use = self._slots.in_flight(self._slots.key(identity, limit))
                allowed = in_use < limit.item.amount
                results.append(LimitResult(limit, allowed, limit.item.amount - in_use, wall + 1))
                continue
            interval = limit.window_seconds / limit.item.amount
            key = (limit.subject or identity, limit.key_suffix)
            arrival = max(self._arrivals.get(key, now), now)
            in_use = math.ceil((arrival - now) / interval - 1e-9)
            allowed = in_use + limit.cost <= limit.item.amount
            # what the next request would be told, as evaluate() tells it: when its bucket is
            # full again, or (refused) when it would fit
            after = arrival + interval * limit.cost
            fits = after if allowed else after - limit.window_seconds
            remaining = limit.item.amount - in_use
            results.append(LimitResult(limit, allowed, remaining, wall + fits - now))
        return tuple(results)
