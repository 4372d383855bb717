"""The rate-limit check, the route class that puts it in front of every endpoint, and the
rules that keep every other way into the app from escaping it.

The check runs after routing, so it knows the matched route however it was mounted, and its
template (`/v1/items/{item_id}`), and a refused request never reaches the endpoint or the
parsing of its body. It moves one way: the limits (rules/applied.py), one count
(counters/failover.py, whose Decision is rules/counting.py's), the record (metrics, the refusal
log), the answer (responses.py). A refusal is a response returned, not an exception: the 429
path stays as cheap as the 200 path.

Every router of the service is created with `route_class=RateLimitedRoute` (FastAPI's own hook
for wrapping a route's handler), and the app refuses to start (check_routes, run by the
lifespan) if a route was not: a route that escaped its limits would be found only in
production. Routes marked `@limiter.exempt` (probes, /metrics) get their handler unchanged.

Why here rather than in a middleware or an app-wide dependency: here the route is already
matched (a middleware would have to route every request a second time to learn its template),
its declarations are read once when the route is built, and there is no dependency machinery
to run per request.

The other ways in:
- a path that matches no route is checked against the caller's plan (one budget for every
  unmatched path, under the template `<unmatched>`), so a scan of random paths meets a 429;
- HEAD is answered by the GET route of the path and counted against the GET budget, as
  Starlette's plain routes answer it;
- WebSocket routes, mounted apps and plain Starlette routes cannot be checked here: the app
  refuses to start with one, unless it is explicitly exempt (`@limiter.exempt` on the
  endpoint, `exempt_app(...)` around a mounted app). FastAPI's own /docs, /redoc and
  /openapi.json pages are exempt.
"""

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from ...observability.logs import RefusalLog, hashed, request_id_var
from ...observability.metrics import RATELIMIT_CHECK_SECONDS, RATELIMIT_DECISIONS, labelled
from ...observability.middleware import QUIET_STATE_KEY, RESPONSE_HEADERS_STATE_KEY
from ...outages import Unavailable
from ...problems import unavailable
from ..counters.failover import Failover
from ..rules.applied import LimitSet, RouteLimits, is_exempt
from ..rules.counting import Decision, Slots
from ..rules.limiter import CALLER_STATE_KEY, limiter
from .middleware import CallerIdentifier
from .responses import CONCURRENCY_LOG_WINDOW, QuotaHeaders, too_many_requests

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

# Where the check leaves the concurrency slots an admitted request holds, to release when its
# response is done (RateLimitedRoute.handle).
SLOTS_STATE_KEY = "ratelimit_slots"


class RateLimitCheck:
    def __init__(
        self,
        identify: CallerIdentifier,
        failover: Failover,
        refusal_log: RefusalLog,
        shadow: bool = False,
    ) -> None:
        self._identify = identify
        self._failover = failover
        self._refusal_log = refusal_log
        # RATELIMIT_MODE=shadow (read by service.py): every limit counted and logged, none
        # refusing. The quota endpoint asks this check (quotas.py).
        self.shadow = shadow

    async def peek(self, identity: str, limit_set: LimitSet) -> Decision:
        """Every limit's state for `identity`, spending nothing (the quota endpoint)."""
        return await self._failover.peek(identity, limit_set)

    async def refusal(self, request: Request, route: RouteLimits) -> Response | None:
        """The response refusing this request (401, 429, 503), or None to let it through."""
        scope = request.scope
        state = scope["state"]
        caller = state.get(CALLER_STATE_KEY)  # resolved by CallerMiddleware, before routing
        if caller is None:  # a limited route under a path that middleware passes through
            caller = await self._identify(scope)
            if isinstance(caller, Response):
                return caller
            state[CALLER_STATE_KEY] = caller
        plan = caller.plan.name
        # Decide.
        limit_set = route.for_request(request, caller.plan, self.shadow)
        started = time.perf_counter()
        try:
            decision = await self._failover.count(caller.identity, limit_set)
        except Unavailable as exc:
            labelled(RATELIMIT_DECISIONS, plan, route.path, "unavailable").inc()
            return unavailable(exc.detail, scope["path"], exc.retry_after)
        finally:
            RATELIMIT_CHECK_SECONDS.observe(time.perf_counter() - started)
        binding = decision.binding
        if binding is not None:  # else every limit is shadow: no quota to tell
            state[RESPONSE_HEADERS_STATE_KEY] = QuotaHeaders(decision)
        if route.declares:  # slowapi's decorator wrapper reads this after the endpoint
            state["view_rate_limit"] = (
                None
                if binding is None
                else (
                    binding.limit.item,
                    [binding.limit.subject or caller.identity, *binding.limit.namespace],
                )
            )
        if decision.slots is not None:  # released when the response is done (handle, below)
            state[SLOTS_STATE_KEY] = decision.slots
        # Record.
        if not decision.admitted:
            outcome = "limited"
        elif decision.shadow_refusals:
            outcome = "shadow_limited"
        else:
            outcome = "allowed"
        if decision.fallback:
            outcome = "fallback"
        labelled(RATELIMIT_DECISIONS, plan, route.path, outcome).inc()
        refused = decision.shadow_refusals if decision.admitted else (binding,)
        logged = False
        for result in refused:
            assert result is not None  # a refusal has a binding limit
            limit = result.limit
            subject = limit.subject or caller.identity
            summary = {
                "plan": plan,
                "route": route.path,
                "subject": hashed(subject),
                "policy": limit.policy,
                "limit": limit.text,
                "shadow": limit.shadow,
            }
            logged |= self._refusal_log.refused(
                (subject, limit.key_suffix, limit.shadow),
                CONCURRENCY_LOG_WINDOW if limit.concurrent else limit.window_seconds,
                "rate limit exceeded (shadow: served)" if limit.shadow else "rate limit exceeded",
                {
                    **summary,
                    "method": scope["method"],
                    "fallback": decision.fallback,
                    "request_id": request_id_var.get(),
                },
                summary,
            )
        if decision.admitted:
            return None
        if not logged:  # a repeat of a refusal already logged in this window: no access line
            state[QUIET_STATE_KEY] = True
        # Answer.
        return too_many_requests(decision, scope["path"])

    async def release(self, slots: Slots) -> None:
        await self._failover.release(slots)


# The route template that requests matching no route are counted and labelled under.
UNMATCHED = "<unmatched>"
# Set on an ASGI app by exempt_app(): mounted, it is served without the limiter.
EXEMPT_APP_ATTRIBUTE = "ratelimit_exempt"


class RateLimitedRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        limits = RouteLimits(limiter, self.endpoint, self.path_format)
        if limits.exempt:
            return handler

        async def limited_handler(request: Request) -> Response:
            if limiter.enabled:  # slowapi's switch, which tests of a user's own app turn off
                check: RateLimitCheck = request.app.state.ratelimit_check
                refusal = await check.refusal(request, limits)
                if refusal is not None:
                    return refusal
            return await handler(request)

        return limited_handler

    def _answers_head(self, scope: Scope) -> bool:
        methods = self.methods or ()
        return scope["type"] == "http" and scope["method"] == "HEAD" and "GET" in methods

    # No `matches` of its own: the router tries every route before the one it finds, so an
    # override would cost every request once per route (README, Routing cost). HEAD on a GET
    # route is a partial match (405 in FastAPI, a GET without body in Starlette): the router
    # hands it to handle() below when no route matches fully, and handle() serves it as GET.
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self._answers_head(scope):
                await self.app(scope, receive, send)  # the server sends no body for HEAD
            else:
                await super().handle(scope, receive, send)
        finally:
            # The response is done (streamed to its end, failed, or its client went away): give
            # back the concurrency slots it held. Shielded: a cancelled request still releases.
            slots = scope.get("state", {}).pop(SLOTS_STATE_KEY, None)
            if slots is not None:
                check: RateLimitCheck = scope["app"].state.ratelimit_check
                await asyncio.shield(check.release(slots))


def _unmatched_endpoint() -> None:
    """Stands for every path no route matches, for the limits (plan limits only)."""


class UnmatchedPaths:
    """The router's answer to a path no route matches (404), behind the caller's plan limits."""

    def __init__(self, not_found: ASGIApp) -> None:
        self.not_found = not_found
        self.limits = RouteLimits(limiter, _unmatched_endpoint, UNMATCHED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and limiter.enabled:
            request = Request(scope, receive)
            check: RateLimitCheck = request.app.state.ratelimit_check
            refusal = await check.refusal(request, self.limits)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.not_found(scope, receive, send)


def exempt_app(app: ASGIApp) -> ASGIApp:
    """Mark an ASGI app to be mounted without limits (say, static files nginx does not serve):
    `app.mount("/static", exempt_app(StaticFiles(directory="static")))`."""
    setattr(app, EXEMPT_APP_ATTRIBUTE, True)
    return app


class UnlimitedRoute(TypeError):
    """A route that would be served without the check: the app refuses to start."""


def documentation_paths(app: FastAPI) -> frozenset[str]:
    """FastAPI's own documentation pages: served without limits, whatever the credentials."""
    paths = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    return frozenset(path for path in paths if path)


def _why_unlimited(app: FastAPI, route: BaseRoute) -> str | None:
    """Why this route would be served without the check, or None when it is not."""
    if isinstance(route, RateLimitedRoute):
        return None
    endpoint = getattr(route, "endpoint", None)
    if endpoint is not None and is_exempt(limiter, endpoint):
        return None
    if isinstance(route, APIRoute):
        return (
            "is not rate limited: create its router with "
            "APIRouter(route_class=RateLimitedRoute), or mark it @limiter.exempt"
        )
    if isinstance(route, Mount):
        if getattr(route.app, EXEMPT_APP_ATTRIBUTE, False):
            return None
        return (
            "is a mounted app, which the limiter cannot check: include its routes as a router, "
            "or mount exempt_app(...) to serve it without limits"
        )
    if getattr(route, "path", None) in documentation_paths(app):
        return None
    if isinstance(route, WebSocketRoute):
        return (
            "is a WebSocket route, which the limiter cannot check: mark its endpoint "
            "@limiter.exempt to serve it without limits (the API key is still checked)"
        )
    return (
        f"is a {type(route).__name__}, which the limiter cannot check: add it to a router "
        "with route_class=RateLimitedRoute, or mark its endpoint @limiter.exempt"
    )


def limited_templates(app: FastAPI) -> list[str]:
    """The route templates the limiter checks: what a plan's or key's per-route limits can name."""
    return sorted(
        {
            context.original_route.path_format
            for context in iter_route_contexts(app.routes)
            if isinstance(context.original_route, RateLimitedRoute)
            and not is_exempt(limiter, context.original_route.endpoint)
        }
    )


def check_routes(app: FastAPI) -> None:
    """Refuse to start when a route would go unlimited."""
    for context in iter_route_contexts(app.routes):
        reason = _why_unlimited(app, context.original_route)
        if reason is not None:
            raise UnlimitedRoute(f"route {context.path} {reason}")
