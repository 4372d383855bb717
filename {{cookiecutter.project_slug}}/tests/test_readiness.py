"""Readiness tells the orchestrator the truth and cannot be turned into load: a flood of
probes costs Redis and the database one check a second; a wrong Redis password is said as
such; a database schema behind the code (started before `db upgrade`) is reported, not a 500."""

import asyncio
import logging
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import event

from {{ cookiecutter.package_name }}.migrations import alembic_config, known_revisions
from {{ cookiecutter.package_name }}.plans.keys import generate_key

from .conftest import (
    TEST_DB_PREFIX,
    _admin,
    _asyncpg_dsn,
    _url_for,
    free_port,
    running_client,
    wait_until,
)


def pings(port: int) -> int:
    stats = redis.Redis(port=port).info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


async def test_a_flood_of_readiness_probes_costs_one_check_a_second(make_settings, throwaway_redis):
    settings = make_settings(redis_url=throwaway_redis.url)
    async with running_client(settings) as client:
        queries: list[str] = []
        engine = client._transport.app.state.db_engine  # type: ignore[attr-defined]
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
        pings_before = pings(throwaway_redis.port)
        started = time.monotonic()
        answers: list[httpx.Response] = []
        while time.monotonic() - started < 2.5:  # 50 probes at once, again and again
            answers += await asyncio.gather(*(client.get("/health/ready") for _ in range(50)))
        elapsed = time.monotonic() - started
        checks_allowed = int(elapsed) + 2  # one a second, and the first one
        assert {answer.status_code for answer in answers} == {200}
        assert len(answers) >= 200
        assert pings(throwaway_redis.port) - pings_before <= checks_allowed
        assert 1 <= len(queries) <= checks_allowed, queries
        # The answer is at most a second old: a Redis stopped now is seen within a second or so.
        throwaway_redis.stop()
        await asyncio.sleep(1.1)
        after = await client.get("/health/ready")
    assert after.status_code == 503 and after.json()["checks"]["redis"] == "unreachable"


@pytest.fixture
def redis_with_password(tmp_path: Path):
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
         "--save", "", "--appendonly", "no", "--requirepass", "the-right-password"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool:
        try:
            return bool(redis.Redis(port=port, password="the-right-password").ping())
        except redis.RedisError:
            return False

    try:
        wait_until(answers, 10, f"redis-server on port {port}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("credentials", [":a-wrong-password@", ""], ids=["wrong", "none"])
async def test_a_wrong_redis_password_is_said_as_authentication_failed(
    make_settings, redis_with_password, credentials, caplog
):
    caplog.set_level(logging.WARNING)
    url = f"redis://{credentials}127.0.0.1:{redis_with_password}/0"
    async with running_client(make_settings(redis_url=url)) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "authentication failed"
    [line] = [r.getMessage() for r in caplog.records if "at start-up" in r.getMessage()]
    assert "authentication failed" in line and "does not answer" not in line
    assert "a-wrong-password" not in caplog.text


@pytest.fixture
async def previous_revision_database():
    """A database migrated to the revision before head only, as before `db upgrade` runs."""
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = _url_for(name)
    head, _ = known_revisions()
    previous = ScriptDirectory.from_config(alembic_config()).get_revision(head).down_revision
    assert isinstance(previous, str)
    await asyncio.to_thread(command.upgrade, alembic_config(url), previous)
    yield url, previous, head
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_code_started_before_the_upgrade_says_so_and_answers_no_500(
    make_settings, previous_revision_database, caplog
):
    caplog.set_level(logging.WARNING)
    url, previous, head = previous_revision_database
    async with running_client(make_settings(database_url=url)) as client:
        ready = await client.get("/health/ready")
        anonymous = await client.get("/v1/items")
        unknown_key, _ = generate_key()  # well-formed: its lookup reads the old schema
        keyed = await client.get("/v1/items", headers={"X-API-Key": unknown_key})
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")

        async def ready_after_upgrade() -> bool:
            return (await client.get("/health/ready")).status_code == 200

        deadline = time.monotonic() + 5
        while not await ready_after_upgrade():
            assert time.monotonic() < deadline, "readiness still 503 after the upgrade"
            await asyncio.sleep(0.2)
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == (
        f"schema behind: at revision {previous}, this code needs {head}; run `db upgrade`"
    )
    assert ready.json()["checks"]["redis"] == "ok"
    warnings = [r.getMessage() for r in caplog.records if "schema behind" in r.getMessage()]
    assert len(warnings) == 1 and "README, Upgrading" in warnings[0]
    assert anonymous.status_code != 500 and keyed.status_code != 500


async def test_a_database_never_migrated_is_not_ready(make_settings):
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        async with running_client(make_settings(database_url=_url_for(name))) as client:
            ready = await client.get("/health/ready")
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "schema not migrated: run `db upgrade`"


async def test_a_schema_newer_than_the_code_is_ready(make_settings, database_url):
    # The previous release's instances, still running while the next release's migration has
    # run: migrations are additive, so they stay in the pool (README, Upgrading).
    connection = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        await connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    finally:
        await connection.close()
    async with running_client(make_settings()) as client:
        ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
