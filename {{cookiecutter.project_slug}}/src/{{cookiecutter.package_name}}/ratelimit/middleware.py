"""Pure ASGI middleware: who is calling, resolved before routing.

A malformed, unknown or revoked key is a 401 whatever path it is sent to, and an unknown key
while the plans database is away a 503, before any route runs. The probes and the metrics
scrape are passed through unresolved: they answer whatever the credentials, and whether or not
the database is up. The caller is left in the request's state for the check (guard.py).

No wrapped `send` here: the quota headers are added by the request context middleware.
"""

from starlette.types import ASGIApp, Receive, Scope, Send

from ..observability import HEALTH_PREFIX, METRICS_PATH
from ..plans.directory import PlansUnavailable
from ..plans.resolver import CallerResolver, InvalidCredentials
from .responses import unauthorized, unavailable

CALLER_STATE_KEY = "caller"


class CallerMiddleware:
    def __init__(self, app: ASGIApp, resolver: CallerResolver) -> None:
        self.app = app
        self.resolver = resolver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(HEALTH_PREFIX) or path == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        try:
            caller = await self.resolver.resolve(scope)
        except InvalidCredentials as exc:
            await unauthorized(str(exc), path)(scope, receive, send)
            return
        except PlansUnavailable as exc:
            detail = "Plans are temporarily unavailable."
            await unavailable(detail, path, exc.retry_after)(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_STATE_KEY] = caller
        await self.app(scope, receive, send)
