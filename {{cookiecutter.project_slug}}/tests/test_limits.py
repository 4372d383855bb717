"""The limits routes declare, counted in the real Redis at REDIS_URL."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute, iter_route_contexts
from limits import parse
from limits.limits import GRANULARITIES

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.plans.grammar import MAX_COST, MAX_MULTIPLES
from {{ cookiecutter.package_name }}.ratelimit import limiter
from {{ cookiecutter.package_name }}.ratelimit.http.responses import QuotaHeaders
from {{ cookiecutter.package_name }}.ratelimit.http.route import RateLimitedRoute, documentation_paths
from {{ cookiecutter.package_name }}.ratelimit.rules.applied import AppliedLimit, standalone_limits
from {{ cookiecutter.package_name }}.ratelimit.rules.counting import Decision, LimitResult
from {{ cookiecutter.package_name }}.settings import STRATEGIES

from .conftest import free_port, running_client, set_plan

PACKAGE = "{{ cookiecutter.package_name }}"


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_limit_admits_exactly_n_then_refuses(make_settings, database_url, strategy):
    # An hour-long window, so that a window boundary is (almost) never crossed mid-test.
    await set_plan(database_url, "anonymous", "5/hour")
    settings = make_settings(ratelimit_strategy=strategy)
    async with running_client(settings) as client:
        statuses = [(await client.get("/v1/items")).status_code for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3


@pytest.mark.parametrize("where", ["redis", "memory"])
async def test_gcra_refills_one_request_per_interval(make_settings, database_url, where):
    await set_plan(database_url, "anonymous", "4/second")  # a bucket of 4, one back each 250 ms
    overrides = {"redis_url": ""} if where == "memory" else {}
    async with running_client(make_settings(ratelimit_strategy="gcra", **overrides)) as client:
        burst = [await client.get("/v1/items") for _ in range(5)]
        await asyncio.sleep(0.3)
        later = [(await client.get("/v1/items")).status_code for _ in range(2)]
    assert [r.status_code for r in burst] == [200] * 4 + [429]
    assert burst[-1].headers["retry-after"] == "1"
    assert later == [200, 429]


async def test_429_is_problem_json_with_retry_after_and_quota_headers(make_settings):
    async with running_client(make_settings()) as client:
        for _ in range(5):
            await client.get("/v1/items")
        response = await client.get("/v1/items")
    now = time.time()

    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 429 and body["title"] == "Too Many Requests"
    assert body["instance"] == "/v1/items" and body["policy"] == "anonymous"
    assert "5 per 1 minute" in body["detail"]

    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    assert response.headers["x-ratelimit-limit"] == "5"
    assert response.headers["x-ratelimit-remaining"] == "0"
    reset = response.headers["x-ratelimit-reset"]
    assert reset.isdigit() and now <= int(reset) <= now + 61
    assert response.headers["ratelimit-policy"] == '"anonymous";q=5;w=60'
    match = re.fullmatch(r'"anonymous";r=0;t=(\d+)', response.headers["ratelimit"])
    assert match and int(match[1]) == int(retry_after)


async def test_admitted_responses_count_down_without_retry_after(make_settings):
    async with running_client(make_settings()) as client:
        responses = [await client.get("/v1/items") for _ in range(5)]
    assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["4", "3", "2", "1", "0"]
    assert [r.headers["ratelimit"].split(";")[1] for r in responses] == [
        "r=4", "r=3", "r=2", "r=1", "r=0",
    ]  # fmt: skip
    assert all("retry-after" not in r.headers for r in responses)
    assert all(r.headers["ratelimit-policy"] == '"anonymous";q=5;w=60' for r in responses)
    now = time.time()
    resets = [r.headers["x-ratelimit-reset"] for r in responses]
    assert all(reset.isdigit() and now <= int(reset) <= now + 61 for reset in resets)


async def test_key_is_the_route_template_not_the_raw_url(make_settings):
    async with running_client(make_settings()) as client:
        statuses = [(await client.get(f"/v1/items/{n}")).status_code for n in range(1, 8)]
        other_route = await client.get("/v1/items")
    assert statuses == [404] * 5 + [429] * 2  # items 1..5 do not exist; 6 and 7 share the budget
    assert other_route.status_code == 200  # a different route template has its own budget


async def test_an_answer_from_the_endpoint_carries_the_quota_it_used(make_settings):
    async with running_client(make_settings()) as client:
        missing = await client.get("/v1/items/41")  # the endpoint's own 404
        invalid = await client.post("/v1/items", json={"name": ""})  # FastAPI's 422
    # Each route template has its own budget of the plan's 5 per minute: one used in each.
    assert missing.status_code == 404 and missing.headers["x-ratelimit-remaining"] == "4"
    assert invalid.status_code == 422 and invalid.headers["x-ratelimit-remaining"] == "4"


async def test_a_route_added_on_the_app_is_limited_too(make_settings):
    settings = make_settings()
    app = create_app(settings)

    @app.get("/v1/ping")
    async def ping(request: Request) -> dict[str, str]:
        return {"pong": "yes"}

    async with running_client(settings, app=app) as client:
        statuses = [(await client.get("/v1/ping")).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]


async def test_a_router_without_the_rate_limited_route_class_stops_start_up(make_settings):
    settings = make_settings()
    app = create_app(settings)
    router = APIRouter(prefix="/v1/forgotten")

    @router.get("")
    async def forgotten() -> list[str]:
        return []

    app.include_router(router)  # after create_app, as an extension would
    with pytest.raises(TypeError, match="/v1/forgotten is not rate limited"):
        async with running_client(settings, app=app):
            pass


async def test_router_route_declares_a_stricter_limit_on_top_of_the_plan(
    make_settings, database_url
):
    await set_plan(database_url, "anonymous", "100/minute")
    async with running_client(make_settings()) as client:
        responses = [await client.post("/v1/items", json={"name": "n"}) for _ in range(12)]
    assert [r.status_code for r in responses] == [201] * 10 + [429] * 2
    refused = responses[-1]
    assert refused.json()["policy"] == "create_item"
    assert refused.headers["x-ratelimit-limit"] == "10"
    assert refused.headers["ratelimit-policy"] == '"anonymous";q=100;w=60, "create_item";q=10;w=60'


async def test_shared_limit_is_reported_under_its_scope(make_settings, database_url):
    await set_plan(database_url, "anonymous", "100/minute")
    async with running_client(make_settings()) as client:
        responses = [await client.get("/v1/items/export") for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert responses[-1].json()["policy"] == "exports"


async def test_each_client_address_has_its_own_budget(make_settings):
    settings = make_settings()
    async with running_client(settings, client_ip="198.51.100.1") as first:
        assert [(await first.get("/v1/items")).status_code for _ in range(6)][-1] == 429
    async with running_client(settings, client_ip="198.51.100.2") as second:
        assert (await second.get("/v1/items")).status_code == 200


async def test_health_is_never_limited(make_settings, database_url):
    await set_plan(database_url, "anonymous", "1/minute")
    async with running_client(make_settings()) as client:
        responses = [await client.get(path) for path in ["/health/live", "/health/ready"] * 20]
        limited = await client.get("/v1/items")
        second = await client.get("/v1/items")
    assert {r.status_code for r in responses} == {200}
    assert all("x-ratelimit-limit" not in r.headers for r in responses)
    assert limited.status_code == 200 and "x-ratelimit-limit" in limited.headers
    assert second.status_code == 429  # the probes spent none of the caller's budget


@pytest.mark.parametrize(
    "credentials",
    [{"X-API-Key": "sk_stale_key"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["stale-key", "other-scheme"],
)
@pytest.mark.parametrize("probe", ["/health/live", "/health/ready"])
async def test_probes_answer_whatever_credentials_they_carry(make_settings, probe, credentials):
    # An orchestrator's probe may carry a stale key: a 401 there would kill a healthy pod.
    async with running_client(make_settings()) as client:
        response = await client.get(probe, headers=credentials)
    assert response.status_code == 200


async def test_two_routes_in_one_shared_limit_scope_share_its_budget(make_settings, database_url):
    await set_plan(database_url, "anonymous", "100/minute")
    settings = make_settings()
    app = create_app(settings)
    router = APIRouter(prefix="/v1/reports", route_class=RateLimitedRoute)

    @router.get("/export")
    @limiter.shared_limit("5/minute", scope="exports")  # the scope of /v1/items/export
    async def export_reports(request: Request) -> list[str]:
        return []

    app.include_router(router)
    async with running_client(settings, app=app) as client:
        paths = ["/v1/items/export", "/v1/reports/export"] * 3
        statuses = [(await client.get(path)).status_code for path in paths]
    assert statuses == [200] * 5 + [429]


async def test_two_processes_whose_first_requests_hit_different_paths_share_one_budget(
    start_uvicorn, redis_url, key_prefix, database_url
):
    # Limits worked out on a process's first request are kept for later ones: the key must
    # come from the route template, never from the path that happened to come first.
    env = {"REDIS_URL": redis_url, "RATELIMIT_KEY_PREFIX": key_prefix, "DATABASE_URL": database_url}
    first, second = start_uvicorn(**env), start_uvicorn(**env)
    async with httpx.AsyncClient(timeout=30) as client:
        on_first = [(await client.get(f"{first}/v1/items/1")).status_code for _ in range(3)]
        on_second = [(await client.get(f"{second}/v1/items/2")).status_code for _ in range(2)]
        over = await client.get(f"{second}/v1/items/3")
    assert on_first + on_second == [404] * 5  # items that do not exist, each counted
    assert over.status_code == 429


async def test_a_moving_window_refusal_is_admitted_again_once_the_window_moves(
    make_settings, database_url
):
    await set_plan(database_url, "anonymous", "2/second")
    async with running_client(make_settings(ratelimit_strategy="moving-window")) as client:
        burst = [await client.get("/v1/items") for _ in range(3)]
        await asyncio.sleep(1.1)
        later = await client.get("/v1/items")
    assert [r.status_code for r in burst] == [200, 200, 429]
    assert burst[-1].headers["ratelimit-policy"] == '"anonymous";q=2;w=1'
    assert later.status_code == 200


async def test_readiness_reports_redis(make_settings):
    async with running_client(make_settings()) as client:
        response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"redis": "ok", "database": "ok"}}


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_limit_at_the_grammars_bounds_is_counted_with_valid_headers(
    make_settings, database_url, strategy
):
    # 10**9 hits in 10 years: every count, PEXPIRE and header it leads to stays valid.
    await set_plan(database_url, "anonymous", "1000000000/10 years")
    async with running_client(make_settings(ratelimit_strategy=strategy)) as client:
        answers = [await client.get("/v1/items") for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 200]
    assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["999999999", "999999998"]
    ten_years = 10 * 360 * 86400
    assert time.time() < int(answers[0].headers["x-ratelimit-reset"]) <= time.time() + ten_years + 1


def test_a_declared_limit_or_cost_past_the_grammars_bounds_is_refused():
    window = parse("1/11 years")
    with pytest.raises(ValueError, match="a window is at most 10 years"):
        AppliedLimit(item=window, namespace=("route", "/x"), policy="x")
    hits = parse("1000000001/second")
    with pytest.raises(ValueError, match="at most 1000000000 hits"):
        AppliedLimit(item=hits, namespace=("route", "/x"), policy="x")
    for cost in (0, MAX_COST + 1):
        with pytest.raises(ValueError, match="cost"):
            AppliedLimit(item=parse("10/minute"), namespace=("route", "/x"), policy="x", cost=cost)
    assert AppliedLimit(item=parse("10/minute"), namespace=("r",), policy="x", cost=MAX_COST)


def test_the_bounds_are_ten_years_in_every_unit():
    windows = {unit: MAX_MULTIPLES[unit] * GRANULARITIES[unit].GRANULARITY.seconds
               for unit in MAX_MULTIPLES}  # fmt: skip
    assert windows == dict.fromkeys(GRANULARITIES, 10 * 360 * 86400)


def test_the_probes_are_routed_first_and_matching_costs_what_fastapis_does(make_settings):
    app = create_app(make_settings())
    paths = [context.path for context in iter_route_contexts(app.routes)]
    api = [path for path in paths if path not in documentation_paths(app)]
    assert api[:2] == ["/health/live", "/health/ready"]
    # The router tries every route before the one it finds: an override of `matches` would
    # cost every request once per route (README, Routing cost).
    assert RateLimitedRoute.matches is APIRoute.matches


UNLIMITED_APP = """
from fastapi import APIRouter

from {package}.main import app

router = APIRouter()


@router.get("/v1/forgotten")
async def forgotten() -> list[str]:
    return []


app.include_router(router)
"""


def test_a_route_refused_at_start_up_is_one_line_not_a_traceback(
    database_url, redis_url, key_prefix, tmp_path
):
    (tmp_path / "unlimited_app.py").write_text(UNLIMITED_APP.format(package=PACKAGE))
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "RATELIMIT_KEY_PREFIX": key_prefix,
    }
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "unlimited_app:app", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "File " not in done.stderr, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "/v1/forgotten" in line]
    assert len(refusals) == 1, done.stderr
    record = json.loads(refusals[0])  # the service's JSON log line, at error
    assert record["level"] == "error" and record["message"] == (
        "route /v1/forgotten is not rate limited: create its router with "
        "APIRouter(route_class=RateLimitedRoute), or mark it @limiter.exempt"
    )


def test_the_remaining_quota_header_is_never_negative():
    # Whatever a counter reports (an overdrawn window, a counter from an older release).
    limit_set = standalone_limits("x", [parse("10/minute")])
    result = LimitResult(limit_set.limits[0], True, -3, time.time() + 30)
    headers = dict(QuotaHeaders(Decision(limit_set, (result,)))())
    assert headers[b"x-ratelimit-remaining"] == b"0"
    assert headers[b"ratelimit"].startswith(b'"x";r=0;')
