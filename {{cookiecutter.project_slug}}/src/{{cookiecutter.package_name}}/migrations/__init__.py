"""Alembic migrations of the plans database; `alembic upgrade head` from the project root."""

import asyncio
from dataclasses import dataclass
from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ..database import async_url


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
