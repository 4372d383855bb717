"""Counting hits, by each algorithm: in Redis (check.lua, one script call per request) or in
process memory; and what a count decided.

Why our own Redis script rather than `limits.aio`'s strategies: those take one round trip to
count a hit and another for the numbers the headers need, per limit, and charge a request's
limits one by one. check.lua decides every limit of a request, and returns what the headers
need, in one atomic call on the Redis clock. `limits` still parses the limit strings, and
counts in memory where there is no Redis (the embedded default, and the fail-open fallback),
except for GCRA, which it lacks. The Redis connection and how calls travel are storage.py's.
"""

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
SLOTS_SCRIPT = files(__package__).joinpath("slots.lua").read_text()

logger = logging.getLogger(__name__)

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


# The concurrency slots one admitted request holds, by counter key (and, in Redis, member).
Held = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Slots:
    """Concurrency slots an admitted request holds until its response is done."""

    counter: "Counter"
    held: Held

    async def release(self) -> None:
        await self.counter.release(self.held)


@dataclass(frozen=True, slots=True)
class Decision:
    """What one check decided, limit by limit."""

    limit_set: LimitSet
    results: tuple[LimitResult, ...]
    # True when Redis was unreachable and the in-memory, per-process fallback decided.
    fallback: bool = False
    # The concurrency slots taken, to release when the response is done.
    slots: Slots | None = None
    # Whether the request may go on: no enforced limit refused it.
    admitted: bool = field(init=False)
    # The enforced limit to report: the one that refused, else the rate limit closest to
    # refusing. Worked out once: the check, the 429 body and the quota headers all read it.
    # None when every limit is shadow: nothing can refuse, and no quota header is sent.
    binding: LimitResult | None = field(init=False)
    # The shadow limits that would have refused this admitted request.
    shadow_refusals: tuple[LimitResult, ...] = field(init=False)

    def __post_init__(self) -> None:
        enforced = [result for result in self.results if not result.limit.shadow]
        refused = [result for result in enforced if not result.allowed]
        windows = [result for result in enforced if not result.limit.concurrent] or enforced
        binding = (
            refused[0]
            if refused
            else min(windows, key=lambda result: (result.remaining, -result.reset_at))
            if windows
            else None
        )
        shadow_refusals = tuple(
            result for result in self.results if result.limit.shadow and not result.allowed
        )
        object.__setattr__(self, "admitted", not refused)
        object.__setattr__(self, "binding", binding)
        object.__setattr__(self, "shadow_refusals", () if refused else shadow_refusals)


class Counter(Protocol):
    async def evaluate(
        self, identity: str, limit_set: LimitSet
    ) -> tuple[tuple[LimitResult, ...], Slots | None]:
        """Count one request of the caller `identity` against every limit of the set: the
        results, and the concurrency slots it took (when admitted and the set has some)."""
        ...

    async def release(self, held: Held) -> None:
        """Give back the concurrency slots of a request whose response is done."""
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

    def remembered(self, identity: str, limit_set: LimitSet) -> None:
        return None  # counted here already: nothing to spare

    async def evaluate(
        self, identity: str, limit_set: LimitSet
    ) -> tuple[tuple[LimitResult, ...], Slots | None]:
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
        return await self._results(identity, limits, allowed), held

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

    def remembered(self, identity: str, limit_set: LimitSet) -> None:
        return None  # counted here already: nothing to spare

    async def evaluate(
        self, identity: str, limit_set: LimitSet
    ) -> tuple[tuple[LimitResult, ...], Slots | None]:
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
        return tuple(results), held

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
            # when the bucket is full again, or (refused) when this request would fit
            fits = arrival if allowed else arrival + interval * limit.cost - limit.window_seconds
            remaining = limit.item.amount - in_use
            results.append(LimitResult(limit, allowed, remaining, wall + fits - now))
        return tuple(results)


class RedisCounter:
    """Counts in Redis: one check.lua call per request (storage.py sends it).

    A refusal is also remembered locally until the limit frees capacity (the reset time the
    script returned): until then Redis could only refuse again, since other instances can
    only add hits, so a flood over the limit is answered without a Redis call. (Not a
    refusal by a concurrency limit: a slot can free up any moment.)

    Concurrency slots are leased: each expires `lease` seconds after it was taken or last
    renewed, and keep_leases() renews the slots of this process's requests in flight, so a
    slow response keeps its slot and an instance that dies loses its slots within a lease.
    """

    def __init__(
        self,
        client: RedisClient,
        strategy: Strategy,
        key_prefix: str,
        max_calls: int,
        timeout: float,
        moving_window_max_hits: int,
        lease: float = 30.0,
    ) -> None:
        self._script = ScriptRunner(client, CHECK_SCRIPT, max_calls=max_calls, timeout=timeout)
        self._slots_script = ScriptRunner(
            client, SLOTS_SCRIPT, max_calls=max_calls, timeout=timeout
        )
        self._strategy = strategy
        self._max_hits = moving_window_max_hits
        self._prefix = key_prefix
        self._lease = lease
        self._lease_arg = f"{lease:g}"  # as the scripts read it
        # Moving-window hits are members of a sorted set: each needs a unique name. A process
        # prefix and a sequence number are unique, and cheaper than a uuid per request.
        self._nonce_prefix = uuid.uuid4().hex[:12] + "-"
        self._sequence = itertools.count()
        # (counter keys, script arguments) of a refused request -> (monotonic time until
        # which Redis would refuse it too, the results it got)
        self._refusing: dict[tuple[str | int, ...], tuple[float, tuple[LimitResult, ...]]] = {}
        # Concurrency slots of this process's requests in flight: (key, member), to renew.
        self._in_flight: set[tuple[str, str]] = set()

    def close(self) -> None:
        self._script.close()
        self._slots_script.close()

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

    async def evaluate(
        self, identity: str, limit_set: LimitSet
    ) -> tuple[tuple[LimitResult, ...], Slots | None]:
        limits = limit_set.limits
        keys = [self.key(identity, limit) for limit in limits]
        nonce = self._nonce_prefix + str(next(self._sequence))
        reply = await self._script.call(
            keys, [self._strategy, nonce, self._max_hits, self._lease_arg, *limit_set.script_args]
        )
        admitted, server_now, wall, clock = reply[0], reply[1], time.time(), time.monotonic()
        results, refused_for, remember = [], 0.0, True
        for index, limit in enumerate(limits):
            allowed, remaining, reset_ms = reply[2 + 3 * index : 5 + 3 * index]
            delay = max(0.0, (reset_ms - server_now) / 1000)
            results.append(LimitResult(limit, bool(allowed), remaining, wall + delay))
            if not allowed and not limit.shadow:
                refused_for = max(refused_for, delay)
                remember = remember and not limit.concurrent
        if refused_for and remember:
            signature: tuple[str | int, ...] = (*keys, *limit_set.script_args)
            self._remember_refusal(signature, clock + refused_for, tuple(results))
        slots = None
        if admitted and limit_set.holds_slots:
            held = tuple(
                (keys[index], f"{nonce}:{index + 1}")
                for index, result in enumerate(results)
                if result.limit.concurrent and result.allowed
            )
            if held:
                self._in_flight.update(held)
                slots = Slots(self, held)
        return tuple(results), slots

    async def release(self, held: Held) -> None:
        self._in_flight.difference_update(held)
        for key in {key for key, _ in held}:
            members = [member for k, member in held if k == key]
            await self._slots_script.call([key], [0, *members])

    @asynccontextmanager
    async def keep_leases(self) -> AsyncIterator[None]:
        """Renew the leases of this process's slots in flight, three times per lease."""
        task = asyncio.create_task(self._renew_leases())
        try:
            yield
        finally:
            task.cancel()

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            by_key: dict[str, list[str]] = {}
            for key, member in list(self._in_flight):
                by_key.setdefault(key, []).append(member)
            for key, members in by_key.items():
                try:
                    await self._slots_script.call([key], [self._lease_arg, *members])
                except Exception as exc:  # the next round tries again; the lease has margin
                    logger.warning(
                        "Could not renew concurrency slots (%s: %s)", type(exc).__name__, exc
                    )

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        """check.lua with an empty nonce: it reads every counter and writes none."""
        limits = limit_set.limits
        keys = [self.key(identity, limit) for limit in limits]
        reply = await self._script.call(
            keys, [self._strategy, "", self._max_hits, self._lease_arg, *limit_set.script_args]
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
