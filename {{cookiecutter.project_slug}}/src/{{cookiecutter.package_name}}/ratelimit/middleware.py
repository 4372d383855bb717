"""Pure ASGI middleware: who is calling, resolved before routing.

A malformed, unknown or revoked key is a 401 whatever path it is sent to, and an unknown key
while the plans database is away a 503, before any route runs; so is a WebSocket handshake
(denied with the same answer, or closed with code 1008 by a server that cannot send one). The
probes and the metrics scrape are passed through unresolved: they answer whatever the
credentials, and whether or not the database is up. The caller is left in the request's state
for the check (route.py).

No wrapped `send` here: the quota headers are added by the request context middleware.
"""

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from ..observability import HEALTH_PREFIX, METRICS_PATH
from ..outages import Unavailable
from ..plans.caller import Caller, CallerResolver, InvalidCredentials, UnusableClientAddress
from ..problems import unavailable
from .limiter import CALLER_STATE_KEY
from .responses import bad_request, unauthorized


async def identify(resolver: CallerResolver, scope: Scope) -> Caller | Response:
    """The request's caller, or the response refusing it: 401, 400, or 503 while plans are away."""
    try:
        return await resolver.resolve(scope)
    except InvalidCredentials as exc:
        return unauthorized(str(exc), scope["path"])
    except UnusableClientAddress as exc:
        return bad_request(str(exc), scope["path"])
    except Unavailable as exc:
        return unavailable(exc.detail, scope["path"], exc.retry_after)


async def deny_websocket(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a WebSocket handshake with `response`, where the server can send one."""
    websocket = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008, reason=f"refused with HTTP {response.status_code}")


class CallerMiddleware:
    def __init__(self, app: ASGIApp, resolver: CallerResolver) -> None:
        self.app = app
        self.resolver = resolver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "lifespan" or path.startswith(HEALTH_PREFIX) or path == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        caller = await identify(self.resolver, scope)
        if isinstance(caller, Response):
            if scope["type"] == "websocket":
                await deny_websocket(caller, scope, receive, send)
            else:
                await caller(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_STATE_KEY] = caller
        await self.app(scope, receive, send)
