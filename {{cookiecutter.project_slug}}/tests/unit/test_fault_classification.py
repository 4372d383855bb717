"""How the fault model reads a failed script call (README, "When Redis fails"): only an
unreachable Redis is an outage. Pure: `pytest tests/unit` needs no service."""

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from {{ cookiecutter.package_name }}.ratelimit.counters.storage import ScriptExpired, error_kind


@pytest.mark.parametrize(
    "error,kind",
    [
        (TimeoutError("Redis did not answer in time"), "timeout"),
        (ScriptExpired("ran late"), "timeout"),
        (RedisConnectionError("Connection refused"), "connection"),
        (ConnectionRefusedError(111, "refused"), "connection"),
        (
            ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
            "reply",
        ),
        (ResponseError("ERR value is not an integer or out of range script: ..."), "reply"),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), "reply"),
        (ResponseError("LOADING Redis is loading the dataset in memory"), "server"),
        (ResponseError("READONLY You can't write against a read only replica."), "server"),
        (ReadOnlyError("You can't write against a read only replica."), "server"),  # redis-py's
        (ResponseError("BUSY Redis is busy running a script."), "server"),
    ],
)
def test_each_failure_is_classified_as_the_fault_model_says(error, kind):
    assert error_kind(error) == kind
