"""Accounts own the subscription: every key of an account spends one budget, on every instance;
rotating a key keeps it; moving or blocking the account reaches every instance within the plan
cache TTL; migration 0007 turns keys with owners into accounts and back."""

import asyncio
import uuid

import asyncpg
from alembic import command

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.migrations import alembic_config
from {{ cookiecutter.package_name }}.plans.keys import generate_key, hash_key

from .conftest import (
    TEST_DB_PREFIX,
    _admin,
    _asyncpg_dsn,
    _url_for,
    count_statements,
    create_account,
    create_key,
    revoke_key,
    run_cli,
    running_client,
    set_plan,
)
from .test_counting import script_calls


async def statuses(client, key: str, count: int, path: str = "/v1/items") -> list[int]:
    return [(await client.get(path, headers={"X-API-Key": key})).status_code for _ in range(count)]


async def test_two_keys_of_one_account_share_one_budget_across_two_instances(
    make_settings, database_url
):
    await set_plan(database_url, "pro", "10/minute")
    await create_account(database_url, "acme", "pro")
    first_key = await create_key(database_url, account="acme")
    second_key = await create_key(database_url, account="acme")
    other = await create_key(database_url, "pro")  # another account on the same plan
    settings = make_settings()
    async with running_client(settings) as first, running_client(settings) as second:
        responses = await asyncio.gather(
            *(
                client.get("/v1/items", headers={"X-API-Key": key})
                for _ in range(10)
                for client in (first, second)
                for key in (first_key, second_key)
            )
        )
        assert await statuses(second, other, 1) == [200]
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 30  # exactly the plan, all four ways
    assert {r.headers["ratelimit-policy"] for r in responses} == {'"pro";q=10;w=60'}


async def test_a_key_of_an_account_costs_no_query_and_one_redis_call_per_request(
    make_settings, throwaway_redis, database_url
):
    await set_plan(database_url, "pro", "1000/minute")
    await create_account(database_url, "acme", "pro")
    keys = [await create_key(database_url, account="acme") for _ in range(2)]
    await run_cli(database_url, "keys", "update", keys[1].split("_")[1], "--limits", "500/minute")
    settings = make_settings(redis_url=throwaway_redis.url)
    app = create_app(settings)
    async with running_client(settings, app=app) as client:
        for key in keys:  # each key read once, and the script loaded
            assert await statuses(client, key, 1) == [200]
        statements = count_statements(app)
        before = script_calls(throwaway_redis.port)
        answers = [await statuses(client, key, 10) for key in keys]
        calls = script_calls(throwaway_redis.port) - before
    assert answers == [[200] * 10, [200] * 10]
    assert statements == []  # the account and plan came from the cache
    # The key with limits of its own too: its counters and the account's in one call.
    assert calls == 20


async def test_a_rotated_key_keeps_the_accounts_budget(make_settings, database_url):
    await set_plan(database_url, "pro", "5/minute")
    await create_account(database_url, "acme", "pro")
    old = await create_key(database_url, account="acme")
    async with running_client(make_settings(plan_cache_ttl_seconds=0.5)) as client:
        assert await statuses(client, old, 3) == [200] * 3
        new = await create_key(database_url, account="acme")  # rotation: issue, then revoke
        await revoke_key(database_url, old)
        await asyncio.sleep(0.6)
        assert await statuses(client, old, 1) == [401]
        answers = [await client.get("/v1/items", headers={"X-API-Key": new}) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]  # the 2 the old key left
    assert answers[0].headers["x-ratelimit-remaining"] == "1"


async def test_moving_an_account_to_another_plan_takes_effect_within_the_ttl(
    make_settings, database_url
):
    await set_plan(database_url, "free", "3/minute")
    await set_plan(database_url, "pro", "10/minute")
    await create_account(database_url, "acme", "free")
    keys = [await create_key(database_url, account="acme") for _ in range(2)]
    settings = make_settings(plan_cache_ttl_seconds=0.5)
    async with running_client(settings) as first, running_client(settings) as second:
        assert await statuses(first, keys[0], 2) + await statuses(second, keys[1], 2) == [
            200, 200, 200, 429,
        ]  # fmt: skip
        code, stdout, stderr = await run_cli(database_url, "accounts", "move", "acme", "pro")
        assert code == 0 and "acme\tpro" in stdout and "PLAN_CACHE_TTL_SECONDS" in stderr
        await asyncio.sleep(0.6)
        moved = [
            await client.get("/v1/items", headers={"X-API-Key": key})
            for client, key in ((first, keys[0]), (second, keys[1]))
        ]
    assert [r.status_code for r in moved] == [200, 200]
    assert {r.headers["ratelimit-policy"] for r in moved} == {'"pro";q=10;w=60'}


async def test_a_blocked_account_refuses_every_key_on_every_instance_within_the_ttl(
    make_settings, database_url
):
    await create_account(database_url, "acme", "pro")
    keys = [await create_key(database_url, account="acme") for _ in range(2)]
    settings = make_settings(plan_cache_ttl_seconds=0.5)
    async with running_client(settings) as first, running_client(settings) as second:
        assert await statuses(first, keys[0], 1) + await statuses(second, keys[1], 1) == [200, 200]
        code, _, _ = await run_cli(database_url, "accounts", "block", "acme", "invoice 7 unpaid")
        assert code == 0
        await asyncio.sleep(0.6)
        refused = [
            await client.get("/v1/items", headers={"X-API-Key": key})
            for client in (first, second)
            for key in keys
        ]
        code, _, _ = await run_cli(database_url, "accounts", "unblock", "acme")
        assert code == 0
        await asyncio.sleep(0.6)
        served = await statuses(first, keys[0], 1) + await statuses(second, keys[1], 1)
    assert {r.status_code for r in refused} == {403}
    assert {r.json()["detail"] for r in refused} == {"This API key is blocked: invoice 7 unpaid"}
    assert served == [200, 200]


async def test_the_quota_endpoint_reports_the_accounts_budget_and_the_keys_own(
    make_settings, database_url
):
    await set_plan(database_url, "pro", "10/minute")
    await create_account(database_url, "acme", "pro")
    limited = await create_key(database_url, account="acme")
    mate = await create_key(database_url, account="acme")
    await run_cli(database_url, "keys", "update", limited.split("_")[1], "--limits", "4/minute")
    async with running_client(make_settings()) as client:
        assert await statuses(client, mate, 3) == [200] * 3
        mine = (await client.get("/v1/rate-limit", headers={"X-API-Key": limited})).json()
        theirs = (await client.get("/v1/rate-limit", headers={"X-API-Key": mate})).json()
        anonymous = (await client.get("/v1/rate-limit")).json()
    items = {(q["policy"], q["budget"]): q for q in mine["quotas"] if q["route"] == "/v1/items"}
    assert (mine["account"], mine["plan"]) == ("acme", "pro")
    assert set(items) == {("pro", "account"), ("key", "key")}
    assert items[("pro", "account")]["remaining"] == 7  # what the other key spent is gone
    assert items[("key", "key")]["remaining"] == 4 and items[("key", "key")]["limit"] == 4
    assert {(q["policy"], q["budget"]) for q in theirs["quotas"]} == {("pro", "account")}
    assert anonymous["account"] is None
    assert {q["budget"] for q in anonymous["quotas"]} == {"address"}


async def test_the_cli_shows_an_account_with_its_keys_and_refuses_bad_input(database_url):
    code, stdout, _ = await run_cli(
        database_url, "accounts", "create", "acme corp", "--plan", "pro", "--limits", "50/minute"
    )
    assert code == 0 and stdout.startswith("created account acme corp\tpro\t")
    key = await create_key(database_url, account="acme corp")
    code, _, _ = await run_cli(
        database_url, "keys", "create", "--account", "acme corp", "--owner", "billing service"
    )
    assert code == 0
    await revoke_key(database_url, key)
    code, stdout, _ = await run_cli(database_url, "accounts", "show", "acme corp")
    lines = stdout.splitlines()
    assert code == 0 and lines[0].startswith("acme corp\tpro\t") and "limits 50/minute" in lines[0]
    assert len(lines) == 3 and all(line.startswith("  ") for line in lines[1:])
    assert "revoked" in lines[1] and "\tbilling service\t" in lines[2]
    _, listed, _ = await run_cli(database_url, "accounts", "list", "--plan", "pro")
    assert [line.split("\t")[0] for line in listed.splitlines()] == ["acme corp"]
    for args, message in (
        (["accounts", "create", "acme corp", "--plan", "free"], "already exists"),
        (["accounts", "create", "  ", "--plan", "free"], "1 to 200 characters"),
        (["accounts", "create", "x" * 201, "--plan", "free"], "1 to 200 characters"),
        (["accounts", "create", "x", "--plan", "anonymous"], "not be on the anonymous plan"),
        (["accounts", "move", "acme corp", "platinum"], "no plan named 'platinum'"),
        (["accounts", "show", "nobody"], "no account named 'nobody'"),
        (["accounts", "update", "acme corp"], "nothing to change"),
        (["accounts", "update", "acme corp", "--limits", "5/fortnight"], "is not a limit"),
        (["accounts", "block", "acme corp", " "], "the reason for a block is shown"),
    ):
        code, out, stderr = await run_cli(database_url, *args)
        assert code == 2 and out == "" and stderr.count("\n") == 1, (args, stderr)
        assert stderr.startswith("error: ") and message in stderr, (args, stderr)
    _, after, _ = await run_cli(database_url, "accounts", "list")
    assert after == listed


# Migration 0007 from data written by plain SQL at 0006: owner, plan, own limits, block, revoked.
# (owner, plan, own limits, blocked reason, revoked)
KEYS_AT_0006 = [
    ("multi (pro)", "pro", None, None, False),  # an owner whose name the split below would take
    ("acme", "pro", None, None, False),
    ("acme", "pro", None, None, False),
    ("multi", "free", None, None, False),
    ("multi", "pro", None, None, False),
    ("special", "pro", None, None, False),
    ("special", "pro", "2/minute", None, False),
    ("held", "pro", None, "unpaid", False),
    ("gone", "pro", None, None, True),
]


def _sql(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
        try:
            return await connection.fetch(query, *args)
        finally:
            await connection.close()

    return asyncio.run(fetch())


KEYS_QUERY = (
    "SELECT k.public_id, k.owner, p.name AS plan, k.limits, k.blocked_reason, "
    "k.revoked_at IS NOT NULL AS revoked FROM api_keys k JOIN plans p ON p.id = k.plan_id "
    "ORDER BY k.id"
)


async def test_migration_0007_makes_accounts_of_owners_keeps_every_key_working_and_downgrades(
    make_settings,
):
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}_0007"
    await _admin(f'CREATE DATABASE "{name}"')
    url = _url_for(name)
    config = alembic_config(url)
    keys = []
    try:
        await asyncio.to_thread(command.upgrade, config, "0006")
        await asyncio.to_thread(
            _sql, url, "UPDATE plans SET limits = '4/minute' WHERE name = 'pro'"
        )
        for owner, plan, limits, blocked, revoked in KEYS_AT_0006:
            key, public_id = generate_key()
            keys.append(key)
            await asyncio.to_thread(
                _sql,
                url,
                "INSERT INTO api_keys (public_id, secret_hash, plan_id, owner, limits, "
                "blocked_reason, revoked_at) SELECT $1, $2, id, $3, $4, $5, "
                "CASE WHEN $6 THEN now() END FROM plans WHERE name = $7",
                public_id, hash_key(key), owner, limits, blocked, revoked, plan,
            )  # fmt: skip
        before = await asyncio.to_thread(_sql, url, KEYS_QUERY)

        await asyncio.to_thread(command.upgrade, config, "0007")
        accounts = await asyncio.to_thread(
            _sql,
            url,
            "SELECT a.name, p.name AS plan, a.limits, array_agg(k.public_id ORDER BY k.id) AS keys "
            "FROM accounts a JOIN plans p ON p.id = a.plan_id JOIN api_keys k "
            "ON k.account_id = a.id GROUP BY a.id, p.name ORDER BY min(k.id)",
        )
        own_limits = await asyncio.to_thread(
            _sql, url, "SELECT count(*) FROM api_keys WHERE limits IS NOT NULL"
        )
        ids = [key.split("_")[1] for key in keys]
        found = [(a["name"], a["plan"], a["limits"], a["keys"]) for a in accounts]
        expected = [
            ("multi (pro)", "pro", None, ids[0:1]),
            ("acme", "pro", None, ids[1:3]),  # one owner, one plan: one account, both keys
            ("multi (free)", "free", None, ids[3:4]),
            ("multi (pro) #2", "pro", None, ids[4:5]),  # its plain split name was taken
            ("special (pro)", "pro", None, ids[5:6]),
            ("special (pro) #2", "pro", "2/minute", ids[6:7]),  # the key's own limits
            ("held", "pro", None, ids[7:8]),
            ("gone", "pro", None, ids[8:9]),
        ]
        assert found == expected
        assert own_limits[0]["count"] == 0

        async with running_client(make_settings(database_url=url)) as client:
            answers = [await client.get("/v1/items", headers={"X-API-Key": k}) for k in keys]
            shared = await statuses(client, keys[1], 2) + await statuses(client, keys[2], 2)
        assert [r.status_code for r in answers] == [200] * 7 + [403, 401]
        assert answers[6].headers["ratelimit-policy"] == '"pro";q=2;w=60'
        assert answers[7].json()["detail"] == "This API key is blocked: unpaid"
        assert shared == [200, 200, 429, 429]  # acme's keys spend one 4/minute from now on

        await asyncio.to_thread(command.downgrade, config, "0006")
        after = await asyncio.to_thread(_sql, url, KEYS_QUERY)
        tables = await asyncio.to_thread(
            _sql, url, "SELECT 1 FROM information_schema.tables WHERE table_name = 'accounts'"
        )
        await asyncio.to_thread(command.upgrade, config, "head")  # and up again
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert [dict(row) for row in after] == [dict(row) for row in before]
    assert tables == []
