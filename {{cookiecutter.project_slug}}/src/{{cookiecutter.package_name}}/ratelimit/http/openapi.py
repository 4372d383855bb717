"""The OpenAPI document, completed with what the limiter answers: every operation documents
the refusals it can really give, read from the route (its class, its declarations, whether the
caller middleware looks at its key) and the settings, never written by hand per route.

- 401, 403, 429, 503 and the security schemes where a key is read (every path but the probes and
  /metrics; a limited route wherever it is): 429 from the route's limits or from failed
  authentications, 503 for an unknown key while the plans database is away, a limited
  route under fail-closed while Redis is away, or a caller shed under overload; 400 where a
  trusted proxy can forward a non-address, and where a body is taken; the quota headers on a
  limited route's 2xx (not under RATELIMIT_MODE=shadow, which sends none there) and on every
  429;
- 413 where a body is taken, 431 and 500 everywhere; FastAPI's 422 as problem+json;
- 404 where a path parameter can name nothing, or where the route declares it.

Every error is the one problem+json schema of problems.py, referenced from the components.
The document is built once, on the first /openapi.json (FastAPI keeps it); requests pay nothing.
"""

import copy
import inspect
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute, iter_route_contexts

from ... import problems
from ...settings import Settings
from ..rules.applied import is_exempt
from ..rules.limiter import limiter
from .middleware import reads_credentials
from .route import RateLimitedRoute

Document = dict[str, Any]

_PROBLEM = {problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


def _header(description: str, schema: Document) -> Document:
    return {"description": description, "required": True, "schema": schema}


_INTEGER = {"type": "integer", "minimum": 0}
HEADERS: Document = {
    "X-Request-ID": _header(
        "The request's id: the client's own `X-Request-ID` when it looks like one, else a new "
        "one. Every log line of the request carries it.",
        {"type": "string"},
    ),
    "RateLimit-Policy": _header(
        'Every limit that applied (IETF draft-10), e.g. `"pro";q=1000;w=60`.', {"type": "string"}
    ),
    "RateLimit": _header(
        'The limit closest to refusing (IETF draft-10), e.g. `"pro";r=0;t=17`.',
        {"type": "string"},
    ),
    "X-RateLimit-Limit": _header("Requests allowed in the window of that limit.", _INTEGER),
    "X-RateLimit-Remaining": _header("Requests left in that window.", _INTEGER),
    "X-RateLimit-Reset": _header("When that limit frees capacity, in epoch seconds.", _INTEGER),
    "Retry-After": _header("Seconds to wait before trying again.", {"type": "integer"}),
    "WWW-Authenticate": _header("How to authenticate: `Bearer`.", {"type": "string"}),
}
QUOTA_HEADERS = (
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)

SECURITY_SCHEMES: Document = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`sk_…`) as `Authorization: Bearer <key>`.",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (`sk_…`) as `X-API-Key: <key>`.",
    },
}
# Either scheme, or none: a caller without a key is served on the anonymous plan.
OPTIONAL_KEY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}, {}]


def _refusal(description: str, *headers: str) -> Document:
    names = ("X-Request-ID", *headers)
    return {
        "description": description,
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in names},
        "content": _PROBLEM,
    }


def _responses(settings: Settings) -> Document:
    closed = settings.ratelimit_outage_policy == "fail-closed"
    shedding = settings.load_shedding_lag_ms > 0
    return {
        "BadRequest": _refusal(
            "The body cannot be read (JSON that is not UTF-8, say)"
            + (
                ", or a trusted proxy forwarded something that is not a client address"
                if settings.trusted_proxies
                else ""
            )
            + "."
        ),
        "Unauthorized": _refusal(
            "The API key is malformed, unknown or revoked (or two different keys were sent).",
            "WWW-Authenticate",
        ),
        "Forbidden": _refusal("The API key is blocked; `detail` gives the operator's reason."),
        "NotFound": _refusal("Nothing at this path."),
        "ContentTooLarge": _refusal(f"The body is larger than {settings.max_body_size_bytes} B."),
        "ValidationFailed": _refusal("The request is not valid: every error is in `errors`."),
        "TooManyRequests": _refusal(
            "A limit refused the request (a window, or too many requests in flight: then "
            "`Retry-After: 1`); `policy` names it. Nothing was spent.",
            "Retry-After",
            *QUOTA_HEADERS,
        ),
        "HeadersTooLarge": _refusal(f"The headers exceed {settings.max_header_bytes} B."),
        "ServerError": _refusal("The server failed; `request_id` names its log lines."),
        "Unavailable": _refusal(
            "An unknown key while the plans database is away"
            + (", or the limit storage (Redis) is away (fail-closed)" if closed else "")
            + (
                ", or the instance is overloaded and sheds the caller's plan to serve higher "
                "plans first (load shedding)"
                if shedding
                else ""
            )
            + ": retry after `Retry-After` seconds.",
            "Retry-After",
        ),
    }


def _answers_its_own_media_type(route: APIRoute) -> bool:
    """The endpoint returns a Response of its own (a CSV stream, say): FastAPI documents it
    as JSON, a guess, unless the route says what it sends."""
    returned = inspect.signature(route.endpoint).return_annotation
    return (
        inspect.isclass(returned)
        and issubclass(returned, Response)
        and not issubclass(returned, JSONResponse)
        and not any(str(status).startswith("2") for status in route.responses)
    )


def _document(
    operation: Document, route: APIRoute, path: str, settings: Settings, shadow: bool
) -> None:
    responses: Document = operation.setdefault("responses", {})
    limited = isinstance(route, RateLimitedRoute) and not is_exempt(limiter, route.endpoint)
    # Under RATELIMIT_MODE=shadow no limit can refuse, so a 2xx carries no quota headers: the
    # document must not promise them (a client generated from it would reject every answer).
    quota_on_success = limited and not shadow
    reads_key = limited or reads_credentials(path)
    refusals: dict[str, str] = {"431": "HeadersTooLarge", "500": "ServerError"}
    if reads_key:  # a limited route, or failed authentications counted per address
        refusals |= {
            "401": "Unauthorized",
            "403": "Forbidden",
            "429": "TooManyRequests",
            "503": "Unavailable",
        }
        operation["security"] = OPTIONAL_KEY
        if settings.trusted_proxies:
            refusals["400"] = "BadRequest"
    if "requestBody" in operation:
        # FastAPI's own 400 for a body it cannot decode, as problem+json (found by schemathesis)
        refusals |= {"400": "BadRequest", "413": "ContentTooLarge"}
    if any(parameter.get("in") == "path" for parameter in operation.get("parameters", ())):
        refusals["404"] = "NotFound"
    if "422" in responses:  # FastAPI's, in its own shape: ours instead
        refusals["422"] = "ValidationFailed"
    for status, response in responses.items():
        if status.startswith("2"):
            if _answers_its_own_media_type(route):
                response.pop("content", None)
            headers = response.setdefault("headers", {})
            for name in ("X-Request-ID", *(QUOTA_HEADERS if quota_on_success else ())):
                headers[name] = {"$ref": f"#/components/headers/{name}"}
        elif status[:1] in "45" and not response.get("content"):
            refusals.setdefault(status, "")  # declared by the route, without a body: ours
    for status, name in refusals.items():
        if name:
            responses[status] = {"$ref": f"#/components/responses/{name}"}
        else:
            responses[status] = _refusal(responses[status].get("description", ""))
    operation["responses"] = dict(sorted(responses.items()))


def complete(document: Document, app: FastAPI, settings: Settings, shadow: bool) -> Document:
    """`document` (FastAPI's) with the limiter's answers, headers and security schemes;
    `shadow`: RATELIMIT_MODE=shadow, as the check runs."""
    routes = {
        (context.path_format, method.lower()): context.original_route
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        for method in context.methods or ()
    }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            route = routes.get((path, method))
            if route is not None:
                _document(operation, route, path, settings, shadow)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = copy.deepcopy(problems.SCHEMA)
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape, replaced
        schemas.pop(unused, None)
    components["responses"] = _responses(settings)
    components["headers"] = HEADERS
    components["securitySchemes"] = SECURITY_SCHEMES
    return document


def install_openapi(app: FastAPI, settings: Settings, shadow: bool) -> None:
    """Serve the completed document: built on the first call, then kept by FastAPI."""
    build: Callable[[], Document] = app.openapi

    def openapi() -> Document:
        if app.openapi_schema is None:
            app.openapi_schema = complete(build(), app, settings, shadow)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
