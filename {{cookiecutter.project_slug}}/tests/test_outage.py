"""Redis going away follows the outage policy: never a 500, health never affected, self-healing.

Each test runs against a redis-server of its own (or a port with nothing, or a server that never
answers), never the shared one.
"""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from .conftest import free_port, metric, running_client, storage_errors

# Each waits out an outage of its own (timeouts, retries, a restarted redis-server).
pytestmark = pytest.mark.slow


async def test_fail_open_keeps_serving_and_limits_per_process(make_settings, throwaway_redis):
    settings = make_settings(redis_url=throwaway_redis.url, ratelimit_outage_policy="fail-open")
    async with running_client(settings) as client:
        assert (await client.get("/v1/items")).status_code == 200
        before = (await client.get("/metrics")).text
        throwaway_redis.stop()
        during = [(await client.get("/v1/items")).status_code for _ in range(7)]
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        after = (await client.get("/metrics")).text
    # The in-memory fallback starts a fresh count: 5 more admitted, then refused. No 5xx.
    assert during == [200] * 5 + [429] * 2
    fallback = {"plan": "anonymous", "route": "/v1/items", "decision": "fallback"}
    decisions = "ratelimit_decisions_total"
    assert metric(after, decisions, **fallback) - metric(before, decisions, **fallback) == 7
    assert storage_errors(after, "connection") - storage_errors(before, "connection") >= 1
    assert live.status_code == 200
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "degraded",
        "checks": {"redis": "unreachable", "database": "ok"},
    }


async def test_fail_closed_answers_503_with_retry_after(make_settings, throwaway_redis):
    settings = make_settings(
        redis_url=throwaway_redis.url,
        ratelimit_outage_policy="fail-closed",
        redis_retry_interval_seconds=3,
    )
    async with running_client(settings) as client:
        assert (await client.get("/v1/items")).status_code == 200
        throwaway_redis.stop()
        refused = [await client.get("/v1/items") for _ in range(3)]
        live = await client.get("/health/live")
    assert [r.status_code for r in refused] == [503] * 3
    assert all(r.headers["retry-after"] == "3" for r in refused)
    assert refused[0].headers["content-type"] == "application/problem+json"
    assert live.status_code == 200


@pytest.mark.parametrize("policy,status", [("fail-open", 200), ("fail-closed", 503)])
async def test_redis_unreachable_from_the_start(make_settings, policy, status):
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(redis_url=nothing_listens, ratelimit_outage_policy=policy)
    async with running_client(settings) as client:
        limited = await client.get("/v1/items")
        live = await client.get("/health/live")
    assert limited.status_code == status
    assert live.status_code == 200


async def test_service_recovers_by_itself_when_redis_returns(make_settings, throwaway_redis):
    settings = make_settings(
        redis_url=throwaway_redis.url,
        ratelimit_outage_policy="fail-closed",
        redis_retry_interval_seconds=0.2,
    )
    async with running_client(settings) as client:
        throwaway_redis.stop()
        assert (await client.get("/v1/items")).status_code == 503
        throwaway_redis.start()  # same port, empty dataset, no scripts loaded
        await asyncio.sleep(0.3)
        after = [(await client.get("/v1/items")).status_code for _ in range(6)]
        ready = await client.get("/health/ready")
    assert after == [200] * 5 + [429]
    assert ready.status_code == 200
    keys = redis.Redis(port=throwaway_redis.port).keys("*")  # its own server: KEYS is fine here
    assert keys, "counts must be back in Redis"


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a hung Redis."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


async def test_a_redis_that_never_answers_costs_a_bounded_delay(make_settings, silent_redis):
    settings = make_settings(
        redis_url=silent_redis,
        ratelimit_outage_policy="fail-open",
        redis_timeout_seconds=0.2,
        redis_retry_interval_seconds=5,
    )
    async with running_client(settings) as client:
        started = time.monotonic()
        first = await client.get("/v1/items")  # one late reply: Redis is only suspect
        first_took = time.monotonic() - started
        started = time.monotonic()
        second = await client.get("/v1/items")  # a second, sent after it: an outage
        second_took = time.monotonic() - started
        started = time.monotonic()
        following = [await client.get("/v1/items") for _ in range(3)]
        following_took = time.monotonic() - started
        started = time.monotonic()
        live = await client.get("/health/live")
        live_took = time.monotonic() - started
        started = time.monotonic()
        ready = await client.get("/health/ready")
        ready_took = time.monotonic() - started
    assert first.status_code == 200  # fail-open, after one read timeout (0.2 s)
    assert first_took < 0.6
    assert second.status_code == 200 and second_took < 0.6
    # Until the retry interval passes, requests skip Redis instead of waiting on it again.
    assert [r.status_code for r in following] == [200] * 3 and following_took < 0.2
    assert live.status_code == 200 and live_took < 0.1
    assert ready.status_code == 503 and ready_took < 0.6


async def test_lua_scripts_are_loaded_again_after_script_flush(make_settings, throwaway_redis):
    settings = make_settings(redis_url=throwaway_redis.url)
    async with running_client(settings) as client:
        before = [(await client.get("/v1/items")).status_code for _ in range(2)]
        errors_before = storage_errors((await client.get("/metrics")).text)
        redis.Redis(port=throwaway_redis.port).script_flush()  # as after a Redis restart
        after = [(await client.get("/v1/items")).status_code for _ in range(4)]
        errors_after = storage_errors((await client.get("/metrics")).text)
    assert before + after == [200] * 5 + [429]  # still counted in Redis, exactly
    assert errors_after == errors_before  # redis-py reloaded the scripts: no fallback


async def test_storage_errors_count_failed_calls_and_a_gauge_says_down_then_up(
    make_settings, throwaway_redis
):
    settings = make_settings(
        redis_url=throwaway_redis.url,
        ratelimit_outage_policy="fail-open",
        redis_retry_interval_seconds=0.3,
    )
    up = "ratelimit_storage_up"
    async with running_client(settings) as client:
        assert (await client.get("/v1/items")).status_code == 200
        before = (await client.get("/metrics")).text
        throwaway_redis.stop()
        # Twenty requests in one event-loop tick: one batched Redis call, which fails once.
        burst = await asyncio.gather(*(client.get("/v1/items/7") for _ in range(20)))
        during = (await client.get("/metrics")).text
        throwaway_redis.start()
        await asyncio.sleep(0.4)
        assert (await client.get("/v1/items")).status_code == 200
        after = (await client.get("/metrics")).text
    assert {r.status_code for r in burst} <= {404, 429}  # served by the fallback, no 5xx
    assert storage_errors(during) - storage_errors(before) == 1
    assert storage_errors(during, "connection") - storage_errors(before, "connection") == 1
    assert metric(before, up) == 1 and metric(during, up) == 0 and metric(after, up) == 1


async def test_a_refusal_remembered_in_memory_does_not_claim_redis_is_back(
    make_settings, throwaway_redis, caplog
):
    settings = make_settings(
        redis_url=throwaway_redis.url,
        ratelimit_outage_policy="fail-open",
        redis_retry_interval_seconds=0.2,
    )
    async with running_client(settings) as client:
        for _ in range(6):  # the sixth is refused by Redis, and remembered here until reset
            await client.get("/v1/items")
        throwaway_redis.stop()
        await client.get("/v1/items/1")  # a real call fails: the outage starts
        await asyncio.sleep(0.3)  # the retry interval passes: the next call may probe Redis
        caplog.clear()
        remembered = await client.get("/v1/items")  # answered from memory, no Redis call
        messages = [record.getMessage() for record in caplog.records]
    assert remembered.status_code == 429
    assert not [m for m in messages if "is back" in m], messages
