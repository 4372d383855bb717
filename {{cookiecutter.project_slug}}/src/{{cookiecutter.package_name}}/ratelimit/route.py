"""The route class that puts the rate-limit check in front of every endpoint.

Every router of the service is created with `route_class=RateLimitedRoute` (FastAPI's own hook
for wrapping a route's handler), and the app refuses to start (check_routes, run by the
lifespan) if a route was not: a route that escaped its limits would be found only in
production. Routes marked `@limiter.exempt` (probes, /metrics) get their handler unchanged.

Why here rather than in a middleware or an app-wide dependency: here the route is already
matched (a middleware would have to route every request a second time to learn its template),
its declarations are read once when the route is built, and there is no dependency machinery
to run per request.
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.requests import Request
from starlette.responses import Response

from .guard import RateLimitGuard
from .limiter import limiter
from .rules import RouteLimits, is_exempt

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class RateLimitedRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        limits = RouteLimits(limiter, self.endpoint, self.path)
        if limits.exempt:
            return handler

        async def limited_handler(request: Request) -> Response:
            guard: RateLimitGuard = request.app.state.ratelimit_guard
            refusal = await guard.refusal(request, limits)
            if refusal is not None:
                return refusal
            return await handler(request)

        return limited_handler


def check_routes(app: FastAPI) -> None:
    """Refuse to start when a route would go unlimited: it was not built as a RateLimitedRoute."""
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if (
            isinstance(route, APIRoute)
            and not isinstance(route, RateLimitedRoute)
            and not is_exempt(limiter, route.endpoint)
        ):
            raise TypeError(
                f"route {context.path} is not rate limited: create its router with "
                "APIRouter(route_class=RateLimitedRoute), or mark it @limiter.exempt"
            )
