"""Shadow limits: counted exactly as enforced ones, logged and counted where they would refuse,
refusing nothing, and absent from the quota headers (README, Rolling out a new limit)."""

import logging

import redis

from .conftest import metric, running_client, set_plan

# /v1/items/1 answers 404 when served (there is no item 1), 429 when refused.
SERVED = 404
QUOTA_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "ratelimit", "ratelimit-policy")


def shadow_records(caplog) -> list[logging.LogRecord]:
    """The shadow refusals logged one by one: the first of each caller, limit and window."""
    return [
        r
        for r in caplog.records
        if r.name == "ratelimit" and getattr(r, "shadow", False) and not hasattr(r, "more")
    ]


def summarised(caplog, shadow: bool = True) -> list[int]:
    """The counts of the summary lines: refusals after the first, not logged one by one."""
    return [
        r.more
        for r in caplog.records
        if r.name == "ratelimit" and hasattr(r, "more") and r.shadow is shadow
    ]


async def send(client, count: int, path: str = "/v1/items/1") -> list:
    return [
        await client.get(path, headers={"X-Request-ID": f"request-{n:04d}"}) for n in range(count)
    ]


async def test_a_shadow_limit_refuses_nothing_and_logs_what_enforcing_it_would_refuse(
    make_settings, database_url, caplog
):
    caplog.set_level(logging.INFO)
    # Enforced: the plan's 5/minute refuses the 6th to 8th request.
    await set_plan(database_url, "anonymous", "5/minute")
    async with running_client(make_settings(), client_ip="203.0.113.21") as client:
        enforced = await send(client, 8)
    would_refuse = [r.headers["x-request-id"] for r in enforced if r.status_code == 429]
    assert [r.status_code for r in enforced] == [SERVED] * 5 + [429] * 3

    # The same limit as the plan's shadow limit, for another caller: all served, and exactly
    # the requests the enforced limit refused are logged as shadow refusals.
    caplog.clear()
    await set_plan(database_url, "anonymous", "100/minute", shadow_limits="5/minute")
    async with running_client(make_settings(), client_ip="203.0.113.22") as client:
        before = (await client.get("/metrics")).text
        shadowed = await send(client, 8)
        after = (await client.get("/metrics")).text
    assert [r.status_code for r in shadowed] == [SERVED] * 8
    records = shadow_records(caplog)
    # The first would-be refusal, with its request id, then a summary of the rest.
    assert [r.request_id for r in records] == would_refuse[:1]
    assert summarised(caplog) == [len(would_refuse) - 1]
    assert {r.message for r in records} == {"rate limit exceeded (shadow: served)"}
    assert {r.limit for r in records} == {"5 per 1 minute"}
    assert not [r for r in caplog.records if r.name == "ratelimit" and not r.shadow]

    def decisions(decision: str) -> float:
        labels = {"plan": "anonymous", "route": "/v1/items/{item_id}", "decision": decision}
        return metric(after, "ratelimit_decisions_total", **labels) - metric(
            before, "ratelimit_decisions_total", **labels
        )

    assert decisions("shadow_limited") == 3 and decisions("allowed") == 5

    # The quota headers tell only the enforced limit: no client slows down for a shadow one.
    last = shadowed[-1]
    assert last.headers["ratelimit-policy"] == '"anonymous";q=100;w=60'
    assert last.headers["x-ratelimit-remaining"] == "92"
    assert "retry-after" not in last.headers


async def test_ratelimit_mode_shadow_serves_everything_and_sends_no_quota_headers(
    make_settings, database_url, caplog
):
    caplog.set_level(logging.INFO)
    await set_plan(database_url, "anonymous", "5/minute")
    async with running_client(make_settings(ratelimit_mode="shadow")) as client:
        before = (await client.get("/metrics")).text
        responses = await send(client, 8)
        after = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [SERVED] * 8
    for response in responses:
        assert not [name for name in QUOTA_HEADERS if name in response.headers]
    assert [r.request_id for r in shadow_records(caplog)] == ["request-0005"]
    assert summarised(caplog) == [2]  # request-0006 and -0007
    labels = {"plan": "anonymous", "route": "/v1/items/{item_id}", "decision": "shadow_limited"}
    shadow_limited = metric(after, "ratelimit_decisions_total", **labels) - metric(
        before, "ratelimit_decisions_total", **labels
    )
    assert shadow_limited == 3


async def test_a_route_declared_shadow_counts_on_its_own_and_enforced_limits_still_refuse(
    make_settings, database_url, caplog
):
    # POST /v1/items declares 10/minute, and 5/minute with shadow=True (api/routes/items.py).
    caplog.set_level(logging.INFO)
    await set_plan(database_url, "anonymous", "100/minute")
    async with running_client(make_settings()) as client:
        responses = [
            await client.post(
                "/v1/items", json={"name": "n"}, headers={"X-Request-ID": f"request-{n:04d}"}
            )
            for n in range(12)
        ]
    # 5 within the shadow limit, 5 served past it (logged), then the enforced 10/minute refuses.
    assert [r.status_code for r in responses] == [201] * 10 + [429] * 2
    records = shadow_records(caplog)
    assert [r.request_id for r in records] == ["request-0005"]
    assert summarised(caplog) == [4]  # request-0006 to -0009
    assert {r.policy for r in records} == {"create_item-shadow"}
    policies = '"anonymous";q=100;w=60, "create_item";q=10;w=60'
    assert all(r.headers["ratelimit-policy"] == policies for r in responses)
    assert responses[-1].json()["policy"] == "create_item"
    # The enforced refusals are logged as such, apart: the first, and a summary of the other.
    enforced = [
        r
        for r in caplog.records
        if r.name == "ratelimit" and not r.shadow and not hasattr(r, "more")
    ]
    assert [r.request_id for r in enforced] == ["request-0010"]
    assert summarised(caplog, shadow=False) == [1]


async def test_a_plan_shadow_limit_equal_to_a_limit_under_shadow_mode_counts_apart(
    make_settings, database_url, caplog
):
    # RATELIMIT_MODE=shadow keeps each limit's usual counter; a plan's shadow limit has its own,
    # so an equal pair does not count every request twice.
    caplog.set_level(logging.INFO)
    await set_plan(database_url, "anonymous", "5/minute", shadow_limits="5/minute")
    async with running_client(make_settings(ratelimit_mode="shadow")) as client:
        responses = await send(client, 8)
    assert [r.status_code for r in responses] == [SERVED] * 8
    logged = [r.request_id for r in shadow_records(caplog)]
    assert logged == ["request-0005", "request-0005"]  # one line per limit
    assert summarised(caplog) == [2, 2]


async def test_ratelimit_mode_shadow_covers_the_limits_a_route_declares(
    make_settings, database_url, caplog
):
    # POST /v1/items declares an enforced 10/minute: under RATELIMIT_MODE=shadow it refuses
    # nothing either, and its would-be refusals are logged as shadow ones.
    caplog.set_level(logging.INFO)
    await set_plan(database_url, "anonymous", "100/minute")
    async with running_client(make_settings(ratelimit_mode="shadow")) as client:
        responses = [
            await client.post(
                "/v1/items", json={"name": "n"}, headers={"X-Request-ID": f"request-{n:04d}"}
            )
            for n in range(12)
        ]
    assert [r.status_code for r in responses] == [201] * 12
    refused = [r for r in shadow_records(caplog) if r.policy == "create_item"]
    # The first would-be refusal of the window, then a summary of the rest.
    assert [r.request_id for r in refused] == ["request-0010"]
    summaries = [r for r in caplog.records if hasattr(r, "more") and r.policy == "create_item"]
    assert [r.more for r in summaries] == [1]
    assert not [r for r in caplog.records if r.name == "ratelimit" and not r.shadow]


async def test_a_shadow_limits_would_be_refusals_are_not_counted(
    make_settings, database_url, redis_url, key_prefix
):
    # Counted as if enforced: a request it would refuse is not a hit, so the shadow counter
    # holds what enforcing the limit would have let through, and no more.
    await set_plan(database_url, "anonymous", "100/minute", shadow_limits="5/minute")
    async with running_client(make_settings()) as client:
        responses = await send(client, 8)
        report = (await client.get("/v1/rate-limit")).json()
    assert [r.status_code for r in responses] == [SERVED] * 8
    store = redis.Redis.from_url(redis_url)
    try:
        (counter,) = list(store.scan_iter(match=f"{key_prefix}:*plan-shadow:/v1/items/*"))
        assert store.zcard(counter) == 5  # the moving window: one member per hit
    finally:
        store.close()
    (shadow,) = [q for q in report["quotas"] if q["route"] == "/v1/items/{item_id}" and q["shadow"]]
    assert (shadow["limit"], shadow["remaining"]) == (5, 0)


async def test_the_quota_endpoint_says_shadow_under_ratelimit_mode_shadow(
    make_settings, database_url
):
    await set_plan(database_url, "anonymous", "5/minute")
    async with running_client(make_settings(ratelimit_mode="shadow")) as client:
        await send(client, 2)
        report = (await client.get("/v1/rate-limit")).json()
    quotas = [q for q in report["quotas"] if q["route"] == "/v1/items/{item_id}"]
    assert [(q["limit"], q["remaining"], q["shadow"]) for q in quotas] == [(5, 3, True)]
    assert all(quota["shadow"] for quota in report["quotas"])
