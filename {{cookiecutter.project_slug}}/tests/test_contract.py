"""The API contract: one error shape for every error, an OpenAPI document that lists what the
limiter answers, and a quota endpoint that spends nothing. (Schemathesis checks the whole
document against the running service in test_security.py.)"""

import pytest
import redis
from fastapi import APIRouter, Request

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.ratelimit import RateLimitedRoute
from {{ cookiecutter.package_name }}.settings import STRATEGIES

from .conftest import running_client, set_plan


async def test_the_frameworks_errors_are_problem_json_too(make_settings):
    app = create_app(make_settings())
    broken = APIRouter(route_class=RateLimitedRoute)

    @broken.get("/v1/broken")
    async def fails(request: Request) -> None:
        raise RuntimeError("secret-from-the-exception")

    app.include_router(broken)
    async with running_client(make_settings(), app=app) as client:
        not_found = await client.get("/no/such/path")
        not_allowed = await client.delete("/v1/items")
        invalid = await client.post("/v1/items", json={"name": ""})
        failed = await client.get("/v1/broken")
    for response, status in [(not_found, 404), (not_allowed, 405), (invalid, 422), (failed, 500)]:
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == status and body["type"] == "about:blank", body
    assert not_allowed.headers["allow"] == "GET, POST"  # both routes of the path, not the first
    assert invalid.json()["errors"][0]["loc"] == ["body", "name"]
    assert failed.json()["request_id"] == failed.headers["x-request-id"]
    assert "secret-from-the-exception" not in failed.text


async def test_the_document_lists_the_limiters_answers_where_they_can_come(make_settings):
    async with running_client(make_settings()) as client:
        document = (await client.get("/openapi.json")).json()
    async with running_client(make_settings(ratelimit_outage_policy="fail-closed")) as client:
        closed = (await client.get("/openapi.json")).json()
    async with running_client(make_settings(load_shedding_lag_ms=500)) as client:
        shedding = (await client.get("/openapi.json")).json()
    create = document["paths"]["/v1/items"]["post"]
    refs = {status: answer.get("$ref", "") for status, answer in create["responses"].items()}
    assert refs["429"].endswith("/TooManyRequests")
    assert refs["401"].endswith("/Unauthorized") and refs["503"].endswith("/Unavailable")
    assert refs["403"].endswith("/Forbidden")  # a blocked key
    assert refs["413"].endswith("/ContentTooLarge") and refs["422"].endswith("/ValidationFailed")
    assert {"431", "500"} <= set(refs)
    assert {"RateLimit", "X-RateLimit-Remaining", "X-Request-ID"} <= set(
        create["responses"]["201"]["headers"]
    )
    assert create["security"] == [{"bearer": []}, {"apiKey": []}, {}]
    listing = document["paths"]["/v1/items"]["get"]["responses"]
    assert "413" not in listing  # no body to be too large
    assert "404" in document["paths"]["/v1/items/{item_id}"]["get"]["responses"]
    live = document["paths"]["/health/live"]["get"]
    assert not {"401", "403", "429", "503"} & set(live["responses"]) and "security" not in live
    components = document["components"]
    too_many = components["responses"]["TooManyRequests"]
    assert {"Retry-After", "RateLimit-Policy", "X-RateLimit-Reset"} <= set(too_many["headers"])
    assert too_many["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert set(components["securitySchemes"]) == {"bearer", "apiKey"}
    assert "HTTPValidationError" not in components["schemas"]
    assert "Redis" not in components["responses"]["Unavailable"]["description"]
    assert "Redis" in closed["components"]["responses"]["Unavailable"]["description"]
    assert "overloaded" not in components["responses"]["Unavailable"]["description"]
    assert "overloaded" in shedding["components"]["responses"]["Unavailable"]["description"]


def _stored(redis_url: str, prefix: str) -> dict[bytes, bytes | None]:
    client = redis.Redis.from_url(redis_url)
    return {key: client.dump(key) for key in client.scan_iter(match=f"{prefix}:*")}


@pytest.mark.parametrize("storage", ["redis", "memory"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_the_quota_endpoint_reports_every_quota_and_spends_none(
    strategy, storage, make_settings, redis_url, key_prefix
):
    settings = make_settings(
        ratelimit_strategy=strategy, redis_url=redis_url if storage == "redis" else None
    )
    async with running_client(settings) as client:
        for _ in range(2):
            await client.get("/v1/items")
        before = _stored(redis_url, key_prefix)
        reports = [(await client.get("/v1/rate-limit")).json() for _ in range(2)]
        after = _stored(redis_url, key_prefix)
        listed = await client.get("/v1/items")
    for report in reports:
        assert report["plan"] == "anonymous"
        items = [quota for quota in report["quotas"] if quota["route"] == "/v1/items"]
        assert [(q["limit"], q["remaining"], q["window"]) for q in items] == [(5, 3, 60)]
        assert {quota["route"] for quota in report["quotas"]} >= {
            "/v1/items/{item_id}",
            "/v1/rate-limit",
            "<unmatched>",
        }
    # the peek wrote nothing: only the quota endpoint's own counters changed, by its own check
    assert {k: v for k, v in after.items() if b"/v1/rate-limit" not in k} == {
        k: v for k, v in before.items() if b"/v1/rate-limit" not in k
    }
    assert listed.headers["x-ratelimit-remaining"] == "2"  # the third of 5: none spent


async def test_the_quota_endpoint_is_limited_by_a_limit_of_its_own(make_settings, database_url):
    await set_plan(database_url, "anonymous", "1000/minute")
    async with running_client(make_settings(ratelimit_strategy="fixed-window")) as client:
        answers = [(await client.get("/v1/rate-limit")).status_code for _ in range(121)]
        refused = await client.get("/v1/rate-limit")
    assert answers[:120] == [200] * 120 and answers[120] == 429
    assert refused.json()["policy"] == "rate_limit"


def _required_headers(document: dict, path: str, method: str, status: str) -> set[str]:
    """The headers the document promises on one answer (their names, lowercase)."""
    answer = document["paths"][path][method]["responses"][status]
    promised = set()
    for name, header in answer.get("headers", {}).items():
        if "$ref" in header:
            header = document["components"]["headers"][header["$ref"].rsplit("/", 1)[1]]
        if header.get("required"):
            promised.add(name.lower())
    return promised


# The rule: every mode that changes what the service answers runs the contract test, since the
# document is generated from the settings too (schemathesis runs them in test_security.py).
MODES = {
    "enforce": {},
    "shadow": {"ratelimit_mode": "shadow"},
    "fail-closed": {"ratelimit_outage_policy": "fail-closed"},
    "trusted-proxies": {"trusted_proxies": ["203.0.113.10"]},
}


@pytest.mark.parametrize("mode", MODES)
async def test_every_mode_sends_the_headers_its_document_promises(mode, make_settings):
    async with running_client(make_settings(**MODES[mode]), client_ip="203.0.113.10") as client:
        document = (await client.get("/openapi.json")).json()
        listed = await client.get("/v1/items")
        created = await client.post("/v1/items", json={"name": "n"})
        forwarded = await client.get("/v1/items", headers={"X-Forwarded-For": "not-an-address"})
    for response, path, method in [(listed, "/v1/items", "get"), (created, "/v1/items", "post")]:
        status = str(response.status_code)
        assert status.startswith("2"), response.text
        promised = _required_headers(document, path, method, status)
        assert "x-request-id" in promised
        assert promised <= set(response.headers), promised - set(response.headers)
    if mode == "shadow":  # nothing can refuse: no quota to tell
        assert "ratelimit" not in listed.headers
        assert "ratelimit" not in _required_headers(document, "/v1/items", "get", "200")
    else:
        assert "ratelimit" in _required_headers(document, "/v1/items", "get", "200")
    # 400 for a forwarded non-address: answered, and documented on a route without a body,
    # only where proxies are trusted. (A route taking a body always lists it: FastAPI's 400
    # for a body it cannot decode.)
    documented = {
        status
        for operations in document["paths"].values()
        for operation in operations.values()
        if "requestBody" not in operation
        for status in operation["responses"]
    }
    assert "400" in document["paths"]["/v1/items"]["post"]["responses"]
    if mode == "trusted-proxies":
        assert forwarded.status_code == 400
        assert forwarded.headers["content-type"] == "application/problem+json"
        assert "400" in document["paths"]["/v1/items"]["get"]["responses"]
    else:
        assert forwarded.status_code == 200
        assert "400" not in documented
