"""What the plan cache promises, proven by counting the database reads the app's engine makes
(count_statements, conftest.py): the same answers from a cache that reads every time would
prove nothing."""

import asyncio
import secrets
import time

from {{cookiecutter.package_name}}.main import create_app

from .conftest import count_statements, create_key, running_client, set_plan
from .test_hostile import write_limits_as_plain_sql

TTL = 1.0


def key_reads(statements: list[str]) -> int:
    return sum("api_keys" in statement for statement in statements)


async def test_an_unknown_key_id_is_read_once_per_ttl(make_settings):
    settings = make_settings(plan_cache_ttl_seconds=TTL)
    app = create_app(settings)
    guessed = f"sk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    async with running_client(settings, app=app) as client:
        statements = count_statements(app)
        started = time.monotonic()
        first = [await client.get("/v1/items", headers={"X-API-Key": guessed}) for _ in range(5)]
        within_ttl = time.monotonic() - started < TTL
        reads_within = key_reads(statements)
        await asyncio.sleep(TTL + 0.1)
        again = await client.get("/v1/items", headers={"X-API-Key": guessed})
    assert {r.status_code for r in [*first, again]} == {401}
    assert within_ttl, "the machine was too slow to send 5 requests within the TTL"
    assert reads_within == 1  # the repeats were answered by the negative cache
    assert key_reads(statements) == 2  # and read again once its TTL passed


async def test_a_bad_plan_row_served_from_its_last_good_version_is_read_once_per_ttl(
    make_settings, database_url
):
    await set_plan(database_url, "free", "1000/minute")
    key = await create_key(database_url, "free")
    settings = make_settings(plan_cache_ttl_seconds=TTL)
    app = create_app(settings)
    async with running_client(settings, app=app) as client:
        assert (await client.get("/v1/items", headers={"X-API-Key": key})).status_code == 200
        await write_limits_as_plain_sql(database_url, "free", "10/fortnight")
        statements = count_statements(app)
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < 2.5 * TTL:
            answers.append((await client.get("/v1/items", headers={"X-API-Key": key})).status_code)
            await asyncio.sleep(0.05)
    assert set(answers) == {200}  # its last good limits
    assert len(answers) >= 10
    # 2.5 TTLs: read at most three times, however many requests came.
    assert 1 <= key_reads(statements) <= 3, statements
