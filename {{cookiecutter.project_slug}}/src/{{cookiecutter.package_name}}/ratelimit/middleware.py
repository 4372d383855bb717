"""Pure ASGI middleware: who is calling, resolved before routing.

A malformed, unknown or revoked key is a 401 whatever path it is sent to, and an unknown key
while the plans database is away a 503, before any route runs. The probes and the metrics
scrape are passed through unresolved: they answer whatever the credentials, and whether or not
the database is up. The caller is left in the request's state for the check (guard.py).

No wrapped `send` here: the quota headers are added by the request context middleware.
"""

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..observability import HEALTH_PREFIX, METRICS_PATH
from ..plans.directory import PlansUnavailable
from ..plans.resolver import CallerResolver, InvalidCredentials
from .caller import Caller
from .responses import unauthorized, unavailable

CALLER_STATE_KEY = "caller"


async def identify(resolver: CallerResolver, scope: Scope) -> Caller | Response:
    """The request's caller, or the response refusing it: 401, or 503 while plans are away."""
    try:
        return await resolver.resolve(scope)
    except InvalidCredentials as exc:
        return unauthorized(str(exc), scope["path"])
    except PlansUnavailable as exc:
        return unavailable("Plans are temporarily unavailable.", scope["path"], exc.retry_after)


class CallerMiddleware:
    def __init__(self, app: ASGIApp, resolver: CallerResolver) -> None:
        self.app = app
        self.resolver = resolver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(HEALTH_PREFIX) or path == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        caller = await identify(self.resolver, scope)
        if isinstance(caller, Response):
            await caller(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_STATE_KEY] = caller
        await self.app(scope, receive, send)
