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
    limit, remaining = binding.limit, binding.remaining
    reset_in = max(0, math.ceil(binding.reset_at - now))
    headers = [
        (b"x-ratelimit-limit", b"%d" % limit.item.amount),
        (b"x-ratelimit-remaining", b"%d" % remaining),
        (b"x-ratelimit-reset", b"%d" % math.ceil(binding.reset_at)),
        (b"ratelimit-policy", decision.limit_set.policy_header),
        (b"ratelimit", f'"{limit.policy}";r={remaining};t={reset_in}'.encode()),
    ]
    if not binding.allowed:
        headers.append((b"retry-after", b"%d" % retry_after_seconds(binding.reset_at, now)))
    return headers
