"""How limits are counted in Redis: one script call per request, all or nothing, and floods
over the limit answered from memory. Counted on a Redis of the test's own."""

import asyncio

import pytest
import redis

from {{ cookiecutter.package_name }}.settings import STRATEGIES

from .conftest import running_client, set_plan


def script_calls(port: int) -> int:
    stats = redis.Redis(port=port).info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


async def test_each_request_costs_one_script_call_whatever_its_limits(
    make_settings, throwaway_redis, database_url
):
    await set_plan(database_url, "anonymous", "100/minute;1000/hour")
    async with running_client(make_settings(redis_url=throwaway_redis.url)) as client:
        await client.get("/v1/items")  # loads the script
        before = script_calls(throwaway_redis.port)
        # Three limits on this route (two windows of the plan, and its own): one call each.
        posts = await asyncio.gather(
            *(client.post("/v1/items", json={"name": "n"}) for _ in range(8))
        )
        gets = [await client.get("/v1/items") for _ in range(8)]
        calls = script_calls(throwaway_redis.port) - before
    assert {r.status_code for r in posts} == {201} and {r.status_code for r in gets} == {200}
    assert calls == 16


@pytest.mark.parametrize("where", ["redis", "memory"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_refused_request_consumes_none_of_its_other_limits(
    make_settings, database_url, strategy, where
):
    # In memory: no REDIS_URL (the embedded default), as the fail-open fallback counts too.
    await set_plan(database_url, "anonymous", "100/minute")
    overrides = {"redis_url": ""} if where == "memory" else {}
    async with running_client(make_settings(ratelimit_strategy=strategy, **overrides)) as client:
        posts = [await client.post("/v1/items", json={"name": "n"}) for _ in range(12)]
        listing = await client.get("/v1/items")  # the same route template, so the same plan budget
    assert [r.status_code for r in posts] == [201] * 10 + [429] * 2
    # 10 admitted posts and this request: the 2 refused posts did not count against the plan.
    assert listing.headers["x-ratelimit-remaining"] == "89"


async def test_a_flood_over_the_limit_is_refused_without_asking_redis(
    make_settings, throwaway_redis
):
    async with running_client(make_settings(redis_url=throwaway_redis.url)) as client:
        admitted = [(await client.get("/v1/items")).status_code for _ in range(5)]
        first_refusal = await client.get("/v1/items")
        before = script_calls(throwaway_redis.port)
        flood = [await client.get("/v1/items") for _ in range(50)]
        calls = script_calls(throwaway_redis.port) - before
    assert admitted == [200] * 5 and first_refusal.status_code == 429
    assert {r.status_code for r in flood} == {429}
    assert calls == 0
    last = flood[-1]
    assert int(last.headers["retry-after"]) <= int(first_refusal.headers["retry-after"])
    assert last.headers["x-ratelimit-reset"] == first_refusal.headers["x-ratelimit-reset"]
    assert last.headers["ratelimit-policy"] == '"anonymous";q=5;w=60'


async def test_a_large_moving_window_limit_is_counted_without_an_entry_per_hit(
    make_settings, throwaway_redis, database_url
):
    # RATELIMIT_MOVING_WINDOW_MAX_HITS: up to it a limit is an exact moving window (a sorted
    # set, one entry per hit); above it, two counters whatever the traffic.
    await set_plan(database_url, "anonymous", "5/minute;50/hour")
    settings = make_settings(
        redis_url=throwaway_redis.url,
        ratelimit_strategy="moving-window",
        ratelimit_moving_window_max_hits=10,
    )
    async with running_client(settings) as client:
        statuses = [(await client.get("/v1/items")).status_code for _ in range(7)]
    server = redis.Redis(port=throwaway_redis.port)
    kinds = {key.decode(): server.type(key) for key in server.scan_iter()}
    assert statuses == [200] * 5 + [429] * 2
    per_minute = [kind for name, kind in kinds.items() if "5/1minute" in name]
    per_hour = [kind for name, kind in kinds.items() if "50/1hour" in name]
    assert per_minute == [b"zset"]  # exact: 5 entries
    assert per_hour and set(per_hour) == {b"string"}  # the sliding window counter's counts
