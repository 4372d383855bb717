"""What a count decided, and what every counter does: the results of one request's limits, the
concurrency slots it holds, and the HitCounter protocol that the counters implement:
counters/redis_counter.py (check.lua, one script call per request) and
counters/memory_counters.py (this process's memory).

Why our own Redis script rather than `limits.aio`'s strategies: those take one round trip to
count a hit and another for the numbers the headers need, per limit, and charge a request's
limits one by one. check.lua decides every limit of a request, and returns what the headers
need, in one atomic call on the Redis clock. `limits` still parses the limit strings, and
counts in memory where there is no Redis (the embedded default, and the fail-open fallback),
except for GCRA, which it lacks. The Redis connection and how calls travel are
counters/storage.py's.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .applied import AppliedLimit, LimitSet


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

    counter: "HitCounter"
    held: Held

    async def release(self) -> None:
        await self.counter.release(self.held)


@dataclass(frozen=True, slots=True)
class Count:
    """What a counter answered for one request: each limit's result, and the concurrency slots
    it took (when admitted and the set has some)."""

    results: tuple[LimitResult, ...]
    slots: Slots | None = None
    # True when the counter answered from a refusal it remembers, without asking its storage:
    # the answer says nothing of the storage's health.
    remembered: bool = False


def refused_until(results: Iterable[LimitResult]) -> float | None:
    """Until when (epoch seconds) a request refused with these results would be refused again,
    whatever other callers or instances do meanwhile (they can only add hits): the latest reset
    of the enforced limits that refused it. None when none refused it, or a concurrency limit
    did (a slot can free up any moment)."""
    refused = [result for result in results if not result.allowed and not result.limit.shadow]
    if not refused or any(result.limit.concurrent for result in refused):
        return None
    return max(result.reset_at for result in refused)


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


class HitCounter(Protocol):
    async def evaluate(self, identity: str, limit_set: LimitSet) -> Count:
        """Count one request of the caller `identity` against every limit of the set."""
        ...

    async def release(self, held: Held) -> None:
        """Give back the concurrency slots of a request whose response is done."""
        ...

    def known_refusal(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...] | None:
        """A refusal of this request known in this process, without asking the storage (which
        evaluate() answers by itself: this is for when the storage is left alone)."""
        ...

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        """Every limit's state for `identity`, spending nothing (the quota endpoint)."""
        ...
