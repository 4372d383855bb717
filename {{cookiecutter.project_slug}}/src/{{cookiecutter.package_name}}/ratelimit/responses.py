"""problem+json (RFC 9457) bodies for refusals (401, 429, 503): one machine-readable shape."""

from starlette.requests import Request
from starlette.responses import JSONResponse

from .enforcer import StorageUnavailable
from .results import Decision


class RateLimited(Exception):
    """Raised by the rate-limit dependency; rendered as a 429 by `rate_limited_handler`."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("rate limit exceeded")
        self.decision = decision


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


def unavailable(detail: str, instance: str, retry_after: int) -> ProblemResponse:
    """503 for a dependency that is away (Redis fail-closed, the plans database)."""
    response = problem(503, "Service Unavailable", detail, instance)
    response.headers["Retry-After"] = str(retry_after)
    return response


async def rate_limited_handler(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RateLimited)
    binding = exc.decision.binding
    detail = binding.limit.error_message or f"Rate limit exceeded: {binding.limit.item}"
    # The quota headers and Retry-After are added by RateLimitMiddleware from the same decision.
    return problem(429, "Too Many Requests", detail, request.url.path, policy=binding.limit.policy)


async def storage_unavailable_handler(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StorageUnavailable)
    detail = "Rate limiting is temporarily unavailable; retry later."
    return unavailable(detail, request.url.path, exc.retry_after)
