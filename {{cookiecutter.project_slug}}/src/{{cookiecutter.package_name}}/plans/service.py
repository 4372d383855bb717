"""The plans part of a running service: the database engine, the plan cache and the caller
resolver, built from settings, with what they do at start-up and shutdown."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..database import create_engine, session_factory
from ..settings import Settings
from .cache import DATABASE_ERRORS, PlanCache
from .caller import CallerResolver

logger = logging.getLogger(__name__)


class PlanService:
    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings)
        self.cache = PlanCache(
            session_factory(self.engine),
            ttl=settings.plan_cache_ttl_seconds,
            retry_interval=settings.database_retry_interval_seconds,
            max_entries=settings.plan_cache_max_entries,
        )
        self.resolver = CallerResolver(self.cache, settings.anonymous_ipv6_prefix_length)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Plans read before the first request; the engine's connections closed at the end."""
        try:
            await self.cache.preload()
        except DATABASE_ERRORS as exc:
            logger.warning("Plans database unreachable at start-up (%s); will retry", exc)
        try:
            yield
        finally:
            await self.engine.dispose()
