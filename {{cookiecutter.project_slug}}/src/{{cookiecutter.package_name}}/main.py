"""The application factory: builds the app and wires routers, middleware and the limiter."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from .access_log import install_access_log_filter
from .api.routes import health, items
from .ratelimit import limiter
from .ratelimit.caller import Plan
from .ratelimit.dependency import enforce_rate_limits
from .ratelimit.enforcer import Enforcer, StorageUnavailable
from .ratelimit.middleware import RateLimitMiddleware
from .ratelimit.responses import RateLimited, rate_limited_handler, storage_unavailable_handler
from .ratelimit.rules import RouteRules
from .ratelimit.storage import open_limit_storage
from .settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

    app = FastAPI(
        title=settings.app_name,
        lifespan=lifespan,
        dependencies=[Depends(enforce_rate_limits)],
    )
    app.state.settings = settings
    app.state.limiter = limiter  # where slowapi's tooling expects to find it
    app.state.ratelimit_rules = RouteRules(limiter)
    app.state.ratelimit_rules.check_declarations()

    app.include_router(health.router)
    app.include_router(items.router)

    app.add_exception_handler(RateLimited, rate_limited_handler)
    app.add_exception_handler(StorageUnavailable, storage_unavailable_handler)
    app.add_middleware(
        RateLimitMiddleware,
        anonymous_plan=Plan.from_string("anonymous", settings.anonymous_limit),
    )
    if settings.trusted_proxies:
        # Added last, so it runs first: the limiter then sees the real client address.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    install_access_log_filter()
    return app


app = create_app()
