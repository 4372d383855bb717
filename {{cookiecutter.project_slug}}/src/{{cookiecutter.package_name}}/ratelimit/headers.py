"""Quota headers, computed from one decision.

- X-RateLimit-Limit / -Remaining / -Reset: the de-facto headers; Reset is an integer epoch
  (slowapi sends a float, which clients parsing integers reject).
- RateLimit-Policy / RateLimit: IETF draft-ietf-httpapi-ratelimit-headers-10, e.g.
  `RateLimit-Policy: "anonymous";q=60;w=60` and `RateLimit: "anonymous";r=0;t=17`.
  https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/
- Retry-After: integer seconds, only on refusals (slowapi also sends it on 200s).
"""

import math

from .results import Decision


def retry_after_seconds(reset_at: float, now: float) -> int:
    return max(1, math.ceil(reset_at - now))


def quota_headers(decision: Decision, now: float) -> list[tuple[bytes, bytes]]:
    binding = decision.binding
    reset_in = max(0, math.ceil(binding.reset_at - now))
    policies = ", ".join(
        f'"{result.limit.policy}";q={result.limit.item.amount};w={result.limit.window_seconds}'
        for result in decision.results
    )
    headers = [
        (b"x-ratelimit-limit", str(binding.limit.item.amount).encode()),
        (b"x-ratelimit-remaining", str(binding.remaining).encode()),
        (b"x-ratelimit-reset", str(math.ceil(binding.reset_at)).encode()),
        (b"ratelimit-policy", policies.encode()),
        (b"ratelimit", f'"{binding.limit.policy}";r={binding.remaining};t={reset_in}'.encode()),
    ]
    if not decision.allowed:
        headers.append((b"retry-after", str(retry_after_seconds(binding.reset_at, now)).encode()))
    return headers
