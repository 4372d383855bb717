"""Under overload an instance sheds the lowest plan priorities first: anonymous callers get a
503 with Retry-After before their request spends anything or runs anything, while pro callers
keep being served; idle, nothing is shed. Plans carry their priority (migration 0004, the CLI).
"""

import asyncio
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command

from {{ cookiecutter.package_name }} import migrations
from {{ cookiecutter.package_name }}.migrations import alembic_config
from {{ cookiecutter.package_name }}.ratelimit.http.shedding import LoadShedder
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import (
    TEST_DB_PREFIX,
    _admin,
    _asyncpg_dsn,
    _url_for,
    create_key,
    metric,
    run_cli,
    set_plan,
    wait_until,
)

# Low, so that a few CPU-heavy requests in flight are an overload.
LAG_MS = 50.0
# The shipped default, for the idle instance: a lag this long there would be a false alarm.
DEFAULT_LAG_MS = Settings.model_fields["load_shedding_lag_ms"].default
# Enough concurrent CPU-heavy requests (tests/busy_app.py: 30 ms each) to keep the event loop
# of one instance late by several times LAG_MS.
SATURATING_CLIENTS = 8


def start_busy_service(
    start_uvicorn: Callable[..., str],
    database_url: str,
    key_prefix: str,
    log: Path,
    lag_ms: float = LAG_MS,
) -> str:
    """tests/busy_app.py under uvicorn, shedding from `lag_ms`; returns its base URL."""
    return start_uvicorn(
        app="tests.busy_app:app",
        stderr=log,
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        DATABASE_URL=database_url,
        RATELIMIT_KEY_PREFIX=key_prefix,
        RATELIMIT_STRATEGY="moving-window",
        RATELIMIT_OUTAGE_POLICY="fail-open",
        # A starved event loop reads Redis's answers late; that is not a Redis outage.
        REDIS_TIMEOUT_SECONDS="3",
        LOAD_SHEDDING_LAG_MS=str(lag_ms),
        LOAD_SHEDDING_MAX_PRIORITY="1",
        LOG_LEVEL="INFO",
        ACCESS_LOG="false",
    )


@contextmanager
def saturated(base_url: str, key: str) -> Iterator[list[int]]:
    """Pro requests to the CPU-heavy route, back to back from several threads, until the block
    ends; yields the list their statuses are appended to."""
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=20) as client:
            while not stop.is_set():
                statuses.append(client.get("/v1/busy").status_code)

    threads = [threading.Thread(target=load) for _ in range(SATURATING_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def log_lines(log: Path, message: str | None = None) -> list[dict[str, Any]]:
    """The service's JSON log lines (those with `message`, when given)."""
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [entry for entry in entries if message in (None, entry.get("message"))]


def every_episode_ended(log: Path) -> bool:
    """At least one shedding episode, and each that started has ended (a slow start-up can be
    an episode of its own)."""
    started, ended = log_lines(log, "load shedding started"), log_lines(log, "load shedding ended")
    return len(started) == len(ended) >= 1


def test_overloaded_instance_sheds_anonymous_and_serves_pro(
    start_uvicorn, database_url, key_prefix, tmp_path
):
    asyncio.run(set_plan(database_url, "anonymous", "1000/minute"))
    asyncio.run(set_plan(database_url, "pro", "100000/minute"))
    pro_key = asyncio.run(create_key(database_url, "pro"))
    log = tmp_path / "service.log"
    base_url = start_busy_service(start_uvicorn, database_url, key_prefix, log)
    anonymous_answers: list[httpx.Response] = []
    pro_answers: list[httpx.Response] = []

    with httpx.Client(base_url=base_url, timeout=20) as client:

        def lag() -> float:
            return metric(client.get("/metrics").text, "event_loop_lag_seconds")

        with saturated(base_url, pro_key) as busy_statuses:
            wait_until(lambda: lag() >= 2 * LAG_MS / 1000, 10, "the event loop to lag")
            for _ in range(10):
                anonymous_answers.append(client.get("/v1/items"))
                pro_answers.append(client.get("/v1/items", headers={"X-API-Key": pro_key}))
        overloaded = len(anonymous_answers)

        def anonymous_served() -> bool:
            anonymous_answers.append(client.get("/v1/items"))
            return anonymous_answers[-1].status_code == 200

        wait_until(anonymous_served, 10, "anonymous callers to be served again")
        idle = [client.get("/v1/items") for _ in range(5)]
        wait_until(lambda: every_episode_ended(log), 10, "the end of every shedding episode")
        scraped = client.get("/metrics").text
    assert busy_statuses and set(busy_statuses) == {200}
    assert [answer.status_code for answer in pro_answers] == [200] * len(pro_answers)
    shed = [answer for answer in anonymous_answers if answer.status_code == 503]
    during = Counter(answer.status_code for answer in anonymous_answers[:overloaded])
    assert set(during) <= {200, 503} and during[503] >= overloaded // 2, during
    for answer in shed:
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "2"
        assert "overloaded" in answer.json()["detail"] and answer.json()["status"] == 503
        assert answer.json()["shed"] is True
        assert "ratelimit" not in answer.headers  # nothing was counted for it
    assert [answer.status_code for answer in idle] == [200] * len(idle)
    # Shed requests spent no quota: the last answer counts only the anonymous 200s.
    served = sum(answer.status_code == 200 for answer in anonymous_answers + idle)
    assert idle[-1].headers["x-ratelimit-remaining"] == str(1000 - served)
    assert metric(scraped, "load_shed_total", plan="anonymous") == len(shed)
    # Counted under the route asked for, though shed before routing.
    assert metric(
        scraped, "http_requests_total", method="GET", route="/v1/items", status="503"
    ) == len(shed)
    assert metric(scraped, "load_shed_total", plan="pro") == 0
    # Logged once when it started and once when it ended, not once per shed request.
    started, ended = log_lines(log, "load shedding started"), log_lines(log, "load shedding ended")
    assert all(entry["logger"] == "ratelimit" for entry in started + ended)
    assert {e["message"] for e in log_lines(log) if e["logger"] == "ratelimit"} == {
        "load shedding started",
        "load shedding ended",
    }
    # anonymous (0) shed first, free (1) from twice the threshold, pro (2) never
    assert all(entry["priorities"] in ([0], [0, 1]) for entry in started + ended)
    assert sum(entry["shed"].get("anonymous", 0) for entry in ended) == len(shed), ended
    assert not any("pro" in entry["shed"] for entry in ended)


def test_idle_instance_sheds_nothing(start_uvicorn, database_url, key_prefix, tmp_path):
    asyncio.run(set_plan(database_url, "anonymous", "1000/minute"))
    log = tmp_path / "service.log"
    base_url = start_busy_service(start_uvicorn, database_url, key_prefix, log, DEFAULT_LAG_MS)
    with httpx.Client(base_url=base_url, timeout=20) as client:
        statuses = []
        for _ in range(50):
            statuses.append(client.get("/v1/items").status_code)
            time.sleep(0.01)
        scraped = client.get("/metrics").text
    assert statuses == [200] * 50
    assert metric(scraped, "load_shed_total", plan="anonymous") == 0
    assert metric(scraped, "event_loop_lag_seconds") < DEFAULT_LAG_MS / 1000
    assert not log_lines(log, "load shedding started")


def test_shedding_is_graded_by_plan_priority():
    shedder = LoadShedder(lag_threshold=0.1, max_priority=1)
    shedding = {}
    for lag in (0.05, 0.1, 0.15, 0.2, 10.0):
        shedder.lag = lag
        shedding[lag] = [priority for priority in range(4) if shedder.sheds(priority)]
    # anonymous (0) from the threshold, free (1) from twice it, pro (2) and above never
    assert shedding == {0.05: [], 0.1: [0], 0.15: [0], 0.2: [0, 1], 10.0: [0, 1]}


async def test_a_loop_blocked_right_now_is_seen_before_the_probe_runs_again():
    shedder = LoadShedder(lag_threshold=0.1, max_priority=0)
    async with shedder.running():
        await asyncio.sleep(0.25)  # the probe has measured an idle loop
        assert not shedder.sheds(0)
        # Blocks the loop, as a CPU-heavy endpoint would: the probe is overdue and cannot run.
        time.sleep(0.3)  # noqa: ASYNC251
        assert shedder.sheds(0)
        await asyncio.sleep(0.25)
        assert not shedder.sheds(0)


SEEDED = [
    name
    for name in json.loads(files(migrations).joinpath("seed_plans.json").read_text())
    if name != "anonymous"
]


async def test_plans_carry_a_priority_anonymous_lowest_then_seed_order(database_url):
    code, stdout, _ = await run_cli(database_url, "plans", "list")
    assert code == 0
    priorities = dict(line.split("\t")[0:3:2] for line in stdout.splitlines())
    assert priorities["anonymous"] == "priority 0"
    assert [priorities[name] for name in SEEDED] == [
        f"priority {n}" for n in range(1, len(SEEDED) + 1)
    ]

    code, stdout, _ = await run_cli(database_url, "plans", "create", "team", "10/minute")
    assert code == 0 and stdout.rstrip().endswith("priority 1")  # above anonymous by default
    code, stdout, _ = await run_cli(database_url, "plans", "update", "team", "--priority", "7")
    assert code == 0 and stdout.rstrip().endswith("priority 7")
    code, _, stderr = await run_cli(database_url, "plans", "update", "team", "--priority", "-1")
    assert code == 2 and stderr.startswith("error: priority -1 must be")
    create = ("plans", "create", "gold", "1/minute")
    code, _, stderr = await run_cli(database_url, *create, "--priority", "-2")
    assert code == 2 and stderr.startswith("error: priority -2 must be")


async def _sql(url: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


def test_migration_0004_ranks_seeded_plans_and_puts_older_ones_at_1():
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}_0004"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = _url_for(name)
    config = alembic_config(url)
    try:
        command.upgrade(config, "0003")
        asyncio.run(
            _sql(url, "INSERT INTO plans (name, limits, route_limits, is_active) "
                      "VALUES ('team', '10/minute', '{}', true)")
        )  # fmt: skip
        command.upgrade(config, "0004")
        rows = asyncio.run(_sql(url, "SELECT name, priority FROM plans"))
        with pytest.raises(asyncpg.CheckViolationError):
            asyncio.run(_sql(url, "UPDATE plans SET priority = -1 WHERE name = 'team'"))
        command.downgrade(config, "0003")
        columns = asyncio.run(_sql(url, "SELECT * FROM plans LIMIT 1"))[0].keys()
        command.upgrade(config, "head")
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    ranks = {n: p for p, n in enumerate(SEEDED, start=1)}
    assert dict(rows) == {"anonymous": 0, **ranks, "team": 1}
    assert "priority" not in columns
