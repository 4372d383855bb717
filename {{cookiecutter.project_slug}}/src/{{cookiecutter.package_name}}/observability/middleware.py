"""Pure ASGI middleware: the request id in and out, the count of every answer, and a cap on
the size of request headers.

The request id comes from X-Request-ID (nginx sets one) when it looks like one, else a new one;
it is echoed in the response and attached to every log line of the request.
"""

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..ratelimit.responses import problem
from .logs import request_id_var
from .metrics import REQUESTS

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{8,128}")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _REQUEST_ID_RE.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_header_bytes: int) -> None:
        self.app = app
        # uvicorn's httptools parser accepts headers of any size (its h11 parser caps them).
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        status = 500  # what the client gets if the app fails before answering

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            if sum(len(name) + len(value) for name, value in scope["headers"]) > (
                self.max_header_bytes
            ):
                await problem(
                    431, "Request Header Fields Too Large", "Headers too large.", scope["path"]
                )(scope, receive, send_with_request_id)
                return
            await self.app(scope, receive, send_with_request_id)
        finally:
            # The router records the matched route in the scope; unmatched paths share a label.
            route = scope.get("route")
            REQUESTS.labels(scope["method"], getattr(route, "path", "<unmatched>"), status).inc()
            request_id_var.reset(token)
