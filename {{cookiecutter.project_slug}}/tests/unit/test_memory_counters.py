"""The counts this process keeps (no Redis, and the fail-open fallback), every algorithm: the
limit admitted exactly, all or nothing across a request's limits, and a peek that spends
nothing. Pure: `pytest tests/unit` needs no service."""

import pytest
from limits import parse

from {{ cookiecutter.package_name }}.ratelimit.counters.memory_counters import memory_counter
from {{ cookiecutter.package_name }}.ratelimit.rules.applied import AppliedLimit, LimitSet
from {{ cookiecutter.package_name }}.settings import STRATEGIES


def limit_set(*texts: str) -> LimitSet:
    return LimitSet(
        tuple(
            AppliedLimit(item=parse(text), namespace=("plan", "/v1/items"), policy=f"p{n}")
            for n, text in enumerate(texts)
        )
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_limit_is_admitted_exactly_then_refused(strategy):
    counter = memory_counter(strategy, moving_window_max_hits=1000)
    limits = limit_set("5/minute")
    admitted = []
    for _ in range(7):
        counted = await counter.evaluate("ip:203.0.113.1", limits)
        admitted.append(counted.results[0].allowed)
    assert admitted == [True] * 5 + [False] * 2
    (other,) = (await counter.evaluate("ip:203.0.113.2", limits)).results  # its own budget
    assert other.allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_request_refused_by_one_limit_spends_none_of_the_others(strategy):
    counter = memory_counter(strategy, moving_window_max_hits=1000)
    tight, loose = limit_set("2/minute"), limit_set("2/minute", "10/minute")
    for _ in range(2):
        await counter.evaluate("ip:203.0.113.3", tight)
    counted = await counter.evaluate("ip:203.0.113.3", loose)  # refused by the 2/minute
    assert [r.allowed for r in counted.results] == [False, True]
    peeked = await counter.peek("ip:203.0.113.3", loose)
    assert peeked[1].remaining == 10  # the 10/minute spent nothing


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_peek_spends_nothing(strategy):
    counter = memory_counter(strategy, moving_window_max_hits=1000)
    limits = limit_set("3/minute")
    for _ in range(3):
        (peeked,) = await counter.peek("ip:203.0.113.4", limits)
        assert peeked.remaining == 3
    (first,) = (await counter.evaluate("ip:203.0.113.4", limits)).results
    assert first.allowed and first.remaining == 2
