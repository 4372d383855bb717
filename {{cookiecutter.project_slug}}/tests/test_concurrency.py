"""@limiter.concurrency(N): at most N of one caller's requests in flight on a route, across
every instance; the slot is held until the response is done (streaming included), freed when
the client goes away, and expires when the instance holding it dies."""

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx
import redis

from {{ cookiecutter.package_name }}.main import create_app

from .conftest import running_client, set_plan
from .slow_app import IN_FLIGHT, router

POLICY = f'"concurrency";q={IN_FLIGHT};qu="concurrent-requests"'


def app_with_slow_routes(settings):
    app = create_app(settings)
    app.include_router(router)
    return app


async def test_at_most_n_in_flight_then_429_with_retry_after_1(make_settings, database_url):
    await set_plan(database_url, "anonymous", "100/minute")
    settings = make_settings()
    app = app_with_slow_routes(settings)
    async with running_client(settings, app=app) as client:
        first = await asyncio.gather(*(client.get("/slow?seconds=0.5") for _ in range(5)))
        again = await asyncio.gather(*(client.get("/slow?seconds=0.1") for _ in range(2)))
    statuses = sorted(r.status_code for r in first)
    assert statuses == [200] * IN_FLIGHT + [429] * (5 - IN_FLIGHT)
    refused = next(r for r in first if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert POLICY in refused.headers["ratelimit-policy"]
    assert refused.headers["ratelimit"] == '"concurrency";r=0;t=1'
    assert refused.json()["detail"].startswith("Too many concurrent requests")
    served = next(r for r in first if r.status_code == 200)
    assert POLICY in served.headers["ratelimit-policy"]
    assert served.headers["ratelimit"].startswith('"anonymous";')  # the window, not the slots
    # Every slot came back: the next ones are admitted.
    assert [r.status_code for r in again] == [200, 200]


async def test_two_instances_share_the_slots(make_settings, database_url):
    await set_plan(database_url, "anonymous", "100/minute")
    settings = make_settings()
    async with (
        running_client(settings, app=app_with_slow_routes(settings)) as first,
        running_client(settings, app=app_with_slow_routes(settings)) as second,
    ):
        responses = await asyncio.gather(
            *(client.get("/slow?seconds=0.5") for client in [first, second] * 3)
        )
    assert sorted(r.status_code for r in responses) == [200] * IN_FLIGHT + [429] * 4


async def statuses_within(
    attempt: Callable[[], Awaitable[list[int]]], wanted: list[int], seconds: float = 5
) -> list[int]:
    """The statuses `attempt()` answers once they are `wanted`, or its last ones after
    `seconds`. A slot is given back a moment after the client saw its response end (the
    server's own Redis call, after the last byte), so a test asks again rather than once and
    hoping; 5 s stay far below the 30 s lease that would free the slot anyway."""
    deadline = time.monotonic() + seconds
    statuses = await attempt()
    while statuses != wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        statuses = await attempt()
    return statuses


def start_slow_app(start_uvicorn, redis_url, key_prefix, database_url, **env: str) -> str:
    return start_uvicorn(
        "tests.slow_app:app",
        REDIS_URL=redis_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        DATABASE_URL=database_url,
        **env,
    )


async def test_a_streaming_response_holds_its_slot_until_its_last_byte(
    start_uvicorn, redis_url, key_prefix, database_url
):
    await set_plan(database_url, "anonymous", "100/minute")
    server = start_slow_app(start_uvicorn, redis_url, key_prefix, database_url)
    async with httpx.AsyncClient(timeout=10) as client:
        streams = [client.stream("GET", f"{server}/slow-stream?chunks=5") for _ in range(IN_FLIGHT)]
        opened = [await stream.__aenter__() for stream in streams]  # headers read, body not
        assert [r.status_code for r in opened] == [200] * IN_FLIGHT
        assert (await client.get(f"{server}/slow-stream?chunks=1")).status_code == 429
        for stream, response in zip(streams, opened, strict=True):
            assert len(await response.aread()) == 5 * 1024
            await stream.__aexit__(None, None, None)

        async def one() -> list[int]:
            return [(await client.get(f"{server}/slow-stream?chunks=1")).status_code]

        assert await statuses_within(one, [200]) == [200]


async def test_a_client_that_goes_away_frees_its_slot(
    start_uvicorn, redis_url, key_prefix, database_url
):
    await set_plan(database_url, "anonymous", "100/minute")
    server = start_slow_app(start_uvicorn, redis_url, key_prefix, database_url)
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(IN_FLIGHT):  # each stream is dropped after its first chunk
            async with client.stream("GET", f"{server}/slow-stream?chunks=600") as response:
                assert response.status_code == 200
                async for _ in response.aiter_bytes():
                    break

        async def all_at_once() -> list[int]:  # the server notices on its next write
            answers = await asyncio.gather(
                *(client.get(f"{server}/slow?seconds=0.2") for _ in range(IN_FLIGHT))
            )
            return [answer.status_code for answer in answers]

        again = await statuses_within(all_at_once, [200] * IN_FLIGHT)
    assert again == [200] * IN_FLIGHT


async def test_n_in_flight_across_two_processes_and_none_leaked_after_kill_9(
    start_uvicorn, redis_url, key_prefix, database_url
):
    await set_plan(database_url, "anonymous", "1000/minute")
    env = {"RATELIMIT_CONCURRENCY_LEASE_SECONDS": "2"}
    servers = [
        start_slow_app(start_uvicorn, redis_url, key_prefix, database_url, **env) for _ in range(2)
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        # Across both processes at once: IN_FLIGHT admitted, however the requests are spread.
        responses = await asyncio.gather(
            *(client.get(f"{server}/slow?seconds=1") for server in servers * 4)
        )
        assert sorted(r.status_code for r in responses) == [200] * IN_FLIGHT + [429] * 6

        # The first process takes every slot for a long time, and is killed holding them.
        victim = servers[0]
        held = [
            asyncio.ensure_future(client.get(f"{victim}/slow?seconds=60")) for _ in range(IN_FLIGHT)
        ]
        await wait_for_slots(redis_url, key_prefix, IN_FLIGHT, "the held requests' slots")
        assert (await client.get(f"{servers[1]}/slow?seconds=0")).status_code == 429
        os.kill(start_uvicorn.processes[victim].pid, signal.SIGKILL)
        await asyncio.gather(*held, return_exceptions=True)
        # The slots expire with their lease (2 s here): then the other process admits again.
        deadline = time.monotonic() + 5
        while (await client.get(f"{servers[1]}/slow?seconds=0")).status_code == 429:
            assert time.monotonic() < deadline, "slots of the killed instance never expired"
            await asyncio.sleep(0.2)
        again = await asyncio.gather(
            *(client.get(f"{servers[1]}/slow?seconds=0.5") for _ in range(IN_FLIGHT + 1))
        )
    assert sorted(r.status_code for r in again) == [200] * IN_FLIGHT + [429]


async def test_a_request_longer_than_the_lease_keeps_its_slot(
    start_uvicorn, redis_url, key_prefix, database_url
):
    # The instance renews the leases of its requests in flight: a slow response is not robbed
    # of its slot when its first lease runs out.
    await set_plan(database_url, "anonymous", "100/minute")
    env = {"RATELIMIT_CONCURRENCY_LEASE_SECONDS": "1"}
    server = start_slow_app(start_uvicorn, redis_url, key_prefix, database_url, **env)
    async with httpx.AsyncClient(timeout=30) as client:
        held = [
            asyncio.ensure_future(client.get(f"{server}/slow?seconds=3.5"))
            for _ in range(IN_FLIGHT)
        ]
        await asyncio.sleep(2.5)  # two and a half leases later
        late = await client.get(f"{server}/slow?seconds=0")
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * IN_FLIGHT
    assert late.status_code == 429


def in_flight(redis_url: str, key_prefix: str) -> int:
    """The slots held now, read from the counters (probing with requests would spend the
    plan's budget, and take slots themselves)."""
    store = redis.Redis.from_url(redis_url)
    try:
        seconds, micros = store.time()
        now = seconds * 1000 + micros // 1000
        keys = store.scan_iter(match=f"{key_prefix}:*:concurrency:*")
        return sum(store.zcount(key, f"({now}", "+inf") for key in keys)
    finally:
        store.close()


async def wait_for_slots(
    redis_url: str, key_prefix: str, count: int, what: str, within: float = 10
) -> None:
    deadline = time.monotonic() + within
    while in_flight(redis_url, key_prefix) != count:
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_cancelled_request_frees_its_slot_at_once(
    make_settings, database_url, redis_url, key_prefix
):
    # The lease is 30 s: only an immediate release lets the next requests in. Cancelled the
    # way anyio (Starlette's task groups, a client's timeout) cancels: again at every await
    # until the cancelled code leaves the scope, so the release itself must be shielded.
    await set_plan(database_url, "anonymous", "100/minute")
    settings = make_settings()
    scopes: list[anyio.CancelScope] = []

    async def slow(client: httpx.AsyncClient) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await client.get("/slow?seconds=30")

    async with running_client(settings, app=app_with_slow_routes(settings)) as client:
        held = [asyncio.ensure_future(slow(client)) for _ in range(IN_FLIGHT)]
        await wait_for_slots(redis_url, key_prefix, IN_FLIGHT, "the slow requests' slots")
        for scope in scopes:
            scope.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        # Released in the background (shielded): within a moment, not a 30 s lease.
        await wait_for_slots(redis_url, key_prefix, 0, "the slots to be released", within=3)
        again = await asyncio.gather(*(client.get("/slow?seconds=0") for _ in range(IN_FLIGHT)))
    assert [r.status_code for r in again] == [200] * IN_FLIGHT


async def test_a_slot_that_expired_while_its_instance_stalled_is_not_renewed(
    start_uvicorn, redis_url, key_prefix, database_url
):
    # An instance stalled (SIGSTOP) longer than a lease loses its slots to other requests; when
    # it wakes up, renewing its leases must not take them back behind their backs.
    await set_plan(database_url, "anonymous", "1000/minute")
    env = {"RATELIMIT_CONCURRENCY_LEASE_SECONDS": "1"}
    stalled, other = (
        start_slow_app(start_uvicorn, redis_url, key_prefix, database_url, **env) for _ in range(2)
    )
    pid = start_uvicorn.processes[stalled].pid
    async with httpx.AsyncClient(timeout=30) as client:
        held = [
            asyncio.ensure_future(client.get(f"{stalled}/slow?seconds=4")) for _ in range(IN_FLIGHT)
        ]
        await wait_for_slots(redis_url, key_prefix, IN_FLIGHT, "the stalled instance's slots")
        os.kill(pid, signal.SIGSTOP)
        try:
            await wait_for_slots(redis_url, key_prefix, 0, "its leases to run out")
            taken = [
                asyncio.ensure_future(client.get(f"{other}/slow?seconds=1.5"))
                for _ in range(IN_FLIGHT)
            ]
            await wait_for_slots(redis_url, key_prefix, IN_FLIGHT, "the other instance's slots")
        finally:
            os.kill(pid, signal.SIGCONT)
        # Awake: it renews its leases at once (its renewal timer is overdue), while its own
        # requests still run for seconds.
        deadline = time.monotonic() + 5
        while (await client.get(f"{stalled}/health/live")).status_code != 200:
            assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
        assert in_flight(redis_url, key_prefix) == IN_FLIGHT
        assert [r.status_code for r in await asyncio.gather(*taken)] == [200] * IN_FLIGHT
        after = await asyncio.gather(*(client.get(f"{other}/slow?seconds=0") for _ in range(2)))
        await asyncio.gather(*held, return_exceptions=True)
    assert [r.status_code for r in after] == [200] * IN_FLIGHT
