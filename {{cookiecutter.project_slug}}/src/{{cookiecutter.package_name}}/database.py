"""The database engine: Postgres (asyncpg) in production, SQLite (aiosqlite) when none is set."""

import logging

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from .settings import Settings

logger = logging.getLogger(__name__)

EMBEDDED_DATABASE_URL = "sqlite+aiosqlite:///./{{ cookiecutter.package_name }}.sqlite3"


def async_url(url: str | None) -> str:
    """The async SQLAlchemy URL: `postgresql://` becomes `postgresql+asyncpg://`; None, SQLite."""
    if not url:
        return EMBEDDED_DATABASE_URL
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def database_url(settings: Settings) -> str:
    return async_url(settings.database_url)


def is_embedded(settings: Settings) -> bool:
    return make_url(database_url(settings)).get_backend_name() == "sqlite"


def create_engine(settings: Settings) -> AsyncEngine:
    url = database_url(settings)
    if is_embedded(settings):
        return create_async_engine(url)
    timeout = settings.database_timeout_seconds
    return create_async_engine(
        url,
        pool_size=5,
        max_overflow=5,
        pool_timeout=timeout,
        # A connection that died with a Postgres restart is replaced instead of failing a query.
        pool_pre_ping=True,
        # Bounded connects and queries: a hung Postgres must not hang the requests that miss
        # the plan cache (those get 503 instead).
        connect_args={"timeout": timeout, "command_timeout": timeout},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
