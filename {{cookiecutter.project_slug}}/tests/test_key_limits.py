"""One key's own limits and blocks (`keys update`), and an account's own limits: a key's are
counted for it alone on top of its account's budget, an account's replace its plan's; validated
like plans, refused by the database when written wrong, and applied by every instance within
the plan cache TTL."""

import asyncio

import asyncpg
import pytest

from .conftest import (
    _asyncpg_dsn,
    create_account,
    create_key,
    run_cli,
    running_client,
    set_plan,
)


def public_id(key: str) -> str:
    return key.split("_")[1]


async def statuses(client, key: str, count: int, path: str = "/v1/items") -> list[int]:
    return [(await client.get(path, headers={"X-API-Key": key})).status_code for _ in range(count)]


async def test_a_keys_narrower_limit_holds_inside_its_accounts_budget(make_settings, database_url):
    await set_plan(database_url, "pro", "6/minute")
    await create_account(database_url, "acme", "pro")
    own = await create_key(database_url, account="acme")
    mate = await create_key(database_url, account="acme")
    code, stdout, _ = await run_cli(
        database_url, "keys", "update", public_id(own), "--limits", "3/minute"
    )
    assert code == 0 and "limits 3/minute" in stdout
    async with running_client(make_settings()) as client:
        assert await statuses(client, own, 4) == [200] * 3 + [429]  # its own 3
        refused = await client.get("/v1/items", headers={"X-API-Key": own})
        # The account's 6 less the 3 the limited key spent: a key's limit never adds budget.
        assert await statuses(client, mate, 4) == [200] * 3 + [429]
        spent = await client.get("/v1/items", headers={"X-API-Key": mate})
    assert refused.headers["ratelimit-policy"] == '"pro";q=6;w=60, "key";q=3;w=60'
    assert refused.json()["policy"] == "key"
    assert spent.json()["policy"] == "pro"  # the account's budget is out


async def test_per_route_limits_of_a_key_replace_its_plans_on_that_route_only(
    make_settings, database_url
):
    await set_plan(database_url, "pro", "5/minute")
    key = await create_key(database_url, "pro")
    code, _, _ = await run_cli(
        database_url, "keys", "update", public_id(key), "--route", "/v1/items=2/minute"
    )
    assert code == 0
    async with running_client(make_settings()) as client:
        assert await statuses(client, key, 3) == [200, 200, 429]
        assert await statuses(client, key, 6, path="/v1/rate-limit") == [200] * 5 + [429]
    code, _, _ = await run_cli(database_url, "keys", "update", public_id(key), "--clear-limits")
    assert code == 0
    async with running_client(make_settings()) as client:  # a new cache: the plan's again
        answer = await client.get("/v1/items", headers={"X-API-Key": key})
    assert answer.headers["ratelimit-policy"] == '"pro";q=5;w=60'


async def test_a_blocked_key_gets_403_with_the_reason_on_every_instance_within_the_ttl(
    make_settings, database_url
):
    await set_plan(database_url, "pro", "100/minute")
    key = await create_key(database_url, "pro")
    settings = make_settings(plan_cache_ttl_seconds=0.5)
    async with running_client(settings) as first, running_client(settings) as second:
        for client in (first, second):  # both have the key cached
            assert await statuses(client, key, 1) == [200]
        code, _, _ = await run_cli(
            database_url, "keys", "update", public_id(key), "--block", "invoice 42 unpaid"
        )
        assert code == 0
        await asyncio.sleep(0.6)
        for client in (first, second):
            refused = await client.get("/v1/items", headers={"X-API-Key": key})
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["detail"] == "This API key is blocked: invoice 42 unpaid"
        code, stdout, _ = await run_cli(database_url, "keys", "list")
        assert "blocked: invoice 42 unpaid" in stdout
        code, _, _ = await run_cli(database_url, "keys", "update", public_id(key), "--unblock")
        assert code == 0
        await asyncio.sleep(0.6)
        for client in (first, second):
            assert await statuses(client, key, 1) == [200]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--limits", "10/fortnight"], "'10/fortnight' is not a limit"),
        (["--route", "v1/items=10/minute"], "must be a route template"),
        (["--block", "   "], "the reason for a block is shown to the client"),
        ([], "nothing to change"),
    ],
)
async def test_a_bad_key_update_is_one_line_and_writes_nothing(database_url, arguments, message):
    await set_plan(database_url, "pro", "100/minute")
    key = await create_key(database_url, "pro")
    code, stdout, stderr = await run_cli(database_url, "keys", "update", public_id(key), *arguments)
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    _, listed, _ = await run_cli(database_url, "keys", "list")
    assert "limits" not in listed and "blocked" not in listed


async def test_the_database_refuses_key_and_shadow_limits_it_cannot_read(database_url):
    await set_plan(database_url, "pro", "100/minute")
    key = await create_key(database_url, "pro")
    connection = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute(
                "UPDATE api_keys SET limits = '10/fortnight' WHERE public_id = $1", public_id(key)
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute("UPDATE plans SET shadow_limits = 'lots' WHERE name = 'pro'")
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute("UPDATE accounts SET limits = '10/fortnight'")
        await connection.execute(
            "UPDATE api_keys SET limits = '2/minute' WHERE public_id = $1", public_id(key)
        )
    finally:
        await connection.close()


async def test_a_blocked_keys_reason_is_shown_only_to_a_holder_of_its_secret(
    make_settings, database_url
):
    # Public ids are printed by `keys list` and begin every key: one with a wrong secret is an
    # ordinary failed authentication (401, then 429 past AUTH_FAILURE_LIMIT), never the 403
    # with the operator's reason.
    await set_plan(database_url, "pro", "100/minute")
    key = await create_key(database_url, "pro")
    code, _, _ = await run_cli(
        database_url, "keys", "update", public_id(key), "--block", "invoice 42 unpaid"
    )
    assert code == 0
    forged = key[: -len("secret")] + "SECRET"  # the public id, another secret of the same form
    async with running_client(make_settings(auth_failure_limit="2/minute")) as client:
        holder = await client.get("/v1/items", headers={"X-API-Key": key})
        guesses = [await client.get("/v1/items", headers={"X-API-Key": forged}) for _ in range(3)]
    assert holder.status_code == 403 and "invoice 42" in holder.json()["detail"]
    assert [r.status_code for r in guesses] == [401, 401, 429]
    assert not [r for r in guesses if "invoice" in r.text]


async def test_an_accounts_limits_of_every_route_replace_its_plans_per_route_limits_too(
    make_settings, database_url
):
    await set_plan(database_url, "pro", "100/minute", route_limits={"/v1/items": "2/minute"})
    await create_account(database_url, "acme", "pro")
    key = await create_key(database_url, account="acme")
    code, stdout, _ = await run_cli(
        database_url, "accounts", "update", "acme", "--limits", "4/minute"
    )
    assert code == 0 and "limits 4/minute" in stdout
    async with running_client(make_settings()) as client:
        assert await statuses(client, key, 5) == [200] * 4 + [429]
        answer = await client.get("/v1/items", headers={"X-API-Key": key})
    assert answer.headers["ratelimit-policy"] == '"pro";q=4;w=60'
