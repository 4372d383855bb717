"""Rate limiting: routes declare limits with slowapi; this package enforces them without blocking.

- limiter.py      the slowapi `Limiter` routes decorate (`@limiter.limit`, `shared_limit`, `exempt`)
- caller.py       who is calling (identity and plan) as resolved for each request
- middleware.py   resolves the caller (API key or client address) before routing: 401s here
- route.py        RateLimitedRoute: the route class that runs the check before each endpoint
- guard.py        the check itself: limits, one count, and the refusal if any
- rules.py        which limits apply to a request: the caller's plan plus the route's declarations
- enforcer.py     decides a request's limits and applies the outage policy when Redis fails
- counters.py     counts hits: in Redis (check.lua, one call per request) or in memory
- check.lua       the Redis script deciding every limit of a request at once
- results.py      what a check decided, limit by limit
- storage.py      the Redis connection (timeouts, retries, pool size), or none
- headers.py      X-RateLimit-*, RateLimit-Policy / RateLimit and Retry-After values
- responses.py    the problem+json bodies of 401, 429 and 503

The quota headers are put on the response by observability/middleware.py, from the decision
the check leaves in the request's state.
"""

from .limiter import limiter

__all__ = ["limiter"]
