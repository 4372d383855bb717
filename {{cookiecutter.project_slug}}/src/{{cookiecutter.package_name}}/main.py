"""The application factory: builds the app and wires routers, middleware and the limiter."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from .access_log import install_access_log_filter
from .api.routes import health, items
from .database import create_engine, database_url, is_embedded, session_factory
from .migrations import upgrade_to_head
from .plans.directory import DATABASE_ERRORS, PlanDirectory
from .plans.resolver import CallerResolver
from .ratelimit import limiter
from .ratelimit.dependency import enforce_rate_limits
from .ratelimit.enforcer import Enforcer, StorageUnavailable
from .ratelimit.middleware import RateLimitMiddleware
from .ratelimit.responses import RateLimited, rate_limited_handler, storage_unavailable_handler
from .ratelimit.rules import RouteRules
from .ratelimit.storage import open_limit_storage
from .settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = create_engine(settings)
    directory = PlanDirectory(
        session_factory(engine),
        ttl=settings.plan_cache_ttl_seconds,
        retry_interval=settings.database_retry_interval_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if is_embedded(settings):
            logger.warning("DATABASE_URL is not set: plans are kept in %s", database_url(settings))
            await asyncio.to_thread(upgrade_to_head, database_url(settings))
        try:
            await directory.preload()
        except DATABASE_ERRORS as exc:
            logger.warning("Plans database unreachable at start-up (%s); will retry", exc)
        try:
            async with open_limit_storage(settings) as limit_storage:
                app.state.limit_storage = limit_storage
                app.state.ratelimit_enforcer = Enforcer(
                    limit_storage.storage,
                    strategy=settings.ratelimit_strategy,
                    outage_policy=settings.ratelimit_outage_policy,
                    timeout=settings.redis_timeout_seconds,
                    retry_interval=settings.redis_retry_interval_seconds,
                )
                yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title=settings.app_name,
        lifespan=lifespan,
        dependencies=[Depends(enforce_rate_limits)],
    )
    app.state.settings = settings
    app.state.db_engine = engine
    app.state.plan_directory = directory
    app.state.limiter = limiter  # where slowapi's tooling expects to find it
    app.state.ratelimit_rules = RouteRules(limiter)
    app.state.ratelimit_rules.check_declarations()

    app.include_router(health.router)
    app.include_router(items.router)

    app.add_exception_handler(RateLimited, rate_limited_handler)
    app.add_exception_handler(StorageUnavailable, storage_unavailable_handler)
    app.add_middleware(RateLimitMiddleware, resolver=CallerResolver(directory))
    if settings.trusted_proxies:
        # Added last, so it runs first: the caller is then resolved from the real address.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    install_access_log_filter()
    return app


app = create_app()
