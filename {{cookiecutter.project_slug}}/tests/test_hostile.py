"""Hostile data and key guessing: a plan row the service cannot read is never a 500, failed
authentications are limited per address, and guessed key ids cannot push real keys out."""

import asyncio
import logging
import secrets

import asyncpg
import pytest

from {{ cookiecutter.package_name }}.plans.plan import parse_limits

from .conftest import _asyncpg_dsn, create_key, metric, running_client, set_plan

GOOD_LIMITS = ["60/minute", "10 per second;1000/day", "5/2 hours, 100/day", "1/MINUTES", "7/day"]
BAD_LIMITS = ["10/fortnight", "0/minute", "10/0 minute", "", "60/minute;", "abc", "1.5/hour"]
# The grammar's bounds (plans/grammar.py), on both sides of each: 10 years, 10**9 hits.
GOOD_LIMITS += ["1000000000/10 years", "1/3600 days", "5/311040000 seconds", "1/0120 months"]
BAD_LIMITS += [
    "10/9999999999 years",
    "99999999999999999999999/minute",
    "1000000001/second",
    "10/11 years",
    "1/3601 days",
    "5/311040001 seconds",
    "60/minute;1/121 months",
]


async def sql(url: str, statement: str, *args: object) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


async def write_limits_as_plain_sql(url: str, plan: str, limits: str) -> None:
    """What an operator's UPDATE does on a database migrated before the CHECK constraint."""
    await sql(url, "ALTER TABLE plans DROP CONSTRAINT IF EXISTS ck_plans_limits_grammar")
    await sql(url, "UPDATE plans SET limits = $1 WHERE name = $2", limits, plan)


def readable(limits: str) -> bool:
    try:
        parse_limits(limits)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("limits", GOOD_LIMITS + BAD_LIMITS)
async def test_the_database_refuses_exactly_the_limits_the_service_cannot_read(
    database_url, limits
):
    try:
        await sql(database_url, "UPDATE plans SET limits = $1 WHERE name = 'free'", limits)
        stored = True
    except asyncpg.CheckViolationError:
        stored = False
    assert stored == readable(limits) == (limits in GOOD_LIMITS)


async def test_a_plan_row_the_service_cannot_read_is_a_503_for_its_callers_only(
    make_settings, database_url, caplog
):
    caplog.set_level(logging.INFO)
    free = await create_key(database_url, "free")
    pro = await create_key(database_url, "pro")
    await write_limits_as_plain_sql(database_url, "free", "10/fortnight")
    async with running_client(make_settings()) as client:  # start-up carries on
        refused = [await client.get("/v1/items", headers={"X-API-Key": free}) for _ in range(3)]
        served = await client.get("/v1/items", headers={"X-API-Key": pro})
        anonymous = await client.get("/v1/items")
        scraped = (await client.get("/metrics")).text
    assert {r.status_code for r in refused} == {503}
    assert refused[0].headers["content-type"] == "application/problem+json"
    assert int(refused[0].headers["retry-after"]) >= 1
    assert served.status_code == 200 and anonymous.status_code == 200
    reports = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(reports) == 1 and "'free'" in reports[0] and "10/fortnight" in reports[0]
    assert metric(scraped, "plan_config_errors_total", plan="free") >= 1


async def test_a_cached_plan_keeps_its_last_good_limits_when_its_row_goes_bad(
    make_settings, database_url
):
    await set_plan(database_url, "free", "4/minute")
    free = await create_key(database_url, "free")
    async with running_client(make_settings(plan_cache_ttl_seconds=0.2)) as client:
        before = await client.get("/v1/items", headers={"X-API-Key": free})
        await write_limits_as_plain_sql(database_url, "free", "10/fortnight")
        await asyncio.sleep(0.3)  # past the TTL: the row is read again, and cannot be
        after = await client.get("/v1/items", headers={"X-API-Key": free})
    assert before.status_code == 200 and after.status_code == 200
    assert after.headers["ratelimit-policy"] == '"free";q=4;w=60'
    assert after.headers["x-ratelimit-remaining"] == "2"


@pytest.mark.parametrize("storage", ["redis", "memory"])
async def test_failed_authentications_are_limited_per_address_before_any_database_work(
    make_settings, database_url, storage
):
    valid, cached = await create_key(database_url, "pro"), await create_key(database_url, "pro")
    settings = make_settings(
        auth_failure_limit="5/minute", **({"redis_url": None} if storage == "memory" else {})
    )
    async with running_client(settings, client_ip="203.0.113.66") as guesser:

        async def guess() -> object:
            return await guesser.get("/v1/items", headers={"X-API-Key": unknown_key()})

        async def lookups() -> float:  # each one a database query
            scraped = (await guesser.get("/metrics")).text
            return metric(scraped, "plan_cache_lookups_total", result="miss")

        before = await guesser.get("/v1/items", headers={"X-API-Key": cached})
        failures = [await guess() for _ in range(6)]
        misses = await lookups()
        later = [await guess() for _ in range(20)]
        with_a_valid_key = await guesser.get("/v1/items", headers={"X-API-Key": valid})
        with_a_cached_key = await guesser.get("/v1/items", headers={"X-API-Key": cached})
        misses_after = await lookups()
    async with running_client(settings, client_ip="203.0.113.67") as other:
        elsewhere = await other.get("/v1/items", headers={"X-API-Key": unknown_key()})
    assert before.status_code == 200
    assert [r.status_code for r in failures] == [401] * 5 + [429]
    refused = failures[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["policy"] == "auth-failures"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-policy"] == '"auth-failures";q=5;w=60'
    assert {r.status_code for r in later} == {429}
    # Every key from the refused address, valid or not, looked up before or not.
    assert with_a_valid_key.status_code == 429 and with_a_cached_key.status_code == 429
    assert with_a_valid_key.json()["policy"] == "auth-failures"
    assert misses_after == misses  # refused before the key was looked up
    assert elsewhere.status_code == 401  # another address has its own budget


@pytest.mark.parametrize("storage", ["redis", "memory"])
async def test_a_refused_address_is_served_again_once_its_refusal_ends(
    make_settings, database_url, storage
):
    valid = await create_key(database_url, "pro")
    settings = make_settings(
        auth_failure_limit="2/2 seconds", **({"redis_url": None} if storage == "memory" else {})
    )
    async with running_client(settings, client_ip="203.0.113.68") as client:
        failures = [
            await client.get("/v1/items", headers={"X-API-Key": unknown_key()}) for _ in range(3)
        ]
        refused = await client.get("/v1/items", headers={"X-API-Key": valid})
        await asyncio.sleep(float(refused.headers["retry-after"]) + 0.2)
        served = await client.get("/v1/items", headers={"X-API-Key": valid})
    assert [r.status_code for r in failures] == [401, 401, 429]
    assert refused.status_code == 429 and refused.json()["policy"] == "auth-failures"
    assert served.status_code == 200  # the screen ends with the refusal, not later


def unknown_key() -> str:
    """A well-formed key no one was given: its id is looked up, and not found."""
    return f"sk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


async def test_a_flood_of_unknown_key_ids_leaves_real_keys_served_through_an_outage(
    make_settings, database_url, database_proxy
):
    proxy, proxied_url = database_proxy
    valid = await create_key(database_url, "pro")
    settings = make_settings(
        database_url=proxied_url,
        plan_cache_ttl_seconds=0.3,
        plan_cache_max_entries=20,
        auth_failure_limit="100000/minute",
    )
    async with running_client(settings) as client:
        first = await client.get("/v1/items", headers={"X-API-Key": valid})
        flood = [
            await client.get("/v1/items", headers={"X-API-Key": unknown_key()}) for _ in range(60)
        ]
        await proxy.cut()  # Postgres unreachable
        await asyncio.sleep(0.4)  # past the TTL: only a cached entry can answer now
        during = await client.get("/v1/items", headers={"X-API-Key": valid})
    assert first.status_code == 200 and {r.status_code for r in flood} == {401}
    assert during.status_code == 200  # served stale: the flood did not evict it
