"""problem+json (RFC 9457): the one shape of every error the service answers itself.

https://www.rfc-editor.org/rfc/rfc9457
"""

from starlette.responses import JSONResponse


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
