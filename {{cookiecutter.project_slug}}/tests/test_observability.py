"""Request ids, the refusal log and the metrics an operator relies on."""

import json
import logging
import re

from {{ cookiecutter.package_name }}.observability.logs import JsonFormatter

from .conftest import create_key, metric, running_client, set_plan


async def test_the_request_id_comes_from_the_proxy_or_is_made_and_is_echoed(make_settings):
    async with running_client(make_settings()) as client:
        forwarded = await client.get("/v1/items", headers={"X-Request-ID": "nginx-req-0001"})
        made = await client.get("/v1/items")
        junk = await client.get("/v1/items", headers={"X-Request-ID": "no spaces allowed"})
        probe = await client.get("/health/live")
    assert forwarded.headers["x-request-id"] == "nginx-req-0001"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", junk.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", probe.headers["x-request-id"])
    assert len({made.headers["x-request-id"], junk.headers["x-request-id"]}) == 2


async def test_each_refusal_is_logged_once_on_the_ratelimit_logger(make_settings, caplog):
    caplog.set_level(logging.INFO)
    async with running_client(make_settings(), client_ip="203.0.113.77") as client:
        for _ in range(5):
            await client.get("/v1/items/7")
        refused = [
            await client.get("/v1/items/7", headers={"X-Request-ID": f"req-refused-{n}"})
            for n in range(2)
        ]
    assert [r.status_code for r in refused] == [429, 429]
    records = [r for r in caplog.records if r.name == "ratelimit"]
    assert len(records) == 2
    entry = json.loads(JsonFormatter().format(records[0]))
    assert entry["message"] == "rate limit exceeded" and entry["level"] == "warning"
    assert entry["plan"] == "anonymous" and entry["route"] == "/v1/items/{item_id}"
    assert entry["limit"] == "5 per 1 minute" and entry["request_id"] == "req-refused-0"
    assert re.fullmatch(r"[0-9a-f]{16}", entry["subject"])
    assert "203.0.113.77" not in json.dumps(entry)  # client addresses are hashed


async def test_metrics_count_requests_decisions_and_plan_cache(make_settings, database_url):
    key = await create_key(database_url, "pro")
    async with running_client(make_settings()) as client:
        before = (await client.get("/metrics")).text
        for _ in range(7):
            await client.get("/v1/items")
        for _ in range(3):
            await client.get("/v1/items", headers={"X-API-Key": key})
        after = await client.get("/metrics")
    assert after.status_code == 200 and "x-ratelimit-limit" not in after.headers

    def delta(name: str, **labels: str) -> float:
        return metric(after.text, name, **labels) - metric(before, name, **labels)

    route = {"route": "/v1/items"}
    assert delta("ratelimit_decisions_total", plan="anonymous", decision="allowed", **route) == 5
    assert delta("ratelimit_decisions_total", plan="anonymous", decision="limited", **route) == 2
    assert delta("ratelimit_decisions_total", plan="pro", decision="allowed", **route) == 3
    assert delta("http_requests_total", method="GET", status="429", **route) == 2
    assert delta("http_requests_total", method="GET", status="200", **route) == 8
    assert delta("ratelimit_check_seconds_count") == 10
    assert delta("plan_cache_lookups_total", result="miss") == 1  # the key, once
    assert delta("plan_cache_lookups_total", result="hit") >= 9


async def test_metrics_are_never_limited_and_need_no_key(make_settings, database_url):
    await set_plan(database_url, "anonymous", "1/minute")
    async with running_client(make_settings()) as client:
        scrapes = [await client.get("/metrics") for _ in range(5)]
        with_bad_key = await client.get("/metrics", headers={"X-API-Key": "nonsense"})
    assert {r.status_code for r in scrapes} == {200}
    assert with_bad_key.status_code == 200
