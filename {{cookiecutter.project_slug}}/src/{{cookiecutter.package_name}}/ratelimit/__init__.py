"""Rate limiting: routes declare limits with slowapi; this package enforces them without blocking.

Three rooms, each importing only those listed before it, and their wiring:
- rules/     what applies and what a count decided: declarations (the slowapi `Limiter`), the
             limits of a caller on a route, the decision. Pure: no I/O.
- counters/  how hits are counted: in Redis (check.lua, one script call per request) or in this
             process's memory, and the outage policy while Redis is away
- http/      the ASGI/FastAPI edge: the caller middleware (401/403/429/503 before routing), the
             route class and its check, the refusals and quota headers, load shedding, OpenAPI
- service.py wires them into the app with one call, `install(app, settings, resolver)`

A request's check moves one way: http/middleware.py resolves the caller (plans/caller.py), then
http/route.py asks rules/applied.py which limits apply, counters/failover.py counts them, and
http/responses.py answers.
"""

from .http.quotas import peek_quotas
from .http.route import RateLimitedRoute, exempt_app, limited_templates
from .rules.limiter import limiter
from .service import install

# What the rest of the service uses: routers (RateLimitedRoute, limiter, exempt_app), the quota
# endpoint (peek_quotas), the CLI (limited_templates) and the app factory (install).
__all__ = [
    "RateLimitedRoute",
    "exempt_app",
    "install",
    "limited_templates",
    "limiter",
    "peek_quotas",
]
