"""The outage policy's reading of what the counter answered, with counters scripted in memory:
a refusal the counter remembers says nothing of Redis's health, and while Redis is left alone
after an outage, a refusal it remembers still stands. Pure: `pytest tests/unit` needs no service
(test_outage.py and test_faults.py prove the policy against real Redis servers)."""

import time

import pytest
from limits import parse

from {{ cookiecutter.package_name }}.outages import Unavailable
from {{ cookiecutter.package_name }}.ratelimit.counters.failover import Failover
from {{ cookiecutter.package_name }}.ratelimit.counters.memory_counters import memory_counter
from {{ cookiecutter.package_name }}.ratelimit.rules.applied import AppliedLimit, LimitSet
from {{ cookiecutter.package_name }}.ratelimit.rules.counting import Count, Held, LimitResult

LIMITS = LimitSet(
    (AppliedLimit(item=parse("5/minute"), namespace=("plan", "/v1/items"), policy="p"),)
)
REFUSED = (LimitResult(LIMITS.limits[0], False, 0, time.time() + 60),)


class ScriptedCounter:
    """Answers evaluate() from a script: a Count, or an exception to raise."""

    def __init__(self, *answers: Count | Exception, remembers: bool = False) -> None:
        self.answers = list(answers)
        self.remembers = remembers
        self.calls = 0

    async def evaluate(self, identity: str, limit_set: LimitSet) -> Count:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def known_refusal(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...] | None:
        return REFUSED if self.remembers else None

    async def release(self, held: Held) -> None:
        pass

    async def peek(self, identity: str, limit_set: LimitSet) -> tuple[LimitResult, ...]:
        return REFUSED


def failover(counter: ScriptedCounter) -> Failover:
    fallback = memory_counter("moving-window", moving_window_max_hits=1000)
    return Failover(counter, fallback, "fail-closed", retry_interval=60)


async def test_a_remembered_refusal_does_not_clear_a_suspected_stall():
    late = TimeoutError("Redis did not answer in time")
    redis = ScriptedCounter(late, Count(REFUSED, remembered=True), late)
    limiter = failover(redis)
    with pytest.raises(Unavailable):
        await limiter.count("ip:203.0.113.1", LIMITS)  # one late reply: suspect only
    remembered = await limiter.count("ip:203.0.113.2", LIMITS)
    assert not remembered.admitted and not remembered.fallback
    with pytest.raises(Unavailable):
        await limiter.count("ip:203.0.113.1", LIMITS)  # a second: the outage is confirmed
    with pytest.raises(Unavailable):
        await limiter.count("ip:203.0.113.1", LIMITS)  # so Redis is left alone
    assert redis.calls == 3


async def test_while_redis_is_left_alone_a_refusal_it_remembers_still_stands():
    redis = ScriptedCounter(ConnectionRefusedError(111, "refused"), remembers=True)
    limiter = failover(redis)
    with pytest.raises(Unavailable):
        await limiter.count("ip:203.0.113.1", LIMITS)  # the outage starts
    still = await limiter.count("ip:203.0.113.1", LIMITS)  # Redis could only refuse it again
    assert not still.admitted and still.binding is not None and still.binding.remaining == 0
    assert redis.calls == 1
