"""No way into the service escapes the caller check and the limits: unmatched paths, HEAD,
WebSocket routes, mounted apps, odd client addresses, and slowapi's own configuration."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import WebSocket
from starlette.staticfiles import StaticFiles
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.ratelimit import exempt_app, limiter

from .conftest import REDIS_URL, running_client


def test_slowapi_reads_none_of_the_services_settings(tmp_path: Path):
    # slowapi reads RATELIMIT_* from the environment and ./.env, where several of those names
    # are this service's settings: RATELIMIT_STRATEGY=gcra once crashed the app at import.
    (tmp_path / ".env").write_text(
        "RATELIMIT_STRATEGY=gcra\nRATELIMIT_ENABLED=false\nRATELIMIT_DEFAULT=1/hour\n"
    )
    probe = (
        "from {{ cookiecutter.package_name }}.ratelimit import limiter; "
        "assert limiter.enabled and not limiter._default_limits, 'slowapi read .env'"
    )
    env = {**os.environ, "RATELIMIT_STRATEGY": "gcra"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


async def test_a_scan_of_unmatched_paths_spends_the_plan_budget(make_settings):
    async with running_client(make_settings()) as client:
        responses = [await client.get(f"/scan/{n}/admin.php") for n in range(7)]
    assert [r.status_code for r in responses] == [404] * 5 + [429] * 2
    assert responses[0].headers["ratelimit-policy"] == '"anonymous";q=5;w=60'
    assert responses[4].headers["x-ratelimit-remaining"] == "0"
    assert responses[-1].headers["content-type"] == "application/problem+json"
    assert int(responses[-1].headers["retry-after"]) >= 1


async def test_head_is_answered_as_get_and_spends_the_get_budget(make_settings):
    async with running_client(make_settings()) as client:
        head = await client.head("/v1/items")
        gets = [(await client.get("/v1/items")).status_code for _ in range(5)]
    assert head.status_code == 200
    assert head.headers["x-ratelimit-remaining"] == "4"
    assert gets == [200] * 4 + [429]


async def test_limiter_enabled_false_counts_nothing_and_sends_no_quota_headers(make_settings):
    limiter.enabled = False  # slowapi's documented switch, as a user's own tests set it
    try:
        async with running_client(make_settings()) as client:
            responses = [await client.get("/v1/items") for _ in range(8)]
            unmatched = [await client.get("/nowhere") for _ in range(8)]
    finally:
        limiter.enabled = True
    assert [r.status_code for r in responses] == [200] * 8
    assert [r.status_code for r in unmatched] == [404] * 8
    assert not any("x-ratelimit-limit" in r.headers for r in responses + unmatched)


async def test_a_websocket_route_stops_start_up_unless_exempt(make_settings):
    settings = make_settings()
    app = create_app(settings)

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()

    with pytest.raises(TypeError, match="/v1/stream is a WebSocket route"):
        async with running_client(settings, app=app):
            pass


async def test_a_mounted_app_stops_start_up_unless_marked_exempt(make_settings, tmp_path):
    (tmp_path / "hello.txt").write_text("hello")
    settings = make_settings()
    app = create_app(settings)
    app.mount("/static", StaticFiles(directory=tmp_path))
    with pytest.raises(TypeError, match="/static is a mounted app"):
        async with running_client(settings, app=app):
            pass

    app = create_app(settings)
    app.mount("/static", exempt_app(StaticFiles(directory=tmp_path)))
    async with running_client(settings, app=app) as client:
        assert (await client.get("/static/hello.txt")).text == "hello"


ECHO_APP = """
from fastapi import WebSocket

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.ratelimit import limiter

app = create_app()


@app.websocket("/v1/echo")
@limiter.exempt
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()
"""


def test_an_exempt_websocket_still_checks_the_api_key(start_uvicorn, tmp_path, key_prefix):
    (tmp_path / "echo_app.py").write_text(ECHO_APP)
    base_url = start_uvicorn(
        app="echo_app:app",
        REDIS_URL=REDIS_URL,
        DATABASE_URL="",
        RATELIMIT_KEY_PREFIX=key_prefix,
    )
    url = base_url.replace("http://", "ws://") + "/v1/echo"
    with pytest.raises(InvalidStatus) as denied:
        connect(url, additional_headers={"X-API-Key": "sk_nope_nope"}, open_timeout=10)
    assert denied.value.response.status_code == 401
    assert denied.value.response.headers["content-type"] == "application/problem+json"
    with connect(url, open_timeout=10) as websocket:
        assert websocket.recv(timeout=10) == "hello"


async def test_anonymous_ipv6_callers_are_counted_per_64_network(make_settings):
    settings = make_settings(trusted_proxies="203.0.113.10")
    async with running_client(settings, client_ip="203.0.113.10") as proxy:

        async def get_from(address: str) -> int:
            response = await proxy.get("/v1/items", headers={"X-Forwarded-For": address})
            return response.status_code

        # Five addresses of one /64, written as clients and proxies write them.
        same_network = [
            await get_from(address)
            for address in (
                "2001:db8:0:7::1",
                "2001:DB8:0:7::2",
                "2001:0db8:0000:0007:0000:0000:0000:0003",
                "2001:db8:0:7:ffff:ffff:ffff:ffff",
                "2001:db8:0:7:1:2:3:4",
                "2001:db8:0:7::99",
            )
        ]
        other_network = await get_from("2001:db8:0:8::1")
    assert same_network == [200] * 5 + [429]
    assert other_network == 200


async def test_ipv4_mapped_ipv6_is_the_same_caller_as_ipv4(make_settings):
    settings = make_settings(trusted_proxies="203.0.113.10")
    async with running_client(settings, client_ip="203.0.113.10") as proxy:
        statuses = [
            (await proxy.get("/v1/items", headers={"X-Forwarded-For": address})).status_code
            for address in ["198.51.100.7", "::ffff:198.51.100.7"] * 3
        ]
    assert statuses == [200] * 5 + [429]


@pytest.mark.parametrize("forwarded", ["garbage", "unknown", "<script>", "300.1.2.3"])
async def test_a_forwarded_entry_that_is_no_address_is_a_400_not_a_key(make_settings, forwarded):
    settings = make_settings(trusted_proxies="203.0.113.10")
    async with running_client(settings, client_ip="203.0.113.10") as proxy:
        responses = [
            await proxy.get("/v1/items", headers={"X-Forwarded-For": forwarded}) for _ in range(7)
        ]
    assert {r.status_code for r in responses} == {400}
    assert responses[0].headers["content-type"] == "application/problem+json"
    assert "client address" in responses[0].json()["detail"]
