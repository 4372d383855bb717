"""Pure ASGI middleware: resolves the caller before routing, adds quota headers after.

Plain ASGI rather than BaseHTTPMiddleware: no extra task per request, and streaming responses
pass through untouched since only the `http.response.start` message is rewritten.
"""

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability import HEALTH_PREFIX, METRICS_PATH
from ..plans.directory import PlansUnavailable
from ..plans.resolver import CallerResolver, InvalidCredentials
from .headers import quota_headers
from .responses import problem, unavailable


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, resolver: CallerResolver) -> None:
        self.app = app
        self.resolver = resolver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Probes and the metrics scrape skip caller resolution: they must answer whatever the
        # credentials and whether or not the plans database is up.
        if (
            scope["type"] != "http"
            or scope["path"].startswith(HEALTH_PREFIX)
            or (scope["path"] == METRICS_PATH)
        ):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            state["caller"] = await self.resolver.resolve(scope)
        except InvalidCredentials as exc:
            response = problem(401, "Unauthorized", str(exc), scope["path"])
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        except PlansUnavailable as exc:
            detail = "Plans are temporarily unavailable."
            await unavailable(detail, scope["path"], exc.retry_after)(scope, receive, send)
            return

        async def send_with_quota_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision = state.get("ratelimit_decision")
                if decision is not None:
                    message["headers"] = [
                        *message.get("headers", ()),
                        *quota_headers(decision, time.time()),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_quota_headers)
