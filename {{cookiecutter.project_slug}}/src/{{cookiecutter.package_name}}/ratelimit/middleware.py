"""Pure ASGI middleware: resolves the caller before routing, adds quota headers after.

Plain ASGI rather than BaseHTTPMiddleware: no extra task per request, and streaming responses
pass through untouched since only the `http.response.start` message is rewritten.
"""

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .caller import Plan, anonymous_caller
from .headers import quota_headers


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, anonymous_plan: Plan) -> None:
        self.app = app
        self.anonymous_plan = anonymous_plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["caller"] = anonymous_caller(scope, self.anonymous_plan)

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
