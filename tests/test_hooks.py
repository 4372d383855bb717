"""Bad answers stop generation with one line naming the field and the accepted form."""

import pytest

from .conftest import bake_ok

BAD_ANSWERS = [  # field, answer, the start of its one-line message
    ("project_slug", "My Service", "project_slug: 'My Service' must be lowercase"),
    ("project_slug", "9lives", "project_slug: '9lives' must be lowercase"),
    ("package_name", "my-service", "package_name: 'my-service' must be a lowercase"),
    ("package_name", "class", "package_name: 'class' must be a lowercase"),
    ("package_name", "redis", "package_name: 'redis' would shadow a library"),
    ("anonymous_limit", "10/fortnight", "anonymous_limit: '10/fortnight' must be one or more"),
    ("anonymous_limit", "0/minute", "anonymous_limit: '0/minute' must be one or more"),
    ("anonymous_limit", "10/0 minute", "anonymous_limit: '10/0 minute' must be one or more"),
    ("anonymous_limit", "", "anonymous_limit: '' must be one or more"),
    ("anonymous_limit", "60/minute;", "anonymous_limit: '60/minute;' must be one or more"),
]  # fmt: skip


@pytest.mark.parametrize(
    "field,value,message", BAD_ANSWERS, ids=[f"{f}={v!r}" for f, v, _ in BAD_ANSWERS]
)
def test_bad_answer_fails_the_hook_naming_the_field(cookies, capfd, field, value, message):
    # A valid package name, so that a bad slug is not also reported through the derived name.
    answers = {"package_name": "orders_api", field: value}
    result = cookies.bake(extra_context=answers)
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "FailedHookException"
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0]
    assert result.project_path is None or not result.project_path.exists()


CHOICES = [
    ("ratelimit_strategy", "token-bucket"),
    ("redis_outage_policy", "fail-sometimes"),
    ("python_version", "3.9"),
    ("ci_provider", "jenkins"),
]


@pytest.mark.parametrize("field,value", CHOICES, ids=[f"{f}={v}" for f, v in CHOICES])
def test_answer_outside_the_choices_is_refused_naming_the_field(cookies, field, value):
    result = cookies.bake(extra_context={field: value})
    assert result.exit_code != 0
    assert field in str(result.exception) and value in str(result.exception)


BAD_PLANS = [
    ({"pro": "10/fortnight"}, "plans: pro: '10/fortnight' must be one or more"),
    ({"anonymous": "10/minute"}, "plans: 'anonymous' must be a lowercase name"),
    ({"Pro Plan": "10/minute"}, "plans: 'Pro Plan' must be a lowercase name"),
    ({"pro": "0/minute"}, "plans: pro: '0/minute' must be one or more"),
]


@pytest.mark.parametrize(
    "plans,message", BAD_PLANS, ids=[m.split(" must")[0] for _, m in BAD_PLANS]
)
def test_bad_plan_seed_fails_the_hook_naming_the_plan(cookies, capfd, plans, message):
    result = cookies.bake(extra_context={"plans": plans})
    assert type(result.exception).__name__ == "FailedHookException"
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize("value", ["60/minute", "10 per second;1000/day", "5/2 hours, 100/day"])
def test_good_limits_are_accepted(cookies, value):
    bake_ok(cookies, {"anonymous_limit": value})
