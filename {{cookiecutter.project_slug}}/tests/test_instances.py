"""Every instance counts in the same Redis, so a caller has one budget however it is routed."""

import asyncio

import httpx

from .conftest import running_client


async def test_two_instances_share_one_budget(make_settings):
    settings = make_settings(anonymous_limit="10/minute")
    async with running_client(settings) as first, running_client(settings) as second:
        responses = await asyncio.gather(
            *(client.get("/v1/items") for client in [first, second] * 20)
        )
    assert sum(r.status_code == 200 for r in responses) == 10
    assert sum(r.status_code == 429 for r in responses) == 30


async def test_two_uvicorn_processes_share_one_budget(start_uvicorn, redis_url, key_prefix):
    env = {
        "REDIS_URL": redis_url,
        "RATELIMIT_KEY_PREFIX": key_prefix,
        "ANONYMOUS_LIMIT": "25/minute",
    }
    servers = [start_uvicorn(**env), start_uvicorn(**env)]
    async with httpx.AsyncClient(timeout=10) as client:
        responses = await asyncio.gather(
            *(client.get(f"{server}/v1/items") for server in servers * 50)
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 25
    assert statuses.count(429) == 75
