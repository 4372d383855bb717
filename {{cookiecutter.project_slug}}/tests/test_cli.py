"""The command line says what it did to the database, and one line when it cannot use it."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.dev import demo_keys, read_keys
from {{ cookiecutter.package_name }}.migrations import alembic_config, upgrade_to_head
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import (
    DATABASE_URL,
    TEST_DB_PREFIX,
    _admin,
    _asyncpg_dsn,
    _url_for,
    create_account,
    create_key,
    free_port,
    revoke_key,
    run_cli,
    running_client,
    set_plan,
)

# Every test here starts the service's own process (a second of CPU each, more when busy).
pytestmark = pytest.mark.slow

# The revision ids of migrations/versions/, oldest first.
SCRIPTS = ScriptDirectory.from_config(alembic_config())
REVISIONS = [script.revision for script in SCRIPTS.walk_revisions()][::-1]
# A password that must never be printed, whatever goes wrong.
PASSWORD = f"s3cret-{uuid.uuid4().hex}"


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    """An empty database of this test's own: no table, no migration applied."""
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}_fresh"
    await _admin(f'CREATE DATABASE "{name}"')
    yield _url_for(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_upgrade_of_a_fresh_database_names_the_migrations_it_applied(fresh_database):
    assert REVISIONS[:2] == ["0001", "0002"]
    code, stdout, stderr = await run_cli(fresh_database, "db", "upgrade")
    assert (code, stderr) == (0, "")
    assert stdout == f"applied {', '.join(REVISIONS)}\n"


async def test_upgrade_of_a_migrated_database_says_there_was_nothing_to_do(database_url):
    code, stdout, stderr = await run_cli(database_url, "db", "upgrade")
    assert (code, stderr) == (0, "")
    assert stdout.startswith("nothing to do") and stdout.rstrip().endswith(REVISIONS[-1])


def unusable(case: str) -> tuple[str, str]:
    """A database URL the command cannot use, with a password, and what the one line names."""
    url = make_url(DATABASE_URL).set(password=PASSWORD)
    if case == "missing-role":
        role = f"no_such_role_{uuid.uuid4().hex[:8]}"
        return url.set(username=role).render_as_string(hide_password=False), role
    port = free_port()  # nothing listens there
    return url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False), str(port)


COMMANDS = {"db-upgrade": ("db", "upgrade"), "plans-list": ("plans", "list")}  # sync, async


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", ["missing-role", "closed-port"])
async def test_an_unusable_database_is_one_line_without_the_password(case, command):
    url, named = unusable(case)
    code, stdout, stderr = await run_cli(url, *COMMANDS[command])
    assert code == 2
    assert len(stderr.splitlines()) == 1, stderr
    assert PASSWORD not in stderr and PASSWORD not in stdout
    line = stderr.strip()
    assert line.startswith("error: database postgresql://") and ":***@" in line
    assert named in line and "DATABASE_URL" in line


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
async def test_every_migration_goes_down_to_base_and_up_again(fresh_database, tmp_path, dialect):
    url = fresh_database if dialect == "postgresql" else f"sqlite+aiosqlite:///{tmp_path}/plans.db"
    config = alembic_config(url)

    def down_and_up() -> None:
        command.upgrade(config, "head")
        command.downgrade(config, "base")  # each revision's constraints found by name
        command.upgrade(config, "head")

    await asyncio.to_thread(down_and_up)  # alembic runs its own event loop for async URLs
    code, stdout, _ = await run_cli(url, "plans", "list")
    assert code == 0 and "anonymous" in stdout


async def _execute(url: str, statement: str, *args: object) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
    try:
        await connection.execute(statement, *args)
    finally:
        await connection.close()


def one_error_line(code: int, stderr: str) -> str:
    """The single `error: ...` line of a refused command (exit status 2), or the test fails."""
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    "limits,reason",
    [
        ("10/9999999999 years", "a window is at most 10 years"),
        ("99999999999999999999999/minute", "a limit allows at most 1000000000 hits per window"),
    ],
)
async def test_the_cli_refuses_limits_past_the_grammars_bounds(database_url, limits, reason):
    for args in (
        ["plans", "create", "gold", limits],
        ["plans", "update", "pro", "--limits", limits],
    ):
        line = one_error_line(*(await run_cli(database_url, *args))[::2])
        assert f"'{limits}' is out of bounds: {reason}" in line
    code, stdout, _ = await run_cli(database_url, "plans", "list")
    assert code == 0 and limits not in stdout and "gold" not in stdout


@pytest.mark.parametrize(
    "command",
    [
        ["keys", "update", "{public_id}", "--block", "abuse\x1b[2J\x1b[31mpay now"],
        ["keys", "update", "{public_id}", "--block", "first line\nforged: line"],
        ["keys", "create", "--account", "acme", "--owner", "acme\x1b]0;owned\x07"],
        ["plans", "create", "gold\r", "10/minute"],
        ["accounts", "create", "evil\x1b[2J", "--plan", "pro"],
        ["accounts", "update", "acme", "--rename", "acme\u202e"],
        ["accounts", "block", "acme", "unpaid\nforged: line"],
    ],
    ids=[
        "block-ansi",
        "block-newline",
        "owner-osc",
        "plan-name-cr",
        "account-name-ansi",
        "account-rename-bidi",
        "account-block-newline",
    ],
)
async def test_free_text_with_control_characters_is_refused(database_url, command):
    await create_account(database_url, "acme", "pro")
    key = await create_key(database_url, account="acme")
    args = [arg.replace("{public_id}", key.split("_")[1]) for arg in command]
    line = one_error_line(*(await run_cli(database_url, *args))[::2])
    assert "must not contain control characters" in line
    assert "\x1b" not in line and "\r" not in line


async def test_keys_list_escapes_control_characters_already_in_the_database(database_url):
    # A row written by plain SQL before migration 0006 (or on SQLite, which has no such CHECK).
    key = await create_key(database_url, "pro")
    await _execute(
        database_url, "ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_blocked_reason_printable"
    )
    await _execute(
        database_url,
        "UPDATE api_keys SET blocked_reason = $1 WHERE public_id = $2",
        "abuse\x1b[31m\nforged",
        key.split("_")[1],
    )
    code, stdout, stderr = await run_cli(database_url, "keys", "list")
    assert (code, stderr) == (0, "")
    assert "\x1b" not in stdout
    (line,) = [line for line in stdout.splitlines() if "blocked" in line]
    assert line.endswith("blocked: abuse\\x1b[31m\\nforged")


async def test_the_database_refuses_control_characters_written_by_plain_sql(database_url):
    await create_account(database_url, "acme", "pro")
    key = await create_key(database_url, account="acme")
    for column in ("blocked_reason", "owner"):
        with pytest.raises(asyncpg.CheckViolationError):
            await _execute(
                database_url,
                f"UPDATE api_keys SET {column} = $1 WHERE public_id = $2",
                "x\x1b[31m",
                key.split("_")[1],
            )
    for column in ("blocked_reason", "name"):
        with pytest.raises(asyncpg.CheckViolationError):
            await _execute(
                database_url, f"UPDATE accounts SET {column} = $1 WHERE name = 'acme'", "x\x07"
            )


async def test_a_route_that_is_not_a_template_of_the_app_is_refused_naming_the_known_ones(
    database_url,
):
    key = await create_key(database_url, "pro")
    for args in (
        ["plans", "create", "gold", "10/minute", "--route", "/v1/item=1/minute"],
        ["plans", "update", "pro", "--route", "/v1/item=1/minute"],
        ["keys", "update", key.split("_")[1], "--route", "/v1/item=1/minute"],
    ):
        line = one_error_line(*(await run_cli(database_url, *args))[::2])
        assert "'/v1/item' is not a route template of this service" in line
        known = line.partition("rate-limited routes: ")[2].split(", ")
        assert "/v1/items" in known and "/v1/items/{item_id}" in known
        assert "/health/live" not in known
    code, stdout, _ = await run_cli(
        database_url, "plans", "create", "gold", "10/minute", "--route", "/v1/items=1/minute"
    )
    assert code == 0 and "/v1/items=1/minute" in stdout


async def test_an_account_or_a_key_cannot_be_created_on_an_inactive_plan(database_url):
    await create_account(database_url, "early", "free")
    code, stdout, _ = await run_cli(database_url, "plans", "update", "free", "--deactivate")
    assert code == 0 and "(inactive)" in stdout
    for args in (
        ["accounts", "create", "x", "--plan", "free"],
        ["keys", "create", "--account", "early"],
        ["accounts", "move", "early", "free"],
    ):
        line = one_error_line(*(await run_cli(database_url, *args))[::2])
        assert "plan 'free' is inactive" in line
    code, stdout, _ = await run_cli(database_url, "keys", "list", "--plan", "free")
    assert (code, stdout) == (0, "")
    await run_cli(database_url, "plans", "update", "free", "--activate")
    code, _, _ = await run_cli(database_url, "accounts", "create", "x", "--plan", "free")
    assert code == 0
    code, _, _ = await run_cli(database_url, "keys", "create", "--account", "x")
    assert code == 0


async def test_deactivating_a_plan_refuses_its_keys_and_activating_it_serves_them_again(
    database_url, make_settings
):
    await set_plan(database_url, "pro", "100/minute")  # whatever plans the answers seeded
    key = await create_key(database_url, "pro")

    async def status() -> int:  # a new app each time: a fresh plan cache
        async with running_client(make_settings()) as client:
            return (await client.get("/v1/items", headers={"X-API-Key": key})).status_code

    assert await status() == 200
    code, _, stderr = await run_cli(database_url, "plans", "update", "pro", "--deactivate")
    assert (code, stderr) == (0, "")
    _, listed, _ = await run_cli(database_url, "plans", "list")
    (pro,) = [line for line in listed.splitlines() if line.startswith("pro")]
    assert pro.endswith("(inactive)")
    assert await status() == 403  # plan inactive (test_tiers.py has its answer)
    code, _, stderr = await run_cli(database_url, "plans", "update", "pro", "--activate")
    assert (code, stderr) == (0, "")
    assert await status() == 200


async def test_the_anonymous_plan_cannot_be_deactivated(database_url, make_settings):
    code, stdout, stderr = await run_cli(
        database_url, "plans", "update", "anonymous", "--deactivate"
    )
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and "anonymous plan cannot be deactivated" in stderr
    async with running_client(make_settings()) as client:  # still served
        assert (await client.get("/v1/items")).status_code == 200


async def test_dev_replaces_a_revoked_demo_key_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # dev keeps its keys file and SQLite database here
    url = f"sqlite+aiosqlite:///{tmp_path}/dev.sqlite3"
    settings = Settings(_env_file=None, database_url=url, redis_url=None)
    await asyncio.to_thread(upgrade_to_head, url)
    first, _, _ = await demo_keys(settings)
    again, changed, _ = await demo_keys(settings)
    assert (again, changed) == (first, False)  # reused while live
    revoked_plan = next(iter(first))
    await revoke_key(url, first[revoked_plan])
    renewed, changed, _ = await demo_keys(settings)
    assert changed and renewed[revoked_plan] != first[revoked_plan]
    assert {plan: key for plan, key in renewed.items() if plan != revoked_plan} == {
        plan: key for plan, key in first.items() if plan != revoked_plan
    }
    assert read_keys() == renewed
    async with running_client(settings) as client:  # the new key is served, the old refused
        new = await client.get("/v1/items", headers={"X-API-Key": renewed[revoked_plan]})
        old = await client.get("/v1/items", headers={"X-API-Key": first[revoked_plan]})
    assert (new.status_code, old.status_code) == (200, 401)
