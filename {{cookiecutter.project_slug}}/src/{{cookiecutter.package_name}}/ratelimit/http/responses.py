"""What the limiter answers: the problem+json refusals (401, 400, 429; 503 is problems.py's)
and the quota headers of every limited response.

- X-RateLimit-Limit / -Remaining / -Reset: the de-facto headers; Reset is an integer epoch
  (slowapi sends a float, which clients parsing integers reject).
- RateLimit-Policy / RateLimit: IETF draft-ietf-httpapi-ratelimit-headers-10, e.g.
  `RateLimit-Policy: "anonymous";q=60;w=60` and `RateLimit: "anonymous";r=0;t=17`.
  https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/
- Retry-After: integer seconds, only on refusals (slowapi also sends it on 200s).

A concurrency limit is a policy item with a quota unit instead of a window,
`"concurrency";q=4;qu="concurrent-requests"`; refused, it says `r=0;t=1` and Retry-After: 1.
Shadow limits appear in none of these headers: they cannot refuse.
"""

import logging
import math
import time

from ...problems import ProblemResponse, problem
from ..rules.counting import Decision

# Refusals on a logger of its own: route it to its own sink or alert on it. Each caller's
# first refusal per window and policy, and a summary of the rest (observability.RefusalLog).
refusal_logger = logging.getLogger("ratelimit")
# A concurrency limit has no window: its refusals are summarised per minute.
CONCURRENCY_LOG_WINDOW = 60.0


def unauthorized(detail: str, instance: str) -> ProblemResponse:
    response = problem(401, "Unauthorized", detail, instance)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def forbidden(detail: str, instance: str) -> ProblemResponse:
    return problem(403, "Forbidden", detail, instance)


def bad_request(detail: str, instance: str) -> ProblemResponse:
    return problem(400, "Bad Request", detail, instance)


def too_many_requests(decision: Decision, instance: str) -> ProblemResponse:
    assert decision.binding is not None  # the enforced limit that refused
    limit = decision.binding.limit
    detail = limit.error_message or f"Rate limit exceeded: {limit.text}"
    return problem(429, "Too Many Requests", detail, instance, policy=limit.policy)


class QuotaHeaders:
    """The quota headers of one decision, written when the response starts (by the request
    context middleware, which calls what the check leaves in the request's state)."""

    __slots__ = ("decision",)

    def __init__(self, decision: Decision) -> None:
        self.decision = decision

    def __call__(self) -> list[tuple[bytes, bytes]]:
        now = time.time()
        decision = self.decision
        binding = decision.binding
        assert binding is not None  # the check leaves no quota headers without one
        # Never negative, whatever a counter says (a header a client parses as unsigned).
        limit, remaining = binding.limit, max(binding.remaining, 0)
        reset_in = max(0, math.ceil(binding.reset_at - now))
        headers = [
            (b"x-ratelimit-limit", b"%d" % limit.item.amount),
            (b"x-ratelimit-remaining", b"%d" % remaining),
            (b"x-ratelimit-reset", b"%d" % math.ceil(binding.reset_at)),
            (b"ratelimit-policy", decision.limit_set.policy_header),
            (b"ratelimit", f'"{limit.policy}";r={remaining};t={reset_in}'.encode()),
        ]
        if not binding.allowed:
            headers.append((b"retry-after", b"%d" % max(1, math.ceil(binding.reset_at - now))))
        return headers
