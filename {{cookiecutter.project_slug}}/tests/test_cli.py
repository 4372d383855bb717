"""The command line says what it did to the database, and one line when it cannot use it."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.migrations import alembic_config

from .conftest import DATABASE_URL, TEST_DB_PREFIX, _admin, _url_for, free_port, run_cli

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
