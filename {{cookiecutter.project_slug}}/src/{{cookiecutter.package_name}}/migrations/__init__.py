"""Alembic migrations of the plans database; `alembic upgrade head` from the project root."""

import asyncio
import logging
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ..database import async_url

logger = logging.getLogger(__name__)


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration without alembic.ini, so it works from an installed package too."""
    config = Config()
    config.set_main_option("script_location", str(files(__package__)))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # Leave the application's logging alone when migrating from inside it.
    config.attributes["configure_logging"] = False
    return config


@dataclass(frozen=True)
class Upgrade:
    """What an upgrade did: the revisions it applied, oldest first, and the database's revision."""

    applied: list[str]
    current: str | None


def current_revision(url: str) -> str | None:
    """The revision alembic recorded in the database; None before the first migration."""

    async def read() -> str | None:
        engine = create_async_engine(async_url(url), poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision()
                )
        finally:
            await engine.dispose()

    return asyncio.run(read())


def upgrade_to_head(url: str) -> Upgrade:
    config = alembic_config(url)
    before = current_revision(url)
    command.upgrade(config, "head")
    after = current_revision(url)
    if after == before:
        return Upgrade(applied=[], current=after)
    # From the revision reached down to (not including) the one the database was at.
    scripts = ScriptDirectory.from_config(config).iterate_revisions(after, before or "base")
    return Upgrade(applied=[script.revision for script in scripts][::-1], current=after)


@cache
def known_revisions() -> tuple[str, tuple[str, ...]]:
    """This code's head revision and every revision it knows (read once: it is files)."""
    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    assert head is not None  # the package ships its migrations
    return head, tuple(script.revision for script in scripts.walk_revisions())


# One query, so the readiness probe can afford it on every check.
_SCHEMA_REVISION = text("SELECT version_num FROM alembic_version")


async def schema_behind(connection: AsyncConnection) -> str | None:
    """Why this code cannot rely on the database's schema (behind head, never migrated), or
    None. A revision this code does not know is newer than its head: migrations are additive,
    so the code of the previous release runs on it (README, Upgrading)."""
    try:
        revisions = (await connection.execute(_SCHEMA_REVISION)).scalars().all()
    except DBAPIError as exc:
        if "alembic_version" not in str(exc.orig):
            raise
        return "schema not migrated: run `db upgrade`"
    head, known = known_revisions()
    behind = [revision for revision in revisions if revision != head and revision in known]
    if revisions and not behind:
        return None
    at = ", ".join(revisions) or "none"
    return f"schema behind: at revision {at}, this code needs {head}; run `db upgrade`"


async def warn_if_schema_behind(engine: AsyncEngine, within_seconds: float) -> None:
    """New code started before `db upgrade` ran: said once, at start-up (and by /health/ready
    until the upgrade), rather than found in the 503s of its callers."""
    try:
        async with asyncio.timeout(within_seconds), engine.connect() as connection:
            behind = await schema_behind(connection)
    except (SQLAlchemyError, OSError, TimeoutError):
        return  # unreachable: the plan cache says so, and retries
    if behind is not None:
        logger.warning("Plans database %s (README, Upgrading)", behind)
