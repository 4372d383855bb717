"""The one entry that wires rate limiting into an app: install(app, settings, resolver).

It sets what must be in place before routes are added (the route class, the limit on
unmatched paths, the caller middleware) and returns what runs with the app: at start-up it
refuses routes that would escape their limits, opens the limit storage and builds the check.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from redis.exceptions import RedisError

from ..observability.logs import RefusalLog
from ..plans.caller import CallerResolver
from ..plans.plan import parse_limits
from ..settings import Settings
from .counters.failover import Failover
from .counters.memory_counters import memory_counter
from .counters.redis_counter import RedisCounter
from .counters.storage import LimitStorage, eviction_checked, open_limit_storage
from .http.middleware import CallerIdentifier, CallerMiddleware
from .http.openapi import install_openapi
from .http.responses import refusal_logger
from .http.route import (
    RateLimitCheck,
    RateLimitedRoute,
    UnlimitedRoute,
    UnmatchedPaths,
    check_routes,
    documentation_paths,
)
from .http.shedding import LoadShedder
from .rules.applied import standalone_limits
from .rules.counting import HitCounter
from .rules.limiter import limiter

logger = logging.getLogger(__name__)


class StartupRefused(RuntimeError):
    """The service cannot start as configured: one line says why."""


class RateLimiting:
    def __init__(
        self,
        app: FastAPI,
        settings: Settings,
        identify: CallerIdentifier,
        shedder: LoadShedder | None = None,
        shadow: bool = False,
    ) -> None:
        self.app = app
        self.settings = settings
        self.identify = identify
        self.shedder = shedder
        self.shadow = shadow

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        app, settings = self.app, self.settings
        try:
            check_routes(app)  # routers included after create_app too
        except UnlimitedRoute as exc:
            # Said by the server in one line, as a bad setting is (CallerMiddleware), instead of
            # the traceback it would print.
            app.state.startup_refusal = str(exc)
            raise
        async with open_limit_storage(settings) as storage, AsyncExitStack() as background:
            # Summaries of repeated refusals, each second and at shutdown.
            await background.enter_async_context(self.identify.refusal_log.running())
            if self.shedder is not None:  # the lag probe runs only where shedding is on
                await background.enter_async_context(self.shedder.running())
            app.state.limit_storage = storage
            await background.enter_async_context(
                eviction_checked(storage, settings.redis_retry_interval_seconds)
            )
            counter = self._counter(storage)
            if isinstance(counter, RedisCounter):  # renews the leases of concurrency slots
                try:
                    # Where Redis did not answer, the renewals claim it once it does.
                    if storage.answered_at_start:
                        await claim_algorithm(counter)
                except StartupRefused as exc:  # said by the server in one line, as above
                    app.state.startup_refusal = str(exc)
                    raise
                background.callback(counter.close)  # last: after the renewals have stopped
                await background.enter_async_context(counter.keep_leases())
            failover = Failover(
                counter,
                fallback=memory_counter(
                    settings.ratelimit_strategy, settings.ratelimit_moving_window_max_hits
                ),
                outage_policy=settings.ratelimit_outage_policy,
                retry_interval=settings.redis_retry_interval_seconds,
            )
            self.identify.start(failover)
            app.state.ratelimit_check = RateLimitCheck(
                self.identify,
                failover,
                self.identify.refusal_log,
                shadow=self.shadow,
            )
            yield

    def _counter(self, storage: LimitStorage) -> HitCounter:
        settings = self.settings
        if storage.redis is None:
            return memory_counter(
                settings.ratelimit_strategy, settings.ratelimit_moving_window_max_hits
            )
        return RedisCounter(
            storage.redis,
            settings.ratelimit_strategy,
            settings.ratelimit_key_prefix,
            max_calls=settings.redis_max_connections,
            timeout=settings.redis_timeout_seconds * 4,  # a whole call, above socket timeouts
            deadline=settings.redis_timeout_seconds,  # a call read later than this counts nothing
            moving_window_max_hits=settings.ratelimit_moving_window_max_hits,
            lease=settings.ratelimit_concurrency_lease_seconds,
        )


async def claim_algorithm(counter: RedisCounter) -> None:
    """Refuse to start where instances counting with another algorithm share the Redis and key
    prefix: two algorithms on one prefix would each grant every limit in full (README,
    "Changing the algorithm")."""
    try:
        owner = await counter.claim_algorithm()
    except (RedisError, OSError, TimeoutError) as exc:
        logger.warning(
            "Could not check which algorithm counts under RATELIMIT_KEY_PREFIX (%s: %s)",
            type(exc).__name__,
            exc,
        )
        return
    if owner != counter.algorithm:
        raise StartupRefused(
            f"RATELIMIT_STRATEGY: this instance counts with {counter.algorithm}, but instances "
            f"counting with {owner} share its Redis and RATELIMIT_KEY_PREFIX. Stop them first, "
            "or give this algorithm its own RATELIMIT_KEY_PREFIX (README, 'Changing the "
            "algorithm')"
        )


def install(app: FastAPI, settings: Settings, resolver: CallerResolver) -> RateLimiting:
    """Wire rate limiting into `app`; enter the result's `running()` in the app's lifespan."""
    app.state.limiter = limiter  # where slowapi's tooling expects to find it
    # Routes added with @app.get(...) are limited too; routers set route_class themselves.
    app.router.route_class = RateLimitedRoute
    # A path no route matches is counted against the caller's plan too: a scan meets a 429.
    app.router.default = UnmatchedPaths(app.router.default)
    failures = standalone_limits("auth-failures", parse_limits(settings.auth_failure_limit))
    identify = CallerIdentifier(resolver, failures, RefusalLog(refusal_logger))
    shedder = LoadShedder.from_settings(settings)
    # Added first, so it runs last of the middleware, inside the request context (401s carry
    # the request id and CORS headers).
    app.add_middleware(
        CallerMiddleware, identify=identify, shedder=shedder, unchecked=documentation_paths(app)
    )
    # /openapi.json documents what the limiter answers, built once, on its first request.
    # RATELIMIT_MODE, read here only: the check and the document both follow it.
    shadow = settings.ratelimit_mode == "shadow"
    install_openapi(app, settings, shadow)
    return RateLimiting(app, settings, identify, shedder, shadow)
