"""Every instance counts in the same Redis, so a caller has one budget however it is routed."""

import asyncio

import httpx

from .conftest import running_client, set_plan


async def test_two_instances_share_one_budget(make_settings, database_url):
    await set_plan(database_url, "anonymous", "10/minute")
    settings = make_settings()
    async with running_client(settings) as first, running_client(settings) as second:
        responses = await asyncio.gather(
            *(client.get("/v1/items") for client in [first, second] * 20)
        )
    assert sum(r.status_code == 200 for r in responses) == 10
    assert sum(r.status_code == 429 for r in responses) == 30


async def test_a_burst_beyond_the_connection_pool_is_still_counted_exactly(
    make_settings, database_url
):
    # More concurrent requests than Redis connections must queue, not fail over to the
    # per-process fallback (which would admit another full budget).
    await set_plan(database_url, "anonymous", "20/minute")
    settings = make_settings(redis_max_connections=4)
    async with running_client(settings) as client:
        responses = await asyncio.gather(*(client.get("/v1/items") for _ in range(200)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20
    assert statuses.count(429) == 180


async def test_two_uvicorn_processes_share_one_budget(
    start_uvicorn, redis_url, key_prefix, database_url
):
    await set_plan(database_url, "anonymous", "100/minute")
    env = {"REDIS_URL": redis_url, "RATELIMIT_KEY_PREFIX": key_prefix, "DATABASE_URL": database_url}
    servers = [start_uvicorn(**env), start_uvicorn(**env)]
    limits = httpx.Limits(max_connections=400)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        responses = await asyncio.gather(
            *(client.get(f"{server}/v1/items") for server in servers * 200)
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 100
    assert statuses.count(429) == 300
