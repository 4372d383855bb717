"""Rate limiting: routes declare limits with slowapi; this package enforces them without blocking.

- limiter.py      the slowapi `Limiter` routes decorate (`@limiter.limit`, `shared_limit`, `exempt`)
- caller.py       who is calling (identity and plan) as resolved for each request
- rules.py        which limits apply to a request: the caller's plan plus the route's declarations
- enforcer.py     decides a request's limits and applies the outage policy when Redis fails
- counters.py     counts hits: in Redis (check.lua, one call per request) or in memory
- check.lua       the Redis script deciding every limit of a request at once
- results.py      what a check decided, limit by limit
- storage.py      the Redis connection (timeouts, retries, pool size), or none
- dependency.py   the check itself, run after routing and before the endpoint
- middleware.py   puts the caller in the request and the quota headers on the response
- headers.py      X-RateLimit-*, RateLimit-Policy / RateLimit and Retry-After values
- responses.py    the problem+json bodies of 429 and 503
"""

from .limiter import limiter

__all__ = ["limiter"]
