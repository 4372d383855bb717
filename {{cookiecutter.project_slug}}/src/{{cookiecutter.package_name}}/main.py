"""The application factory: the service as a short list of its parts."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from . import problems, ratelimit
from .api.routes import health, items, metrics, rate_limit
from .database import database_url, is_embedded
from .gc_tuning import tuned_garbage_collector
from .migrations import upgrade_to_head, warn_if_schema_behind
from .observability.logs import configure_logging, request_id_var
from .observability.middleware import RequestContextMiddleware
from .plans.service import PlanService
from .settings import Settings, get_settings, settings_or_exit

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
    client_key = settings.log_client_key
    configure_logging(settings.log_level, client_key.get_secret_value() if client_key else None)
    plans = PlanService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if is_embedded(settings):
            logger.warning("DATABASE_URL is not set: plans are kept in %s", database_url(settings))
            await asyncio.to_thread(upgrade_to_head, database_url(settings))
        await warn_if_schema_behind(plans.engine, settings.database_timeout_seconds)
        async with plans.running(), rate_limiting.running():
            with tuned_garbage_collector():  # last: what start-up made is there to stay
                yield

    docs = settings.docs_enabled
    app = FastAPI(
        title=settings.app_name,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.db_engine = plans.engine  # for the readiness probe
    rate_limiting = ratelimit.install(app, settings, plans.resolver)
    problems.answer_errors_with_problems(app, request_id=request_id_var.get)
    # Routers are tried in this order (a linear scan): the probes first, so that they cost the
    # same however many routes the API grows (README, Routing cost), then the API.
    for router in (health.router, items.router, rate_limit.router, metrics.router):
        app.include_router(router)

    # Middleware runs in the reverse order of addition: proxy headers, request context, CORS,
    # then ServerErrors (the 500 with the request id, added by answer_errors_with_problems),
    # then the caller (added by ratelimit.install).
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
        access_log=settings.access_log,
        log_client_address=settings.log_client_address,
    )
    if settings.trusted_proxies:
        # The real client address, before anything reads it.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app


# A bad setting stops the import here with one line per variable and exit status 2, which
# uvicorn passes on, instead of a traceback from wherever the value was first used.
app = create_app(settings_or_exit())
