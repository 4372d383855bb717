"""The one limit grammar (plans/grammar.py) and a plan's parsing, at and past their bounds.
Pure: `pytest tests/unit` needs no service."""

import pytest

from {{ cookiecutter.package_name }}.plans.grammar import limit_problem, parse_limits


@pytest.mark.parametrize("text", ["60/minute", "10/second;1000/day", "5 per 2 hours"])
def test_limits_people_write_are_accepted(text):
    assert limit_problem(text) is None
    assert parse_limits(text)


@pytest.mark.parametrize(
    "text",
    ["10/fortnight", "", "60/minute;", "10/9999999999 years", "99999999999999999999999/minute"],
)
def test_limits_the_service_cannot_serve_are_refused_with_a_reason(text):
    problem = limit_problem(text)
    assert problem is not None and problem.strip()
