"""Every algorithm across a window edge and under steady traffic, in Redis (check.lua) and in
memory (the embedded default and the fail-open fallback).

The rule for a new algorithm or a change to one: test it here across a window edge (what is
refused just before capacity frees, what is admitted just after) and under steady traffic
across several windows, not only by a burst inside one window. A bug in how a window ends (an
expiry pushed back by every hit, the previous window weighed by the wrong share) only shows
when time moves. Windows are short (a second or two) so that crossing them costs little.
"""

import asyncio
import math
import time

import pytest

from {{ cookiecutter.package_name }}.settings import STRATEGIES

from .conftest import running_client, set_plan

STORAGES = ["redis", "memory"]
# Where time must pass (seconds a case): every algorithm in Redis, and in memory the one that
# is the service's own code (MemoryGcra); the others there are the `limits` library's.
TIMED = [(strategy, "redis") for strategy in STRATEGIES] + [("gcra", "memory")]


def settings_for(make_settings, strategy: str, storage: str):
    if storage == "memory":
        return make_settings(ratelimit_strategy=strategy, redis_url=None)
    return make_settings(ratelimit_strategy=strategy)


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def at_window_start(window: float, within: float = 0.1) -> None:
    """Wait until just after a boundary of the windows aligned on the epoch (the sliding
    window counter's, on the same clock as Redis' on this machine)."""
    while (time.time() % window) > within:
        await sleep_until((time.time() // window + 1) * window + 0.02)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_the_quota_endpoints_reset_is_the_next_requests_reset(
    strategy, storage, make_settings
):
    # GET /v1/rate-limit promises what the next request will be told. Two spent first, so that
    # no algorithm's reset depends on the moment of the call (an empty GCRA bucket's does).
    async with running_client(settings_for(make_settings, strategy, storage)) as client:
        for _ in range(2):
            assert (await client.get("/v1/items")).status_code == 200
        report = (await client.get("/v1/rate-limit")).json()
        following = await client.get("/v1/items")
    (quota,) = [quota for quota in report["quotas"] if quota["route"] == "/v1/items"]
    assert following.status_code == 200
    assert quota["remaining"] - 1 == int(following.headers["x-ratelimit-remaining"])
    # Integer seconds read against two clocks (Redis' and this process'): a second apart at
    # most. GCRA's peek was off by one emission interval, 12 s for the 5/minute here.
    assert abs(quota["reset"] - int(following.headers["x-ratelimit-reset"])) <= 1, (
        quota,
        dict(following.headers),
    )


@pytest.mark.parametrize(("strategy", "storage"), TIMED)
async def test_a_refusal_lasts_until_its_reset_and_steady_traffic_gets_the_rate(
    strategy, storage, make_settings, database_url
):
    await set_plan(database_url, "anonymous", "2/2 seconds")
    async with running_client(settings_for(make_settings, strategy, storage)) as client:
        statuses = [(await client.get("/v1/items")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = await client.get("/v1/items")
        reset = int(refused.headers["x-ratelimit-reset"])
        # Refusals spend nothing: asking again and again does not push the reset back.
        first_admitted = None
        while time.time() < reset + 1.0:
            asked = time.time()
            response = await client.get("/v1/items")
            if response.status_code == 200:
                first_admitted = asked
                break
            assert response.status_code == 429
            await asyncio.sleep(0.05)
    assert first_admitted is not None, f"still refused a second after its reset, {reset}"
    # reset is rounded up to a second: capacity came back within the second before it.
    assert reset - 1 - 0.05 <= first_admitted <= reset + 0.1, (first_admitted, reset)

    await set_plan(database_url, "anonymous", "5/second")
    async with running_client(settings_for(make_settings, strategy, storage)) as client:
        # Well under the rate, across windows: never refused.
        start = time.time()
        below = []
        for n in range(4):
            await sleep_until(start + n / 3)
            below.append((await client.get("/v1/items")).status_code)
        assert below == [200] * 4
        # Twice the rate for 1.5 s: about the rate admitted, by every algorithm (a fixed window
        # may admit up to twice its limit across an edge).
        start = time.time()
        over = []
        for n in range(15):
            await sleep_until(start + n / 10)
            over.append((await client.get("/v1/items")).status_code)
    assert set(over) <= {200, 429}
    assert 5 <= over.count(200) <= 12, over


async def test_a_fixed_windows_expiry_is_set_by_its_first_hit(make_settings, database_url):
    await set_plan(database_url, "anonymous", "3/second")
    async with running_client(make_settings(ratelimit_strategy="fixed-window")) as client:
        assert (await client.get("/v1/items")).status_code == 200
        opened = time.time()  # the window opened before this: it ends within a second
        await asyncio.sleep(0.6)
        later = [(await client.get("/v1/items")).status_code for _ in range(3)]
        await sleep_until(opened + 1.05)
        after = await client.get("/v1/items")
    assert later == [200, 200, 429]
    # Later hits do not push the window's end back: its first hit set it.
    assert after.status_code == 200, dict(after.headers)


async def test_the_sliding_window_counter_weighs_the_previous_window_by_its_share_left(
    make_settings, database_url
):
    # 10 hits in one window; just after the next begins, nearly all of the previous window
    # still overlaps the sliding window: ~9 of those hits still count, so only one or two
    # more are admitted (weighing by the share *elapsed* would count ~1 and admit ~9).
    await set_plan(database_url, "anonymous", "10/second")
    settings = make_settings(ratelimit_strategy="sliding-window-counter")
    async with running_client(settings) as client:
        for _ in range(5):  # a busy machine may straddle a boundary: then try again
            await at_window_start(1.0)
            began = time.time()
            burst = [(await client.get("/v1/items")).status_code for _ in range(10)]
            if math.floor(time.time()) != math.floor(began):
                await asyncio.sleep(1.1)  # let this attempt's counts leave the window
                continue
            assert burst == [200] * 10
            await sleep_until(math.floor(began) + 1.15)
            probe = [(await client.get("/v1/items")).status_code for _ in range(10)]
            ended = time.time()
            if math.floor(ended) == math.floor(began) + 1 and ended % 1 < 0.45:
                break
            await asyncio.sleep(1.1)
        else:
            pytest.fail("the machine was too busy to place 10 requests within 0.3 s, 5 times")
    admitted = probe.count(200)
    # At 0.15 to 0.45 of the new window, 8 to 5 of the 10 still count.
    assert 1 <= admitted <= 5, probe
