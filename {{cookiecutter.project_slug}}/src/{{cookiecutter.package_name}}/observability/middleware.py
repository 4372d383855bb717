"""Pure ASGI middleware around every request: the request id in and out, the headers other
parts leave for the response (the quota headers), the count and duration of every answer, its
access line, and caps on the size of request headers and body.

A body announced larger than MAX_BODY_SIZE_BYTES (Content-Length) is refused with a 413 before
anything else runs, so it costs no quota. A chunked body has no announced size: Starlette's
body limit stops it as it is read, once its route's limits have counted the request.

The request id comes from X-Request-ID (nginx sets one) when it looks like one, else a new one;
it is echoed in the response and attached to every log line of the request.

The access line (the `access` logger, one JSON object a request, health probes left out) names
the route template, never the raw path, and the client by a keyed hash of its address
(logs.hashed) unless LOG_CLIENT_ADDRESS is on: addresses are personal data. A 429 repeating a
refusal already logged in its window has no access line: the refusal log's summary counts it.

One middleware, one pass over the request headers, one wrapped `send`: each layer of ASGI
middleware is paid by every request, which a rate limiter in front of cheap endpoints cannot
spare (the README's Performance section).
"""

import logging
import random
import re
import time

from fastapi.routing import iter_route_contexts
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..problems import problem
from . import HEALTH_PREFIX
from .logs import access, hashed, request_id_var
from .metrics import REQUEST_DURATION, REQUESTS, labelled

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{8,128}")
# The route label of requests for a path no route matches.
UNMATCHED = "<unmatched>"

# Where a part of the app (the rate limiter: its quota headers) may leave, in the request's
# state, a callable returning headers to add to the response; called when the response starts.
RESPONSE_HEADERS_STATE_KEY = "response_headers"
# Where the caller middleware leaves the name of the caller's plan, for the access line.
PLAN_STATE_KEY = "plan_name"
# Set (True) by the limiter on a refusal that repeats one already logged in its window: the
# access line is left out, the refusal log's summary counts it (RefusalLog).
QUIET_STATE_KEY = "log_quiet"


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_header_bytes: int,
        max_body_bytes: int,
        access_log: bool = True,
        log_client_address: bool = False,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self._routes: list[tuple[re.Pattern[str], str]] | None = None  # see _route_label
        self.log_client_address = log_client_address
        # uvicorn's httptools parser accepts headers of any size (its h11 parser caps them).
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        # Starlette's body limit, for chunked bodies only: the HTTP server holds any other
        # body to its Content-Length, checked below, and a GET skips this layer altogether.
        self.body_limited_app = RequestBodyLimitMiddleware(app, max_body_size=max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        header_bytes = 0
        body_bytes = 0
        app = self.app
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"x-request-id":
                if _REQUEST_ID_RE.fullmatch(value):
                    request_id = value.decode()
            elif name == b"content-length" and value.isdigit():
                body_bytes = int(value)
            elif name == b"transfer-encoding":
                app = self.body_limited_app
        if request_id is None:
            # Unique enough to find a request's log lines; not a secret, so no need to pay
            # for os.urandom on every request.
            request_id = f"{random.getrandbits(128):032x}"
        token = request_id_var.set(request_id)
        state = scope.setdefault("state", {})
        status = 500  # what the client gets if the app fails before answering

        async def send_with_context(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                more_headers = state.get(RESPONSE_HEADERS_STATE_KEY)
                if more_headers is not None:
                    headers += more_headers()
                message["headers"] = headers
            await send(message)

        try:
            if header_bytes > self.max_header_bytes:
                await problem(
                    431, "Request Header Fields Too Large", "Headers too large.", scope["path"]
                )(scope, receive, send_with_context)
                return
            if body_bytes > self.max_body_bytes:
                detail = f"The body is larger than {self.max_body_bytes} bytes."
                await problem(413, "Content Too Large", detail, scope["path"])(
                    scope, receive, send_with_context
                )
                return
            await app(scope, receive, send_with_context)
        finally:
            duration = time.perf_counter() - started
            # The router records the matched route in the scope; unmatched paths share a label.
            route = getattr(scope.get("route"), "path_format", None)
            if route is None:
                route = self._route_label(scope) if status != 404 else UNMATCHED
            method = scope["method"]
            labelled(REQUESTS, method, route, str(status)).inc()
            labelled(REQUEST_DURATION, method, route, f"{status // 100}xx").observe(duration)
            if (
                self.access_log
                and access.isEnabledFor(logging.INFO)
                and not scope["path"].startswith(HEALTH_PREFIX)
                and not state.get(QUIET_STATE_KEY)
            ):
                self._log_access(scope, method, route, status, duration, request_id)
            request_id_var.reset(token)

    def _route_label(self, scope: Scope) -> str:
        """The template of the route a path belongs to, for an answer given without the router
        recording one: a 503 shed before routing, a 401, FastAPI's own /docs and /openapi.json
        (plain routes, which it does not record). A path of no route is UNMATCHED."""
        if self._routes is None:  # built on first use: every router is included by then
            self._routes = [
                (compile_path(context.path)[0], context.path_format)
                for context in iter_route_contexts(scope["app"].routes)
                if context.path and context.path_format
            ]
        path = scope["path"]
        for pattern, path_format in self._routes:
            if pattern.match(path):
                return path_format
        return UNMATCHED

    def _log_access(
        self, scope: Scope, method: str, route: str, status: int, duration: float, request_id: str
    ) -> None:
        client = scope.get("client")
        address = client[0] if client else "unknown"
        line = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "request_id": request_id,
            "plan": scope["state"].get(PLAN_STATE_KEY),
            "client": hashed(f"ip:{address}"),
        }
        if self.log_client_address:
            line["client_address"] = address
        access.info("%s %s %d", method, route, status, extra=line)
