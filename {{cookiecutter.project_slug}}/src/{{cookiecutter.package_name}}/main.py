"""The application factory: builds the app and wires routers, middleware and the limiter."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from .api.routes import health, items
from .database import create_engine, database_url, is_embedded, session_factory
from .gc_tuning import tuned_garbage_collector
from .migrations import upgrade_to_head
from .observability import metrics
from .observability.logs import configure_logging
from .observability.middleware import RequestContextMiddleware
from .plans.directory import DATABASE_ERRORS, PlanDirectory
from .plans.resolver import CallerResolver
from .ratelimit import limiter
from .ratelimit.counters import RedisCounter, memory_counter
from .ratelimit.enforcer import Enforcer
from .ratelimit.guard import RateLimitGuard
from .ratelimit.middleware import CallerMiddleware
from .ratelimit.route import RateLimitedRoute, UnmatchedPaths, check_routes
from .ratelimit.storage import open_limit_storage
from .settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Response headers a browser script may read when CORS is on: the quota and the request id.
EXPOSED_HEADERS = [
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Request-ID",
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    engine = create_engine(settings)
    directory = PlanDirectory(
        session_factory(engine),
        ttl=settings.plan_cache_ttl_seconds,
        retry_interval=settings.database_retry_interval_seconds,
    )
    resolver = CallerResolver(directory, settings.anonymous_ipv6_prefix_length)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_routes(app)  # routers included after create_app too
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
                strategy = settings.ratelimit_strategy
                counter = (
                    RedisCounter(
                        limit_storage.redis,
                        strategy,
                        settings.ratelimit_key_prefix,
                        max_calls=settings.redis_max_connections,
                        # A bound on a whole call, above the per-call socket timeouts.
                        timeout=settings.redis_timeout_seconds * 4,
                    )
                    if limit_storage.redis is not None
                    else memory_counter(strategy)
                )
                enforcer = Enforcer(
                    counter,
                    fallback=memory_counter(strategy),
                    outage_policy=settings.ratelimit_outage_policy,
                    retry_interval=settings.redis_retry_interval_seconds,
                )
                app.state.ratelimit_guard = RateLimitGuard(resolver, enforcer)
                with tuned_garbage_collector():  # last: what start-up made is there to stay
                    yield
        finally:
            await engine.dispose()

    docs = settings.docs_enabled
    app = FastAPI(
        title=settings.app_name,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.db_engine = engine
    app.state.plan_directory = directory
    app.state.limiter = limiter  # where slowapi's tooling expects to find it
    # Routes added with @app.get(...) are limited too; routers set route_class themselves.
    app.router.route_class = RateLimitedRoute
    # A path no route matches is counted against the caller's plan too: a scan meets a 429.
    app.router.default = UnmatchedPaths(app.router.default)

    # Requests are matched against routers in this order: the API first, since it is what
    # nearly every request asks for (each router tried before the matching one costs ~5 us).
    app.include_router(items.router)
    app.include_router(health.router)
    app.include_router(metrics.router)

    # Middleware runs in the reverse order of addition: proxy headers, request context, CORS,
    # then the caller; the limit check runs in each route (ratelimit/route.py). So 401s and
    # 429s carry the request id and CORS headers.
    app.add_middleware(CallerMiddleware, resolver=resolver)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(
        RequestContextMiddleware,
        max_header_bytes=settings.max_header_bytes,
        max_body_bytes=settings.max_body_size_bytes,
    )
    if settings.trusted_proxies:
        # The real client address, before anything reads it.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app


app = create_app()
