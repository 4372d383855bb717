"""What a count decided, without any storage: which limit binds, what a shadow limit does, and
how check.lua's arguments encode a set of limits. Pure: `pytest tests/unit` needs no service."""

import time

from limits import parse

from {{ cookiecutter.package_name }}.ratelimit.counters.redis_counter import script_args
from {{ cookiecutter.package_name }}.ratelimit.rules.applied import AppliedLimit, LimitSet
from {{ cookiecutter.package_name }}.ratelimit.rules.counting import (
    Decision,
    LimitResult,
    refused_until,
)


def limit(text: str, policy: str, **flags: bool) -> AppliedLimit:
    return AppliedLimit(item=parse(text), namespace=("plan", "/v1/items"), policy=policy, **flags)


def result(applied: AppliedLimit, allowed: bool, remaining: int, reset_in: float) -> LimitResult:
    return LimitResult(applied, allowed, remaining, time.time() + reset_in)


def test_the_refusing_limit_binds_and_the_request_is_not_admitted():
    minute, day = limit("10/minute", "m"), limit("1000/day", "d")
    decision = Decision(
        LimitSet((minute, day)), (result(minute, False, 0, 30), result(day, True, 500, 3600))
    )
    assert not decision.admitted
    assert decision.binding is not None and decision.binding.limit is minute


def test_when_all_admit_the_limit_closest_to_refusing_binds():
    minute, day = limit("10/minute", "m"), limit("1000/day", "d")
    decision = Decision(
        LimitSet((minute, day)), (result(minute, True, 7, 30), result(day, True, 2, 3600))
    )
    assert decision.admitted and decision.binding is not None
    assert decision.binding.limit is day


def test_a_shadow_limit_never_refuses_never_binds_and_is_reported():
    enforced, shadow = limit("100/minute", "p"), limit("5/minute", "p-shadow", shadow=True)
    decision = Decision(
        LimitSet((enforced, shadow)), (result(enforced, True, 90, 30), result(shadow, False, 0, 30))
    )
    assert decision.admitted
    assert decision.binding is not None and decision.binding.limit is enforced
    assert [r.limit for r in decision.shadow_refusals] == [shadow]


def test_only_shadow_limits_bind_nothing_and_the_policy_header_is_empty():
    shadow = limit("5/minute", "p-shadow", shadow=True)
    limit_set = LimitSet((shadow,))
    decision = Decision(limit_set, (result(shadow, True, 4, 30),))
    assert decision.admitted and decision.binding is None
    assert limit_set.policy_header == b""


def test_a_window_limit_binds_before_a_concurrency_limit():
    window, slots = limit("10/minute", "m"), limit("2/second", "c", concurrent=True)
    decision = Decision(
        LimitSet((window, slots)), (result(window, True, 9, 30), result(slots, True, 0, 1))
    )
    assert decision.binding is not None and decision.binding.limit is window


def test_check_luas_arguments_encode_each_limit_once_per_set():
    minute = limit("10/minute", "m")
    shadow = limit("5/minute", "s", shadow=True)
    slots = limit("3/second", "c", concurrent=True)
    limit_set = LimitSet((minute, shadow, slots))
    # n, then amount, window seconds, cost, flags (1 shadow, 2 concurrency) for each limit.
    assert script_args(limit_set) == (3, 10, 60, 1, 0, 5, 60, 1, 1, 3, 1, 1, 2)
    assert script_args(limit_set) is script_args(limit_set)  # worked out once, then kept


def test_a_refusal_stands_until_the_last_refusing_window_frees_capacity():
    minute, hour, day = limit("10/minute", "m"), limit("50/hour", "h"), limit("1000/day", "d")
    refused = (result(minute, False, 0, 30), result(hour, False, 0, 900), result(day, True, 9, 5))
    assert refused_until(refused) == refused[1].reset_at  # the hour's, not the admitting day's
    assert refused_until((result(minute, True, 3, 30),)) is None  # admitted: nothing to stand


def test_no_refusal_stands_where_a_slot_or_a_shadow_limit_refused():
    slots, minute = limit("2/minute", "c", concurrent=True), limit("10/minute", "m")
    shadow = limit("5/minute", "s", shadow=True)
    # a slot can free up any moment, and a shadow limit refuses nothing
    assert refused_until((result(slots, False, 0, 1), result(minute, False, 0, 30))) is None
    assert refused_until((result(shadow, False, 0, 30), result(minute, True, 4, 30))) is None
