"""problem+json (RFC 9457): the one shape of every error the service answers, its own and the
framework's (404, 405, 422, 500...), and that shape's description for the OpenAPI document.

https://www.rfc-editor.org/rfc/rfc9457
"""

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"

# The JSON Schema of every problem body: RFC 9457's members, then the extension members this
# service adds to some of them. Documented once, in the OpenAPI components
# (ratelimit/http/openapi.py).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "description": "`about:blank`: the status says it all"},
        "title": {"type": "string", "description": "the status' reason phrase"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "what went wrong, for a person"},
        "instance": {"type": "string", "description": "the path of the request"},
        "policy": {
            "type": "string",
            "description": "429 only: the policy that refused (as in `RateLimit-Policy`)",
        },
        "errors": {
            "type": "array",
            "items": {"type": "object"},
            "description": "422 only: every validation error, as FastAPI reports them",
        },
        "request_id": {
            "type": "string",
            "description": "500 only: the request id (`X-Request-ID`), naming its log lines",
        },
        "shed": {
            "type": "boolean",
            "description": "503 only: true when an overloaded instance shed the request (lower "
            "plans first); retry after `Retry-After`",
        },
    },
}


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def problem(
    status: int, title: str, detail: str, instance: str, **extra: object
) -> ProblemResponse:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    return ProblemResponse(body | extra, status_code=status)


def unavailable(detail: str, instance: str, retry_after: int, **extra: object) -> ProblemResponse:
    """503 for a dependency that is away (Redis fail-closed, the plans database), or for a
    request shed under overload (`shed=True`)."""
    response = problem(503, "Service Unavailable", detail, instance, **extra)
    response.headers["Retry-After"] = str(retry_after)
    return response


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _http_error(request: Request, exc: Exception) -> Response:
    """404, 405 and every HTTPException a route raises."""
    assert isinstance(exc, HTTPException)
    status, title = exc.status_code, _phrase(exc.status_code)
    if status < 200 or status in (204, 304):  # no body allowed
        return Response(status_code=status, headers=exc.headers)
    detail = exc.detail if isinstance(exc.detail, str) else title
    extra: dict[str, object] = (
        {} if isinstance(exc.detail, str) else {"data": jsonable_encoder(exc.detail)}
    )
    response = problem(status, title, detail, request.url.path, **extra)
    response.headers.update(exc.headers or {})
    if status == 405:
        response.headers["Allow"] = _allowed_methods(request)
    return response


def _allowed_methods(request: Request) -> str:
    """Every method the path answers. Starlette's 405 lists those of the first route matching
    the path only, when a path's methods are split over several routes (GET and POST here)."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        route = context.original_route
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    detail = f"The request is not valid: {len(errors)} error(s), listed in `errors`."
    return problem(422, _phrase(422), detail, request.url.path, errors=errors)


class ServerErrors:
    """Pure ASGI middleware: an unhandled exception becomes a problem+json 500 that carries the
    request id, and is logged with it. Inside the request middleware, where the id is known:
    Starlette's own handler of last resort answers outside every middleware, after the id is
    gone. It wraps nothing, so a request that raises nothing pays one call."""

    def __init__(self, app: ASGIApp, request_id: Callable[[], str | None]) -> None:
        self.app = app
        self.request_id = request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            # The client gets the id, never the exception's text (it may hold data of other
            # callers, or secrets); the log line with that id has the traceback.
            logger.error("unhandled exception", exc_info=exc)
            response = _server_error(scope["path"], self.request_id())
            try:
                await response(scope, receive, send)
            except RuntimeError:  # the response had started: the server can only cut it
                raise exc from None


def _server_error(path: str, request_id: str | None) -> Response:
    detail = "The server failed to answer; the request id names its log lines."
    extra = {"request_id": request_id} if request_id else {}
    return problem(500, _phrase(500), detail, path, **extra)


async def _last_resort(request: Request, exc: Exception) -> Response:
    """An error of a middleware outside ServerErrors: problem+json still, without the id."""
    return _server_error(request.url.path, None)


def answer_errors_with_problems(app: FastAPI, request_id: Callable[[], str | None]) -> None:
    """Make FastAPI's and Starlette's own errors problem+json, as the service's are.

    `request_id` returns the current request's id (observability's), for the 500's body. Call
    it before the request middleware is added, so that ServerErrors runs inside it.
    """
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _last_resort)
    app.add_middleware(ServerErrors, request_id=request_id)
