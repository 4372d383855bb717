"""Request ids, the refusal log and the metrics an operator relies on."""

import hmac
import json
import logging
import os
import re
import threading

import httpx

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.observability import metrics
from {{ cookiecutter.package_name }}.observability.logs import JsonFormatter
from {{ cookiecutter.package_name }}.observability.metrics import labelled

from .conftest import create_key, metric, running_client, set_plan, wait_for_line
from .test_concurrency import app_with_slow_routes

LOG_KEY = "a-test-key-of-the-deployment"


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


async def test_a_refusal_is_logged_on_the_ratelimit_logger_and_repeats_summarised(
    make_settings, caplog
):
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
    assert len(records) == 2  # the first refusal, and the summary written at shutdown
    assert records[1].more == 1  # type: ignore[attr-defined]
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


def access_lines(records: list[logging.LogRecord]) -> list[dict]:
    """The access lines among `records`, as the service writes them."""
    return [json.loads(JsonFormatter().format(r)) for r in records if r.name == "access"]


async def test_each_request_has_one_access_line_naming_its_route_plan_and_hashed_client(
    make_settings, database_url, caplog
):
    caplog.set_level(logging.INFO)
    key = await create_key(database_url, "pro")
    settings = make_settings(log_client_key=LOG_KEY)
    async with running_client(settings, client_ip="203.0.113.77") as client:
        anonymous = await client.get("/v1/items/7", headers={"X-Request-ID": "req-access-01"})
        with_key = await client.get("/v1/items", headers={"X-API-Key": key})
        await client.get("/health/live")
        await client.get("/health/ready")
    first, second = access_lines(caplog.records)  # one a request, none for the probes
    assert first["method"] == "GET" and first["route"] == "/v1/items/{item_id}"  # not the path
    assert first["status"] == anonymous.status_code and first["request_id"] == "req-access-01"
    assert first["plan"] == "anonymous" and first["level"] == "info"
    assert isinstance(first["duration_ms"], float) and 0 < first["duration_ms"] < 10_000
    assert second["plan"] == "pro" and second["route"] == "/v1/items"
    assert second["request_id"] == with_key.headers["x-request-id"]
    client_hash = hmac.new(LOG_KEY.encode(), b"ip:203.0.113.77", "sha256").hexdigest()[:16]
    assert first["client"] == second["client"] == client_hash
    assert "203.0.113.77" not in json.dumps([first, second])  # client addresses are hashed
    assert key not in json.dumps([first, second])


async def test_the_access_line_holds_the_client_address_only_when_asked_to(make_settings, caplog):
    caplog.set_level(logging.INFO)
    settings = make_settings(log_client_address=True, log_client_key=LOG_KEY)
    async with running_client(settings, "203.0.113.78") as client:
        await client.get("/v1/items")
    async with running_client(make_settings(access_log=False), "203.0.113.79") as client:
        await client.get("/v1/items")
    [line] = access_lines(caplog.records)  # none with ACCESS_LOG=false
    assert line["client_address"] == "203.0.113.78"
    expected = hmac.new(LOG_KEY.encode(), b"ip:203.0.113.78", "sha256").hexdigest()[:16]
    assert line["client"] == expected


def test_under_uvicorn_every_log_line_is_plain_json_and_access_lines_come_once(
    start_uvicorn, redis_url, key_prefix, database_url, tmp_path
):
    """uvicorn's own records carry `color_message` (ANSI colour escapes) and its access log the
    raw client address; as the README runs it (access log on), neither reaches the output."""
    stderr = tmp_path / "stderr.log"
    base_url = start_uvicorn(
        log_level="info",
        stderr=stderr,
        REDIS_URL=redis_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        DATABASE_URL=database_url,
    )
    for request_id in ("req-uvicorn-01", "req-uvicorn-02"):
        answer = httpx.get(f"{base_url}/v1/items", headers={"X-Request-ID": request_id})
        assert answer.status_code == 200
    # The access line is written after the response; the second request's line comes after
    # anything the first could add (a second copy of its line included).
    lines = wait_for_line(stderr, lambda line: "req-uvicorn-02" in line, "the access line")
    entries = [json.loads(line) for line in lines]  # each line one JSON object, or this fails
    assert any(e["logger"] == "uvicorn.error" for e in entries)  # uvicorn's records are there
    assert not any("color_message" in e for e in entries)
    assert not any("\x1b" in str(value) for e in entries for value in e.values())
    assert not any(e["logger"] == "uvicorn.access" for e in entries)
    access = [e for e in entries if e["logger"] == "access"]  # the start-up probes: not logged
    assert [(e["route"], e["status"], e["request_id"]) for e in access] == [
        ("/v1/items", 200, "req-uvicorn-01"),
        ("/v1/items", 200, "req-uvicorn-02"),
    ]


def test_uvicorn_access_log_stays_off_without_uvicorn_logging_config(make_settings):
    """uvicorn.run(log_config=None) leaves uvicorn's access logger handing its lines (with the
    raw client address) to the root logger's handler, ours."""
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.propagate = True
    create_app(make_settings())
    assert not uvicorn_access.hasHandlers()


async def test_request_durations_are_a_histogram_by_route_method_and_status_class(
    make_settings,
):
    async with running_client(make_settings()) as client:
        before = (await client.get("/metrics")).text
        for _ in range(7):  # anonymous callers get 5/minute here: five 200s, then two 429s
            await client.get("/v1/items")
        after = (await client.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        return metric(after, f"http_request_duration_seconds_{name}", **labels) - metric(
            before, f"http_request_duration_seconds_{name}", **labels
        )

    route = {"method": "GET", "route": "/v1/items"}
    assert delta("count", status="2xx", **route) == 5
    assert delta("count", status="4xx", **route) == 2
    assert delta("bucket", le="+Inf", status="2xx", **route) == 5
    assert 0 < delta("sum", status="2xx", **route) < 5 * 10


def test_metrics_of_several_workers_are_added_up(start_uvicorn, database_url, key_prefix, tmp_path):
    """With `--workers N` and PROMETHEUS_MULTIPROC_DIR (README), /metrics counts every
    worker's requests, whichever worker answers the scrape."""
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    base_url = start_uvicorn(
        "{{ cookiecutter.package_name }}.main:app",
        workers=2,
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        DATABASE_URL=database_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
    )
    sent = 40
    for _ in range(sent):  # a new connection each: the kernel spreads them over the workers
        assert httpx.get(f"{base_url}/health/live", timeout=10).status_code == 200
    pids = {path.name.split("_")[-1] for path in multiproc.glob("counter_*.db")}
    assert len(pids) == 2, pids  # both workers answered some
    scraped = httpx.get(f"{base_url}/metrics", timeout=10).text
    labels = {"method": "GET", "route": "/health/live", "status": "200"}
    # start_uvicorn's own readiness polls are /health/live requests too.
    assert metric(scraped, "http_requests_total", **labels) >= sent


def test_a_sync_endpoint_may_update_metrics_from_its_worker_thread():
    """prometheus-client's objects take a lock: updates from threads are never lost."""
    counter = labelled(metrics.RATELIMIT_DECISIONS, "test-plan", "/threads", "allowed")
    before = counter._value.get()

    def work() -> None:
        for _ in range(10_000):
            labelled(metrics.RATELIMIT_DECISIONS, "test-plan", "/threads", "allowed").inc()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter._value.get() - before == 80_000


async def test_documentation_pages_and_answers_before_routing_are_counted_under_their_route(
    make_settings,
):
    async with running_client(make_settings()) as client:
        before = (await client.get("/metrics")).text
        await client.get("/openapi.json")
        await client.get("/docs")
        await client.get("/v1/items/3", headers={"X-API-Key": "not-a-key"})  # 401 before routing
        await client.get("/no/such/path")
        scraped = (await client.get("/metrics")).text
    for route, status in [
        ("/openapi.json", "200"),
        ("/docs", "200"),
        ("/v1/items/{item_id}", "401"),
        ("<unmatched>", "404"),
    ]:
        labels = {"method": "GET", "route": route, "status": status}
        counted = metric(scraped, "http_requests_total", **labels)
        assert counted - metric(before, "http_requests_total", **labels) == 1, route
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "200"}
    assert metric(scraped, "http_requests_total", **unmatched) == metric(
        before, "http_requests_total", **unmatched
    )


async def test_the_access_lines_duration_is_in_milliseconds(make_settings, caplog):
    # A request of a known length (the tests' /slow sleeps 0.3 s): its duration_ms says 300
    # or a little more, not 0.3 (seconds) nor 300,000 (microseconds).
    caplog.set_level(logging.INFO)
    settings = make_settings()
    async with running_client(settings, app=app_with_slow_routes(settings)) as client:
        assert (await client.get("/slow?seconds=0.3")).status_code == 200
    (line,) = [line for line in access_lines(caplog.records) if line["route"] == "/slow"]
    assert 300 <= line["duration_ms"] < 3_000, line
