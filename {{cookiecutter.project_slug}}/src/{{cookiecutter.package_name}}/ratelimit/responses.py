"""problem+json (RFC 9457) bodies for refusals (401, 429, 503): one machine-readable shape.

The quota headers (and Retry-After on a 429) are added on the way out by the request context
middleware, from the decision the check left in the request's state.
"""

from starlette.responses import JSONResponse

from .results import Decision


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


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


def unauthorized(detail: str, instance: str) -> ProblemResponse:
    response = problem(401, "Unauthorized", detail, instance)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def unavailable(detail: str, instance: str, retry_after: int) -> ProblemResponse:
    """503 for a dependency that is away (Redis fail-closed, the plans database)."""
    response = problem(503, "Service Unavailable", detail, instance)
    response.headers["Retry-After"] = str(retry_after)
    return response


def too_many_requests(decision: Decision, instance: str) -> ProblemResponse:
    limit = decision.binding.limit
    detail = limit.error_message or f"Rate limit exceeded: {limit.item}"
    return problem(429, "Too Many Requests", detail, instance, policy=limit.policy)
