"""Defaults that keep the service safe: no secrets leaked, bounded input, opt-in exposure."""

import asyncio
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import redis

from .conftest import create_key, running_client, set_plan


async def test_api_keys_never_appear_in_logs_metrics_or_redis(
    make_settings, database_url, redis_url, key_prefix, caplog
):
    caplog.set_level(logging.DEBUG)
    await set_plan(database_url, "free", "2/minute")
    key = await create_key(database_url, "free")
    secret = key.split("_", 2)[2]
    async with running_client(make_settings()) as client:
        for _ in range(4):
            await client.get("/v1/items", headers={"Authorization": f"Bearer {key}"})
        await client.get("/v1/items", headers={"X-API-Key": key[:-1] + "x"})  # refused, logged
        metrics = (await client.get("/metrics")).text
    logged = "\n".join(record.getMessage() + repr(vars(record)) for record in caplog.records)
    stored = redis.Redis.from_url(redis_url).scan_iter(match=f"{key_prefix}:*")
    names = [name.decode() for name in stored]
    assert any(record.name == "ratelimit" for record in caplog.records)
    assert names, "the limits were counted in Redis"
    for where, text in [("logs", logged), ("metrics", metrics), ("redis", "\n".join(names))]:
        assert secret not in text, where
        assert key not in text, where


async def test_docs_are_served_unless_turned_off(make_settings):
    async with running_client(make_settings()) as client:
        served = [await client.get(path) for path in ("/docs", "/openapi.json")]
    async with running_client(make_settings(docs_enabled=False)) as client:
        hidden = [await client.get(path) for path in ("/docs", "/redoc", "/openapi.json")]
    assert [r.status_code for r in served] == [200, 200]
    assert [r.status_code for r in hidden] == [404, 404, 404]


async def test_cors_is_off_unless_origins_are_configured(make_settings):
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "GET",
    }
    async with running_client(make_settings()) as client:
        closed = await client.options("/v1/items", headers=preflight)
        plain = await client.get("/v1/items", headers={"Origin": "https://app.example"})
    settings = make_settings(cors_origins="https://app.example")
    async with running_client(settings) as client:
        opened = await client.options("/v1/items", headers=preflight)
        read = await client.get("/v1/items", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in closed.headers
    assert "access-control-allow-origin" not in plain.headers
    assert opened.headers["access-control-allow-origin"] == "https://app.example"
    exposed = read.headers["access-control-expose-headers"].lower()
    assert "ratelimit" in exposed and "retry-after" in exposed


async def test_an_oversized_body_is_a_413_that_costs_no_quota(make_settings):
    async with running_client(make_settings(max_body_size_bytes=1000)) as client:
        response = await client.post("/v1/items", content=b'{"name": "' + b"x" * 5000 + b'"}')
        created = await client.post("/v1/items", json={"name": "n"})
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert created.status_code == 201
    assert created.headers["x-ratelimit-remaining"] == "4"  # the first of the plan's 5


async def test_an_oversized_chunked_body_is_a_413(make_settings):
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    async with running_client(make_settings(max_body_size_bytes=1000)) as client:
        response = await client.post("/v1/items", content=chunks())
    assert response.status_code == 413


def test_oversized_headers_are_refused_with_a_431(
    start_uvicorn, redis_url, key_prefix, database_url
):
    base_url = start_uvicorn(
        REDIS_URL=redis_url, RATELIMIT_KEY_PREFIX=key_prefix, DATABASE_URL=database_url
    )
    response = httpx.get(f"{base_url}/v1/items", headers={"X-Filler": "x" * 200_000})
    assert response.status_code == 431
    assert response.headers["content-type"] == "application/problem+json"


# Every check schemathesis has; statuses documented, content types, headers, body schemas.
CONTRACT_CHECKS = "all"


@pytest.mark.parametrize(
    "caller", ["anonymous", "api-key", "redis-away-fail-closed", "shadow", "trusted-proxies"]
)
def test_the_api_answers_as_its_openapi_document_says(
    caller, request, start_uvicorn, redis_url, key_prefix, database_url, tmp_path
):
    """Schemathesis, with every check, over every operation: anonymous and with a key, with
    limits low enough that 429s come, fail-closed with Redis stopped (503s), in shadow mode
    and behind trusted proxies: every mode that changes the document runs it."""
    asyncio.run(set_plan(database_url, "anonymous", "30/minute"))
    asyncio.run(set_plan(database_url, "free", "30/minute"))
    env = {"REDIS_URL": redis_url, "RATELIMIT_KEY_PREFIX": key_prefix, "DATABASE_URL": database_url}
    options = []
    expected = {"2xx", "429"}
    if caller == "api-key":
        key = asyncio.run(create_key(database_url, "free"))
        options = ["--header", f"Authorization: Bearer {key}"]
    if caller == "shadow":  # nothing refuses, and the document says no quota headers come
        env |= {"RATELIMIT_MODE": "shadow"}
        expected = {"2xx"}
    if caller == "trusted-proxies":  # the document then lists 400 for a bad X-Forwarded-For
        env |= {"TRUSTED_PROXIES": "127.0.0.1"}
    if caller == "redis-away-fail-closed":
        redis_server = request.getfixturevalue("throwaway_redis")
        env |= {"REDIS_URL": redis_server.url, "RATELIMIT_OUTAGE_POLICY": "fail-closed"}
        expected = {"503"}
    base_url = start_uvicorn(**env)
    config = tmp_path / "schemathesis.toml"
    if caller == "redis-away-fail-closed":
        redis_server.stop()
        # 503 is this run's documented answer; any other 5xx is still a failure.
        config.write_text(
            '[checks.not_a_server_error]\nexpected-statuses = ["2xx", "3xx", "4xx", "503"]\n'
        )
    else:
        config.write_text("")
    fuzzed = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         f"{base_url}/openapi.json", "--checks", CONTRACT_CHECKS, "--max-examples", "25",
         "--seed", "1", "--workers", "1", *options],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )  # fmt: skip
    assert fuzzed.returncode == 0, fuzzed.stdout[-6000:]
    metrics = httpx.get(f"{base_url}/metrics").text
    counted = re.findall(r'^http_requests_total\{.*status="(\d)(\d\d)"\}', metrics, re.M)
    met = {f"{first}xx" if first == "2" else first + rest for first, rest in counted}
    assert expected <= met, f"the run never met {expected - met}"
