"""API keys resolve to their plan's limits; the plan cache spares the database every request."""

import asyncio
import json
import logging
from importlib.resources import files

import asyncpg
import pytest
from sqlalchemy import event

from {{ cookiecutter.package_name }} import migrations

from .conftest import (
    _asyncpg_dsn,
    create_key,
    metric,
    revoke_key,
    run_cli,
    running_client,
    set_plan,
)


def policy_names(response) -> list[str]:
    policies = response.headers["ratelimit-policy"].split(", ")
    return [policy.split(";")[0].strip('"') for policy in policies]


async def test_seeded_plans_are_present(make_settings, database_url):
    seeded = json.loads(files(migrations).joinpath("seed_plans.json").read_text())
    code, stdout, _ = await run_cli(database_url, "plans", "list")
    assert code == 0
    listed = dict(line.split("\t")[:2] for line in stdout.splitlines())
    assert set(listed) == set(seeded) and "anonymous" in listed
    assert {name: limits for name, limits in listed.items() if name != "anonymous"} == {
        name: limits for name, limits in seeded.items() if name != "anonymous"
    }


async def test_a_key_made_with_the_cli_authenticates_on_its_plan(make_settings, database_url):
    code, _, _ = await run_cli(database_url, "accounts", "create", "cli-test", "--plan", "pro")
    assert code == 0
    code, stdout, stderr = await run_cli(database_url, "keys", "create", "--account", "cli-test")
    key = stdout.strip()
    assert code == 0 and key.startswith("sk_") and "shown only this once" in stderr
    await set_plan(database_url, "pro", "7/minute")
    async with running_client(make_settings()) as client:
        bearer = await client.get("/v1/items", headers={"Authorization": f"Bearer {key}"})
        header = await client.get("/v1/items", headers={"X-API-Key": key})
    assert bearer.status_code == 200 and header.status_code == 200
    assert bearer.headers["ratelimit-policy"] == '"pro";q=7;w=60'
    assert header.headers["ratelimit"] == '"pro";r=5;t=60'  # the same budget: 7 - 2


async def test_each_plan_has_its_own_limits_and_each_account_its_own_budget(
    make_settings, database_url
):
    await set_plan(database_url, "free", "3/minute")
    await set_plan(database_url, "pro", "6/minute")
    free = await create_key(database_url, "free")
    pro, other_pro = await create_key(database_url, "pro"), await create_key(database_url, "pro")
    async with running_client(make_settings()) as client:

        async def statuses(key: str, n: int) -> list[int]:
            headers = {"X-API-Key": key}
            return [(await client.get("/v1/items", headers=headers)).status_code for _ in range(n)]

        assert await statuses(free, 5) == [200] * 3 + [429] * 2
        assert await statuses(pro, 8) == [200] * 6 + [429] * 2
        assert await statuses(other_pro, 1) == [200]  # same plan, another account
        anonymous = await client.get("/v1/items")  # and the caller's IP has its own
        refused = await client.get("/v1/items", headers={"X-API-Key": pro})
    assert anonymous.status_code == 200 and policy_names(anonymous) == ["anonymous"]
    assert refused.json()["policy"] == "pro"
    assert refused.headers["ratelimit-policy"] == '"pro";q=6;w=60'


async def test_every_window_of_a_plan_applies(make_settings, database_url):
    await set_plan(database_url, "pro", "100/minute;4/hour")
    key = await create_key(database_url, "pro")
    async with running_client(make_settings()) as client:
        responses = [await client.get("/v1/items", headers={"X-API-Key": key}) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 4 + [429]
    expected = '"pro-60s";q=100;w=60, "pro-3600s";q=4;w=3600'
    assert responses[-1].headers["ratelimit-policy"] == expected
    assert responses[-1].headers["ratelimit"].startswith('"pro-3600s";r=0;')


async def test_a_plan_can_set_its_own_limits_for_one_route(make_settings, database_url):
    await set_plan(database_url, "pro", "100/minute", {"/v1/items": "2/minute"})
    key = await create_key(database_url, "pro")
    async with running_client(make_settings()) as client:
        listed = [await client.get("/v1/items", headers={"X-API-Key": key}) for _ in range(3)]
        other = await client.get("/v1/items/1", headers={"X-API-Key": key})
    assert [r.status_code for r in listed] == [200, 200, 429]
    assert other.headers["ratelimit-policy"] == '"pro";q=100;w=60'


async def test_route_limits_apply_on_top_of_the_plan_with_their_cost(make_settings, database_url):
    await set_plan(database_url, "enterprise", "1000/minute")
    key = await create_key(database_url, "enterprise")
    headers = {"X-API-Key": key}
    async with running_client(make_settings()) as client:
        imports = [
            (await client.post("/v1/items/import", headers=headers, json=[{"name": "a"}]))
            for _ in range(4)
        ]
    # /v1/items/import costs 10 of its 30/hour: three imports, then refused whatever the plan.
    assert [r.status_code for r in imports] == [201, 201, 201, 429]
    assert imports[-1].json()["policy"] == "import_items"
    assert imports[0].headers["ratelimit-policy"].endswith('"import_items";q=30;w=3600')


async def test_a_revoked_key_is_refused_within_the_cache_ttl(make_settings, database_url):
    key = await create_key(database_url, "pro")
    async with running_client(make_settings(plan_cache_ttl_seconds=0.5)) as client:
        before = await client.get("/v1/items", headers={"X-API-Key": key})
        await revoke_key(database_url, key)
        await asyncio.sleep(0.6)
        after = await client.get("/v1/items", headers={"X-API-Key": key})
    assert before.status_code == 200
    assert after.status_code == 401
    assert after.json()["detail"] == "unknown or revoked API key"


async def test_a_plan_change_takes_effect_within_the_cache_ttl(make_settings, database_url):
    await set_plan(database_url, "pro", "50/minute")
    key = await create_key(database_url, "pro")
    async with running_client(make_settings(plan_cache_ttl_seconds=0.5)) as client:
        before = await client.get("/v1/items", headers={"X-API-Key": key})
        await set_plan(database_url, "pro", "80/minute")
        await asyncio.sleep(0.6)
        after = await client.get("/v1/items", headers={"X-API-Key": key})
    assert before.headers["ratelimit-policy"] == '"pro";q=50;w=60'
    assert after.headers["ratelimit-policy"] == '"pro";q=80;w=60'


MALFORMED = {
    "empty": {"X-API-Key": ""},
    "empty bearer": {"Authorization": "Bearer "},
    "10 kB": {"X-API-Key": "k" * 10_240},
    "non-ASCII": {"X-API-Key": "clé-ünïcode-🔑".encode()},
    "SQL": {"X-API-Key": "'; DROP TABLE api_keys; --"},
    "well-formed but unknown": {"X-API-Key": "sk_0123456789ab_" + "A" * 43},
    "other scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
}


@pytest.mark.parametrize("headers", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_bad_key_is_a_401_never_a_500(make_settings, headers):
    async with running_client(make_settings()) as client:
        response = await client.get("/v1/items", headers=headers)
        unknown_path = await client.get("/v1/nowhere", headers=headers)
        health = await client.get("/health/live", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["status"] == 401
    assert unknown_path.status_code == 401  # checked before routing: no route is probed
    assert health.status_code == 200  # probes never look at credentials


@pytest.mark.parametrize("headers", MALFORMED.values(), ids=MALFORMED.keys())
async def test_the_documentation_is_served_whatever_credentials_it_carries(make_settings, headers):
    # So that `schemathesis -H "Authorization: ..."` (or /docs with a wrong key) loads the schema.
    async with running_client(make_settings()) as client:
        schema = await client.get("/openapi.json", headers=headers)
        docs = await client.get("/docs", headers=headers)
    assert schema.status_code == 200 and schema.json()["paths"]
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_two_different_keys_in_one_request_are_refused(make_settings, database_url):
    first, second = await create_key(database_url, "free"), await create_key(database_url, "pro")
    async with running_client(make_settings()) as client:
        response = await client.get(
            "/v1/items", headers={"Authorization": f"Bearer {first}", "X-API-Key": second}
        )
    assert response.status_code == 401


async def test_a_key_with_a_wrong_secret_is_refused(make_settings, database_url):
    key = await create_key(database_url, "pro")
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    async with running_client(make_settings()) as client:
        response = await client.get("/v1/items", headers={"X-API-Key": forged})
    assert response.status_code == 401


async def test_a_hundred_requests_with_one_key_make_at_most_one_query(make_settings, database_url):
    await set_plan(database_url, "pro", "1000/minute")
    key = await create_key(database_url, "pro")
    app_queries: list[str] = []
    async with running_client(make_settings()) as client:
        engine = client._transport.app.state.db_engine.sync_engine  # type: ignore[attr-defined]
        event.listen(engine, "before_cursor_execute", lambda *a: app_queries.append(a[2]))
        concurrent = await asyncio.gather(
            *(client.get("/v1/items", headers={"X-API-Key": key}) for _ in range(50))
        )
        sequential = [await client.get("/v1/items", headers={"X-API-Key": key}) for _ in range(50)]
    assert {r.status_code for r in concurrent + sequential} == {200}
    assert len(app_queries) <= 1, app_queries


async def test_database_down_cached_keys_keep_working_uncached_get_503(
    make_settings, database_url, database_proxy
):
    proxy, proxied_url = database_proxy
    known, unknown = await create_key(database_url, "pro"), await create_key(database_url, "pro")
    settings = make_settings(
        database_url=proxied_url,
        plan_cache_ttl_seconds=0.2,
        database_retry_interval_seconds=0.3,
    )
    async with running_client(settings) as client:
        assert (await client.get("/v1/items", headers={"X-API-Key": known})).status_code == 200
        await proxy.cut()
        await asyncio.sleep(0.3)  # past the TTL: the cached entry is stale, and still used
        cached = [await client.get("/v1/items", headers={"X-API-Key": known}) for _ in range(3)]
        anonymous = await client.get("/v1/items")
        uncached = await client.get("/v1/items", headers={"X-API-Key": unknown})
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
        await proxy.restore()
        await asyncio.sleep(0.4)  # past the retry interval
        recovered = await client.get("/v1/items", headers={"X-API-Key": unknown})
    assert [r.status_code for r in cached] == [200] * 3
    assert anonymous.status_code == 200  # the anonymous plan is cached too
    assert uncached.status_code == 503
    assert uncached.headers["retry-after"].isdigit()
    assert uncached.headers["content-type"] == "application/problem+json"
    assert live.status_code == 200
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unreachable"
    assert recovered.status_code == 200


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["accounts", "create", "x", "--plan", "platinum"],
            "error: no plan named 'platinum'",
        ),
        (["keys", "create", "--account", "nobody"], "error: no account named 'nobody'"),
        (["plans", "create", "gold", "10/fortnight"], "error: '10/fortnight' is not a limit"),
        (["plans", "update", "pro", "--limits", "0/minute"], "error: '0/minute' is not a limit"),
        (["keys", "revoke", "000000000000"], "error: no API key with id '000000000000'"),
    ],
    ids=["unknown plan", "unknown account", "malformed limit", "zero limit", "unknown key"],
)
async def test_bad_cli_input_is_one_line_and_writes_nothing(database_url, args, message):
    _, before, _ = await run_cli(database_url, "plans", "list")
    code, _, stderr = await run_cli(database_url, *args)
    _, after, _ = await run_cli(database_url, "plans", "list")
    _, keys, _ = await run_cli(database_url, "keys", "list")
    _, accounts, _ = await run_cli(database_url, "accounts", "list")
    assert code == 2 and accounts == ""
    assert stderr.strip().splitlines() == [stderr.strip()] and stderr.startswith(message)
    assert before == after and keys == ""


async def test_a_deactivated_plans_key_gets_403_plan_inactive_and_no_failed_auth_penalty(
    make_settings, database_url
):
    key = await create_key(database_url, "pro")
    code, _, _ = await run_cli(database_url, "plans", "update", "pro", "--deactivate")
    assert code == 0
    settings = make_settings(auth_failure_limit="20/minute", plan_cache_ttl_seconds=0.3)
    async with running_client(settings) as client:
        refused = [await client.get("/v1/items", headers={"X-API-Key": key}) for _ in range(25)]
        # Only the key's holder is told: a wrong secret with its public id is a wrong key.
        forged = await client.get("/v1/items", headers={"X-API-Key": key[:-1] + "!"})
        await run_cli(database_url, "plans", "update", "pro", "--activate")
        await asyncio.sleep(0.4)
        served = await client.get("/v1/items", headers={"X-API-Key": key})
        scraped = (await client.get("/metrics")).text
    assert [r.status_code for r in refused] == [403] * 25  # never 429 auth-failures
    body = refused[-1].json()
    assert refused[-1].headers["content-type"] == "application/problem+json"
    assert body["status"] == 403 and "plan inactive" in body["detail"] and "'pro'" in body["detail"]
    assert forged.status_code == 401
    assert served.status_code == 200
    assert metric(scraped, "ratelimit_decisions_total", plan="pro", route="<authentication>",
                  decision="plan_inactive") >= 25  # fmt: skip


async def test_an_inactive_anonymous_plan_is_a_503_logged_once_per_ttl_and_counted(
    make_settings, database_url, caplog
):
    caplog.set_level(logging.INFO)
    # The CLI refuses to deactivate it; plain SQL does not.
    connection = await asyncpg.connect(_asyncpg_dsn(database_url), timeout=5)
    try:
        await connection.execute("UPDATE plans SET is_active = false WHERE name = 'anonymous'")
    finally:
        await connection.close()
    async with running_client(make_settings(plan_cache_ttl_seconds=30)) as client:
        scraped = (await client.get("/metrics")).text
        before = metric(scraped, "plan_inactive_total", plan="anonymous")
        answers = [await client.get("/v1/items") for _ in range(10)]
        scraped = (await client.get("/metrics")).text
        after = metric(scraped, "plan_inactive_total", plan="anonymous")
    assert {r.status_code for r in answers} == {503}
    assert answers[0].headers["content-type"] == "application/problem+json"
    reports = [r for r in caplog.records if "'anonymous' plan is inactive" in r.getMessage()]
    assert len(reports) == 1 and reports[0].levelname == "ERROR"  # read once in the TTL
    assert before >= 1 and after == before
