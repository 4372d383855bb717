"""The plans part of a running service: the database engine, the plan cache and the caller
resolver, built from settings, with what they do at start-up and shutdown."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..database import create_engine, session_factory
from ..migrations import schema_behind
from ..settings import Settings
from .cache import DATABASE_ERRORS, PlanCache
from .caller import CallerResolver

logger = logging.getLogger(__name__)


class PlanService:
    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings)
        self.timeout = settings.database_timeout_seconds
        self.cache = PlanCache(
            session_factory(self.engine),
            ttl=settings.plan_cache_ttl_seconds,
            retry_interval=settings.database_retry_interval_seconds,
            max_entries=settings.plan_cache_max_entries,
        )
        self.resolver = CallerResolver(self.cache, settings.anonymous_ipv6_prefix_length)

    async def _warn_if_schema_behind(self) -> bool:
        """New code started before `db upgrade` runs: said once, at start-up (and by
        /health/ready until the upgrade), rather than found in the 503s of keyed callers."""
        try:
            async with asyncio.timeout(self.timeout), self.engine.connect() as connection:
                behind = await schema_behind(connection)
        except DATABASE_ERRORS:
            return False  # the preload says so; readiness reports the database
        if behind is not None:
            logger.warning("Plans database %s (README, Upgrading)", behind)
        return behind is not None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Plans read before the first request; the engine's connections closed at the end."""
        behind = await self._warn_if_schema_behind()
        try:
            await self.cache.preload()
        except DATABASE_ERRORS as exc:
            if not behind:  # else the failure is the schema's, said once above
                logger.warning("Plans database unreachable at start-up (%s); will retry", exc)
        try:
            yield
        finally:
            await self.engine.dispose()
