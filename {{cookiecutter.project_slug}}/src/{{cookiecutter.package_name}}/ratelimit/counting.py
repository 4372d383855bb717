"""Counting hits, by each algorithm: in Redis (check.lua, one script call per request) or in
process memory; and what a count decided.

Why our own Redis script rather than `limits.aio`'s strategies: those take one round trip to
count a hit and another for the numbers the headers need, per limit, and charge a request's
limits one by one. check.lua decides every limit of a request, and returns what the headers
need, in one atomic call on the Redis clock. `limits` still parses the limit strings, and
counts in memory where there is no Redis (the embedded default, and the fail-open fallback),
except for GCRA, which it lacks. The Redis connection and how calls travel are storage.py's.
"""

import itertools
import math
import time
import uuid
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Protocol

from limits.aio.storage import MemoryStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from ..settings import STRATEGIES, Strategy
from .rules import AppliedLimit, LimitSet
from .storage import RedisClient, ScriptRunner

CHECK_SCRIPT = files(__package__).joinpath("check.lua").read_text()

# The `limits` strategy counting each algorithm in memory; GCRA is MemoryGcra, below.
MEMORY_STRATEGIES: dict[Strategy, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}
if set(MEMORY_STRATEGIES) | {"gcra"} != set(STRATEGIES):  # settings.py holds the one list
    raise RuntimeError("counting.py does not count every strategy of settings.STRATEGIES")


@dataclass(frozen=True, slots=True)
class LimitResult:
    limit: AppliedLimit
    allowed: bool
    remaining: int
    reset_at: float  # epoch seconds at which the window frees capacity again


@dataclass(frozen=True, slots=True)
class Decision:
    """What one check decided, limit by limit."""

    limit_set: LimitSet
    results: tuple[LimitResult, ...]
    # True when Redis was unreachable and the in-memory, per-process fallback decided.
    fallback: bool = False
    # The limit to report: the one that refused, else the one closest to refusing. Worked
    # out once: the check, the 429 body and the quota headers all read it.
    binding: LimitResult = field(init=False)

    def __post_init__(self) -> None:
        refused = [result for result in self.results if not result.allowed]
        binding = (
            refused[0]
            if refused
            else min(self.results, key=lambda result: (result.remaining, -result.reset_at))
        )
        object.__setattr__(self, "binding", binding)


class Counter(Protocol):
    async def evaluate(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        """Count one request of the caller `identity` against every limit of the set."""
        ...

    def remembered(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...] | None:
        """A refusal of this request known in this process, without asking the storage."""
        ...

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        """Every limit's state for `identity`, spending nothing (the quota endpoint)."""
        ...


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


class MemoryCounter:
    """Per-process counts with the `limits` library: not shared with any other instance."""

    def __init__(self, strategy: Strategy, moving_window_max_hits: int) -> None:
        storage = MemoryStorage()
        self._configured = strategy
        self._max_hits = moving_window_max_hits
        self._limiters = {
            name: MEMORY_STRATEGIES[name](storage) for name in {strategy, "sliding-window-counter"}
        }

    def _limiter(self, limit: AppliedLimit) -> RateLimiter:
        return self._limiters[strategy_for(self._configured, limit, self._max_hits)]

    def remembered(self, identity: str, limit_set: LimitSet) -> None:
        return None  # counted here already: nothing to spare

    async def evaluate(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        """All or nothing, like check.lua: a request refused by one limit spends none of the
        others, so every limit is tested before any is hit. Not atomic as the script is: memory
        storage does no I/O, but its expiry task can hold a key's lock for a moment, and a
        concurrent request of this process then passes between test and hit."""
        counted = [
            (limit, limit.subject or identity, self._limiter(limit)) for limit in limit_set.limits
        ]
        allowed = [
            await limiter.test(limit.item, subject, *limit.namespace, cost=limit.cost)
            for limit, subject, limiter in counted
        ]
        if all(allowed):
            for limit, subject, limiter in counted:
                await limiter.hit(limit.item, subject, *limit.namespace, cost=limit.cost)
        results = []
        for (limit, subject, limiter), ok in zip(counted, allowed, strict=True):
            stats = await limiter.get_window_stats(limit.item, subject, *limit.namespace)
            results.append(LimitResult(limit, ok, stats.remaining, stats.reset_time))
        return tuple(results)

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        results = []
        for limit in limit_set.limits:
            subject, limiter = limit.subject or identity, self._limiter(limit)
            ok = await limiter.test(limit.item, subject, *limit.namespace, cost=limit.cost)
            stats = await limiter.get_window_stats(limit.item, subject, *limit.namespace)
            results.append(LimitResult(limit, ok, stats.remaining, stats.reset_time))
        return tuple(results)


class MemoryGcra:
    """GCRA (a token bucket) in process memory, as check.lua does it in Redis.

    Ours because the `limits` library has no GCRA. All or nothing, like the script.
    """

    def __init__(self) -> None:
        # counter key -> theoretical arrival time of its next request (monotonic seconds)
        self._arrivals: dict[tuple[str, str], float] = {}

    def remembered(self, identity: str, limit_set: LimitSet) -> None:
        return None  # counted here already: nothing to spare

    async def evaluate(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        now, wall = time.monotonic(), time.time()
        planned = []
        for limit in limit_set.limits:
            key = (limit.subject or identity, limit.key_suffix)
            interval = limit.window_seconds / limit.item.amount
            arrival = max(self._arrivals.get(key, now), now)
            after = arrival + interval * limit.cost
            in_use = math.ceil((arrival - now) / interval - 1e-9)
            allowed = in_use + limit.cost <= limit.item.amount
            planned.append((limit, key, after, in_use, allowed))
        admitted = all(allowed for *_, allowed in planned)
        if admitted:
            if len(self._arrivals) > 100_000:  # forget the buckets that are full again
                self._arrivals = {k: v for k, v in self._arrivals.items() if v > now}
            for _, key, after, _, _ in planned:
                self._arrivals[key] = after
        return tuple(
            LimitResult(
                limit,
                allowed,
                max(limit.item.amount - in_use - (limit.cost if admitted else 0), 0),
                wall + (after if allowed else after - limit.window_seconds) - now,
            )
            for limit, _, after, in_use, allowed in planned
        )

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        now, wall = time.monotonic(), time.time()
        results = []
        for limit in limit_set.limits:
            interval = limit.window_seconds / limit.item.amount
            key = (limit.subject or identity, limit.key_suffix)
            arrival = max(self._arrivals.get(key, now), now)
            in_use = math.ceil((arrival - now) / interval - 1e-9)
            allowed = in_use + limit.cost <= limit.item.amount
            # when the bucket is full again, or (refused) when this request would fit
            fits = arrival if allowed else arrival + interval * limit.cost - limit.window_seconds
            remaining = limit.item.amount - in_use
            results.append(LimitResult(limit, allowed, remaining, wall + fits - now))
        return tuple(results)


class RedisCounter:
    """Counts in Redis: one check.lua call per request (storage.py sends it).

    A refusal is also remembered locally until the limit frees capacity (the reset time the
    script returned): until then Redis could only refuse again, since other instances can
    only add hits, so a flood over the limit is answered without a Redis call.
    """

    def __init__(
        self,
        client: RedisClient,
        strategy: Strategy,
        key_prefix: str,
        max_calls: int,
        timeout: float,
        moving_window_max_hits: int,
    ) -> None:
        self._script = ScriptRunner(client, CHECK_SCRIPT, max_calls=max_calls, timeout=timeout)
        self._strategy = strategy
        self._max_hits = moving_window_max_hits
        self._prefix = key_prefix
        # Moving-window hits are members of a sorted set: each needs a unique name. A process
        # prefix and a sequence number are unique, and cheaper than a uuid per request.
        self._nonce_prefix = uuid.uuid4().hex[:12] + "-"
        self._sequence = itertools.count()
        # (counter keys, script arguments) of a refused request -> (monotonic time until
        # which Redis would refuse it too, the results it got)
        self._refusing: dict[tuple[str | int, ...], tuple[float, tuple[LimitResult, ...]]] = {}

    def key(self, identity: str, limit: AppliedLimit) -> str:
        # The subject is the hash tag: all of one caller's keys share a cluster slot.
        subject = (limit.subject or identity).replace("{", "(").replace("}", ")")
        return self._prefix + ":{" + subject + "}:" + limit.key_suffix

    def remembered(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...] | None:
        if not self._refusing:  # nothing refused lately: spare building the keys twice
            return None
        keys = [self.key(identity, limit) for limit in limit_set.limits]
        known = self._refusing.get((*keys, *limit_set.script_args))
        if known is not None and known[0] > time.monotonic():
            return known[1]
        return None

    async def evaluate(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        limits = limit_set.limits
        keys = [self.key(identity, limit) for limit in limits]
        signature: tuple[str | int, ...] = (*keys, *limit_set.script_args)
        nonce = self._nonce_prefix + str(next(self._sequence))
        reply = await self._script.call(
            keys, [self._strategy, nonce, self._max_hits, *limit_set.script_args]
        )
        server_now, wall, clock = reply[1], time.time(), time.monotonic()
        results, refused_for = [], 0.0
        for index, limit in enumerate(limits):
            allowed, remaining, reset_ms = reply[2 + 3 * index : 5 + 3 * index]
            delay = max(0.0, (reset_ms - server_now) / 1000)
            results.append(LimitResult(limit, bool(allowed), remaining, wall + delay))
            if not allowed:
                refused_for = max(refused_for, delay)
        if refused_for:
            self._remember_refusal(signature, clock + refused_for, tuple(results))
        return tuple(results)

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        """check.lua with an empty nonce: it reads every counter and writes none."""
        limits = limit_set.limits
        keys = [self.key(identity, limit) for limit in limits]
        reply = await self._script.call(
            keys, [self._strategy, "", self._max_hits, *limit_set.script_args]
        )
        server_now, wall = reply[1], time.time()
        return tuple(
            LimitResult(
                limit,
                bool(reply[2 + 3 * index]),
                reply[3 + 3 * index],
                wall + max(0.0, (reply[4 + 3 * index] - server_now) / 1000),
            )
            for index, limit in enumerate(limits)
        )

    def _remember_refusal(
        self, signature: tuple[str | int, ...], until: float, results: tuple[LimitResult, ...]
    ) -> None:
        if len(self._refusing) > 10_000:  # forget the expired ones before growing further
            clock = time.monotonic()
            self._refusing = {k: v for k, v in self._refusing.items() if v[0] > clock}
            if len(self._refusing) > 10_000:  # a flood from many callers: bounded memory first
                self._refusing.clear()
        self._refusing[signature] = (until, results)
