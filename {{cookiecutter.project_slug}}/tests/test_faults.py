"""The fault model (README, "When Redis fails"): only an unreachable Redis is an outage.

Messy faults, each against real Redis: a reply error from one caller's data, two algorithms on
one prefix, a busy event loop, a Redis that stalls and then runs its backlog late, a stall met
by a crowd of requests, and an evicting Redis. None of them may turn into 503s for everyone,
nor into silent over-admission. Each test would fail on a service that treats every failed
script call as "Redis is down" (the bug these tests exist for).
"""

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from {{ cookiecutter.package_name }}.ratelimit.service import StartupRefused
from {{ cookiecutter.package_name }}.settings import STRATEGIES

from .conftest import (
    RedisServers,
    create_key,
    free_port,
    metric,
    running_client,
    set_plan,
    storage_errors,
    wait_until,
)


def client_keys(redis_url: str, prefix: str, address: str) -> list[bytes]:
    """The counter keys of one anonymous caller (its address is its hash tag)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [
            key
            for key in client.scan_iter(match=f"{prefix}:*", count=1000)
            if address.encode() in key
        ]
    finally:
        client.close()


def log_lines(log: Path, containing: str) -> list[dict[str, Any]]:
    """The service's JSON log lines whose message contains `containing`."""
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [entry for entry in entries if containing in entry.get("message", "")]


@asynccontextmanager
async def as_client(client: httpx.AsyncClient, address: str) -> AsyncIterator[None]:
    """Requests of `client` come from `address` for the block."""
    transport = client._transport  # an ASGITransport: its client address is what the app sees
    saved = transport.client  # type: ignore[attr-defined]
    transport.client = (address, 50000)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        transport.client = saved  # type: ignore[attr-defined]


# 1. A reply error concerns the keys of its call only.


@pytest.mark.parametrize("policy", ["fail-open", "fail-closed"])
async def test_a_reply_error_of_one_caller_leaves_every_other_caller_on_redis(
    make_settings, redis_url, key_prefix, policy, caplog
):
    settings = make_settings(ratelimit_outage_policy=policy)
    victim, others = "203.0.113.66", ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    async with running_client(settings, client_ip=victim) as client:
        assert (await client.get("/v1/items")).status_code == 200
        # Bad data under the victim's keys: a string where the moving window keeps a sorted
        # set. Every script call for this caller now fails with WRONGTYPE.
        keys = client_keys(redis_url, key_prefix, victim)
        assert keys
        with redis.Redis.from_url(redis_url) as raw:
            for key in keys:
                raw.delete(key)
                raw.set(key, "garbage")
        before = (await client.get("/metrics")).text
        caplog.clear()
        victim_answers = [await client.get("/v1/items") for _ in range(8)]
        other_answers = []
        for address in others:
            async with as_client(client, address):
                other_answers.append(
                    [(await client.get("/v1/items")).status_code for _ in range(6)]
                )
        after = (await client.get("/metrics")).text
    # Everyone else is counted in Redis, exactly: 5/minute, then 429.
    assert other_answers == [[200] * 5 + [429]] * 3
    for address in others:
        assert client_keys(redis_url, key_prefix, address), "the others must count in Redis"
    # The victim alone gets the policy's answer: its own limits in memory, or a 503.
    if policy == "fail-open":
        assert [r.status_code for r in victim_answers] == [200] * 5 + [429] * 3
    else:
        assert [r.status_code for r in victim_answers] == [503] * 8
        body = victim_answers[0].json()
        assert victim_answers[0].headers["content-type"] == "application/problem+json"
        assert (
            "misconfigured" in body["detail"] and int(victim_answers[0].headers["retry-after"]) >= 1
        )
    assert metric(after, "ratelimit_storage_up") == 1  # Redis was never down
    assert storage_errors(after, "reply") - storage_errors(before, "reply") == 8
    assert storage_errors(after, "timeout", "connection", "server") == storage_errors(
        before, "timeout", "connection", "server"
    )
    refused = [r for r in caplog.records if "Redis refused to count" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]  # once, not once per request
    assert "WRONGTYPE" in refused[0].getMessage()
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]


# 2. Two algorithms never count one caller under one prefix.


async def test_a_second_algorithm_on_the_same_prefix_is_refused_at_start_up(make_settings):
    first = make_settings(ratelimit_strategy="moving-window")
    async with running_client(first) as client:
        answers = [(await client.get("/v1/items")).status_code for _ in range(6)]
        for other in (strategy for strategy in STRATEGIES if strategy != "moving-window"):
            with pytest.raises(
                StartupRefused, match=r"RATELIMIT_STRATEGY: .* RATELIMIT_KEY_PREFIX"
            ):
                async with running_client(make_settings(ratelimit_strategy=other)):
                    pass
        # The moving window itself with another exact threshold counts differently too.
        with pytest.raises(StartupRefused):
            async with running_client(
                make_settings(
                    ratelimit_strategy="moving-window", ratelimit_moving_window_max_hits=3
                )
            ):
                pass
        # More instances of the same algorithm start, and share the caller's one budget.
        async with running_client(make_settings(ratelimit_strategy="moving-window")) as second:
            shared = (await second.get("/v1/items")).status_code
    assert answers == [200] * 5 + [429]
    assert shared == 429


def test_a_second_algorithm_is_refused_by_the_server_in_one_line(
    start_uvicorn, database_url, redis_url, key_prefix
):
    settings = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    start_uvicorn(RATELIMIT_KEY_PREFIX=key_prefix, RATELIMIT_STRATEGY="moving-window", **settings)
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "{{ cookiecutter.package_name }}.main:app",
         "--port", str(free_port())],
        env={**os.environ, **settings, "RATELIMIT_KEY_PREFIX": key_prefix,
             "RATELIMIT_STRATEGY": "gcra"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "File " not in done.stderr, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "RATELIMIT_STRATEGY" in line]
    assert len(refusals) == 1, done.stderr
    assert json.loads(refusals[0])["message"].startswith(
        "RATELIMIT_STRATEGY: this instance counts with gcra, but instances counting with "
        "moving-window"
    )


async def test_counter_keys_name_their_algorithm(make_settings, redis_url, key_prefix):
    """Even where the start-up check could not run (Redis away then), no algorithm reads
    another's keys: each counts under names of its own."""
    names = {}
    for strategy in STRATEGIES:
        with redis.Redis.from_url(redis_url) as raw:
            raw.delete(f"{key_prefix}:algorithm")  # as if the other instances were gone
        address = f"198.51.100.{len(names) + 1}"
        async with running_client(
            make_settings(ratelimit_strategy=strategy), client_ip=address
        ) as client:
            assert (await client.get("/v1/items")).status_code == 200
        names[strategy] = client_keys(redis_url, key_prefix, address)
    for strategy, keys in names.items():
        assert keys and all(f":{strategy}:".encode() in key for key in keys), (strategy, keys)


# 3. A busy event loop is not a Redis outage.


def start_busy(start_uvicorn, database_url, key_prefix, log, **env: str) -> str:
    return start_uvicorn(
        app="tests.busy_app:app",
        stderr=log,
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        DATABASE_URL=database_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        RATELIMIT_STRATEGY="moving-window",
        REDIS_TIMEOUT_SECONDS="0.2",  # far below the loop's lag: a late timer must not count
        LOG_LEVEL="INFO",
        ACCESS_LOG="false",
        **env,
    )


@contextmanager
def cpu_flood(base_url: str, clients: int, headers: dict[str, str] | None = None) -> Iterator[None]:
    """CPU-heavy requests (tests/busy_app.py) back to back from `clients` threads."""
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=base_url, headers=headers or {}, timeout=30) as client:
            while not stop.is_set():
                with suppress(httpx.TransportError):
                    client.get("/v1/busy")

    threads = [threading.Thread(target=load) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def lag_seconds(client: httpx.Client) -> float:
    return metric(client.get("/metrics").text, "event_loop_lag_seconds")


def test_a_busy_event_loop_admits_exactly_and_never_declares_an_outage(
    start_uvicorn, database_url, key_prefix, tmp_path
):
    asyncio.run(set_plan(database_url, "anonymous", "1000000/minute"))
    asyncio.run(set_plan(database_url, "metered", "30/minute"))
    key = asyncio.run(create_key(database_url, "metered"))
    log = tmp_path / "service.log"
    # Shedding on at a high threshold: its probe measures the lag, and never sheds here.
    base_url = start_busy(
        start_uvicorn, database_url, key_prefix, log,
        RATELIMIT_OUTAGE_POLICY="fail-open", LOAD_SHEDDING_LAG_MS="60000",
    )  # fmt: skip
    statuses: list[int] = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        with cpu_flood(base_url, clients=24):
            # Later than the read timeout (0.2 s): what a late timer must not take for Redis.
            wait_until(lambda: lag_seconds(client) >= 0.25, 60, "the event loop to lag")

            async def keyed() -> list[int]:
                async with httpx.AsyncClient(base_url=base_url, timeout=30) as keyed_client:
                    headers = {"X-API-Key": key}
                    answers = await asyncio.gather(
                        *(keyed_client.get("/v1/items", headers=headers) for _ in range(40))
                    )
                    return [answer.status_code for answer in answers]

            statuses = asyncio.run(keyed())
        scraped = client.get("/metrics").text
    print(
        "FIG busy", statuses.count(200), storage_errors(scraped), len(log_lines(log, "unreachable"))
    )
    assert sorted(statuses) == [200] * 30 + [429] * 10  # exact: counted in Redis alone
    assert storage_errors(scraped) == 0
    assert metric(scraped, "ratelimit_storage_up") == 1
    assert not log_lines(log, "unreachable")
    assert "Future exception was never retrieved" not in log.read_text()


def test_under_fail_closed_a_cpu_flood_of_anonymous_callers_leaves_pro_served(
    start_uvicorn, database_url, key_prefix, tmp_path
):
    asyncio.run(set_plan(database_url, "anonymous", "1000000/minute"))
    asyncio.run(set_plan(database_url, "pro", "100000/minute"))
    pro_key = asyncio.run(create_key(database_url, "pro"))
    log = tmp_path / "service.log"
    base_url = start_busy(
        start_uvicorn, database_url, key_prefix, log,
        RATELIMIT_OUTAGE_POLICY="fail-closed", LOAD_SHEDDING_LAG_MS="100",
        LOAD_SHEDDING_MAX_PRIORITY="1",
    )  # fmt: skip
    pro: list[int] = []

    def pro_caller() -> None:
        with httpx.Client(base_url=base_url, headers={"X-API-Key": pro_key}, timeout=30) as own:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pro.append(own.get("/v1/items").status_code)

    with httpx.Client(base_url=base_url, timeout=30) as client:
        with cpu_flood(base_url, clients=24):
            wait_until(lambda: lag_seconds(client) >= 0.2, 60, "the event loop to lag")
            callers = [threading.Thread(target=pro_caller) for _ in range(4)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
        scraped = client.get("/metrics").text
    assert len(pro) >= 20
    assert pro.count(200) >= 0.99 * len(pro), pro
    assert storage_errors(scraped) == 0
    assert not log_lines(log, "unreachable")


# 4. A stalled Redis runs its backlog late: those scripts count nothing and take no slot.


class DelayingProxy:
    """A TCP proxy in front of Redis that holds the service's commands for `delay` seconds
    before passing them on: Redis then runs them late, after their callers gave up."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.delay = 0.0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, delayed: bool
        ) -> None:
            try:
                while data := await source.read(65536):
                    if delayed and self.delay:
                        # Held in order, as a stalled Redis holds them: each chunk its delay.
                        await asyncio.sleep(self.delay)
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[RedisServers]:
    servers = RedisServers(tmp_path)
    yield servers
    servers.stop_all()


async def test_calls_that_reach_redis_after_their_deadline_count_nothing(
    make_settings, redis_servers
):
    port = free_port()
    redis_servers.start(port)
    proxy = DelayingProxy(port)
    await proxy.start()
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{proxy.port}/0",
        ratelimit_outage_policy="fail-open",
        redis_timeout_seconds=0.3,
        redis_retry_interval_seconds=0.2,
    )
    try:
        async with running_client(settings, client_ip="203.0.113.77") as client:
            async with as_client(client, "203.0.113.78"):  # Redis learns the script
                assert (await client.get("/v1/items")).status_code == 200
            proxy.delay = 0.8
            during = [(await client.get("/v1/items")).status_code for _ in range(6)]
            await asyncio.sleep(1.5)  # every held call has reached Redis by now, and run
            proxy.delay = 0.0
            await asyncio.sleep(0.3)
            with redis.Redis(port=port) as raw:
                counted = sum(raw.zcard(key) for key in raw.scan_iter(match="*203.0.113.77*"))
    finally:
        await proxy.stop()
    # Decided in memory while Redis was late (fail-open), and not counted a second time by
    # the scripts that ran late.
    assert during == [200] * 5 + [429]
    assert counted == 0


def held_slots(raw: redis.Redis) -> int:
    """Concurrency slots held in this test's own Redis, by any caller."""
    return sum(raw.zcard(key) for key in raw.scan_iter(match="*:concurrency:*"))


def test_a_stall_leaves_no_concurrency_slot_behind(
    start_uvicorn, database_url, key_prefix, redis_servers, tmp_path
):
    port = free_port()
    redis_servers.start(port, "--enable-debug-command", "yes")
    log = tmp_path / "service.log"
    base_url = start_uvicorn(
        app="tests.slow_app:app",
        stderr=log,
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        DATABASE_URL=database_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        RATELIMIT_OUTAGE_POLICY="fail-closed",
        REDIS_TIMEOUT_SECONDS="0.3",
        REDIS_RETRY_INTERVAL_SECONDS="0.2",
        LOG_LEVEL="INFO",
    )
    raw = redis.Redis(port=port)

    def debug_sleep() -> None:
        with redis.Redis(port=port, socket_timeout=10) as sleeper:
            sleeper.execute_command("DEBUG", "SLEEP", "1.5")

    try:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            assert client.get("/slow", params={"seconds": 0}).status_code == 200
            stall = threading.Thread(target=debug_sleep)
            stall.start()
            time.sleep(0.1)  # Redis is asleep

            async def at_once() -> list[int]:  # all three reach Redis before any times out
                async with httpx.AsyncClient(base_url=base_url, timeout=10) as other:
                    answers = await asyncio.gather(
                        *(other.get("/slow", params={"seconds": 0}) for _ in range(3))
                    )
                    return [answer.status_code for answer in answers]

            stalled = asyncio.run(at_once())
            stall.join()
            # Redis runs the stalled scripts once awake: one that started after its deadline
            # takes no slot, and a slot one took before it (its answer lost in the stall) is
            # given back by the release sent when the answer was given up, which Redis runs
            # as soon as it is awake. Counted until none is left, within 5 s: far below the
            # 30 s lease that would free a forgotten slot anyway. (Read once after a fixed
            # sleep, a busy machine's late release was taken for a leak.)
            deadline = time.monotonic() + 5
            slots = held_slots(raw)
            while slots and time.monotonic() < deadline:
                time.sleep(0.1)
                slots = held_slots(raw)
            after = [client.get("/slow", params={"seconds": 0}).status_code for _ in range(4)]
    finally:
        raw.close()
    assert set(stalled) <= {503}, stalled  # fail-closed while Redis did not answer
    assert slots == 0
    assert after == [200] * 4  # no 429 for a slot nobody holds


# 5. A stalled Redis holds no request much past the timeout, however many wait.


def test_a_stalled_redis_holds_no_request_past_its_timeout(
    start_uvicorn, database_url, key_prefix, redis_servers, tmp_path
):
    asyncio.run(set_plan(database_url, "anonymous", "100000/minute"))
    port = free_port()
    redis_servers.start(port, "--enable-debug-command", "yes")
    log = tmp_path / "service.log"
    base_url = start_uvicorn(
        stderr=log,
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        DATABASE_URL=database_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        RATELIMIT_OUTAGE_POLICY="fail-closed",
        REDIS_TIMEOUT_SECONDS="0.5",
        REDIS_MAX_CONNECTIONS="4",  # far fewer than the requests: none may queue behind another
        LOG_LEVEL="INFO",
        ACCESS_LOG="false",
    )

    async def burst(count: int) -> list[int]:
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=base_url, timeout=20, limits=limits) as client:
            answers = await asyncio.gather(*(client.get("/v1/items") for _ in range(count)))
            return [answer.status_code for answer in answers]

    def slow_checks() -> float:
        """Checks that took more than a second, in the service's own histogram: the time a
        request waited for its limits, whatever the client's side of a busy machine adds."""
        scraped = httpx.get(f"{base_url}/metrics").text
        total = metric(scraped, "ratelimit_check_seconds_count")
        return total - metric(scraped, "ratelimit_check_seconds_bucket", le="1.0")

    assert set(asyncio.run(burst(60))) == {200}
    before = slow_checks()

    def debug_sleep() -> None:
        with redis.Redis(port=port, socket_timeout=10) as sleeper:
            sleeper.execute_command("DEBUG", "SLEEP", "3")

    sleeper = threading.Thread(target=debug_sleep)
    sleeper.start()
    time.sleep(0.1)
    stalled = asyncio.run(burst(120))
    sleeper.join()
    assert set(stalled) <= {200, 503}
    # The timeout (0.5 s), and the event loop's own delay under the burst: under a second.
    assert slow_checks() - before == 0
    assert "Future exception was never retrieved" not in log.read_text()


# 6. An evicting Redis is said at start-up.


@pytest.mark.parametrize(
    "args,may_evict",
    [
        (["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"], 1),
        (["--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl"], 1),
        (["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"], 0),
    ],
)
async def test_an_evicting_redis_is_warned_of_at_start_up(
    make_settings, redis_servers, args, may_evict, caplog
):
    port = free_port()
    redis_servers.start(port, *args)
    caplog.set_level(logging.WARNING)
    async with running_client(make_settings(redis_url=f"redis://127.0.0.1:{port}/0")) as client:
        scraped = (await client.get("/metrics")).text
    warnings = [r.getMessage() for r in caplog.records if "evicts keys" in r.getMessage()]
    assert metric(scraped, "ratelimit_storage_may_evict") == may_evict
    if may_evict:
        assert len(warnings) == 1 and args[-1] in warnings[0] and "noeviction" in warnings[0]
    else:
        assert not warnings


async def test_a_redis_that_denies_info_is_said_to_be_unchecked(
    make_settings, redis_servers, caplog
):
    port = free_port()
    # As managed Redis services deny commands: here INFO, for the service's user.
    redis_servers.start(port, "--user", "default", "on", "nopass", "~*", "+@all", "-info")
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0")
    async with running_client(settings) as client:
        served = (await client.get("/v1/items")).status_code
        scraped = (await client.get("/metrics")).text
    assert served == 200
    assert metric(scraped, "ratelimit_storage_may_evict") == -1
    assert [
        r for r in caplog.records if "Could not check Redis' maxmemory-policy" in r.getMessage()
    ]


def test_redis_in_compose_never_evicts_limiter_keys():
    compose = (Path(__file__).resolve().parents[1] / "compose.yaml").read_text()
    assert "--maxmemory-policy" in compose and "noeviction" in compose
