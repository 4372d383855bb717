"""Rate limiting: routes declare limits with slowapi; this package enforces them without blocking.

A request's check moves one way through these modules:
- middleware.py  resolves the caller (plans/caller.py) before routing: 401/400/503 here
- route.py       the route class, and the check it runs before each endpoint: decide, record,
                 answer; unmatched paths and the start-up check of every route
- rules.py       which limits apply: the caller's plan plus the route's slowapi declarations
- failover.py    the outage policy while Redis is away (fail-open, fail-closed)
- counting.py    what a count decided, and the Counter protocol, implemented by
  redis_counter.py   in Redis: check.lua, one script call per request, and
  memory_counters.py in this process's memory (no Redis, or the fail-open fallback)
- storage.py     the Redis connection, its timeouts, and how script calls travel
- responses.py   the problem+json refusals and the quota headers
- quotas.py      the quota endpoint's peek at every limit of a caller's plan
- shedding.py    under overload (event-loop lag), 503 for the lowest plan priorities first,
                 asked by middleware.py once the caller is known

limiter.py holds the slowapi `Limiter` routes decorate; service.py wires it all into the app
with one call, `install(app, settings, resolver)`.
"""

from .limiter import limiter
from .quotas import peek_quotas
from .route import RateLimitedRoute, limited_templates
from .service import install

# What the rest of the service uses: routers (RateLimitedRoute, limiter), the quota endpoint
# (peek_quotas), the CLI (limited_templates) and the app factory (install).
__all__ = ["RateLimitedRoute", "install", "limited_templates", "limiter", "peek_quotas"]
