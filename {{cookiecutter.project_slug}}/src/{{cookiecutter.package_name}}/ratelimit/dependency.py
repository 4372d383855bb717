"""The rate-limit check, as an app-wide FastAPI dependency.

It runs after routing, so it sees the matched route however it was mounted (`include_router`
included: slowapi's middleware misses those on FastAPI >= 0.137) and its template
(`/v1/items/{item_id}`), and before the endpoint, so a refused request never runs it.
"""

import hashlib
import logging
import time

from fastapi import Request

from ..observability.logs import request_id_var
from ..observability.metrics import RATELIMIT_CHECK_SECONDS, RATELIMIT_DECISIONS
from .caller import current_caller
from .enforcer import Enforcer, StorageUnavailable
from .responses import RateLimited
from .rules import RouteRules

# Every refusal, once, on a logger of its own: route it to its own sink or alert on it.
refusals = logging.getLogger("ratelimit")


def hashed(identity: str) -> str:
    """A stable, non-reversible name for a caller in logs (client addresses are personal data)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


async def enforce_rate_limits(request: Request) -> None:
    scope = request.scope
    rules: RouteRules = request.app.state.ratelimit_rules
    if rules.is_exempt(scope["endpoint"]):
        return
    caller = current_caller(request)
    route = scope["route"].path
    limits = rules.for_request(request, caller, route)
    if not limits:
        return
    enforcer: Enforcer = request.app.state.ratelimit_enforcer
    started = time.perf_counter()
    try:
        decision = await enforcer.check(limits)
    except StorageUnavailable:
        RATELIMIT_DECISIONS.labels(caller.plan.name, route, "unavailable").inc()
        raise
    finally:
        RATELIMIT_CHECK_SECONDS.observe(time.perf_counter() - started)
    outcome = "allowed" if decision.allowed else "limited"
    RATELIMIT_DECISIONS.labels(
        caller.plan.name, route, "fallback" if decision.fallback else outcome
    ).inc()
    state = scope["state"]
    state["ratelimit_decision"] = decision  # read by RateLimitMiddleware for the headers
    # slowapi's decorator wrapper reads this attribute after the endpoint returns.
    binding = decision.binding
    state["view_rate_limit"] = (
        binding.limit.item,
        [binding.limit.subject, *binding.limit.namespace],
    )
    if not decision.allowed:
        refusals.warning(
            "rate limit exceeded",
            extra={
                "plan": caller.plan.name,
                "route": route,
                "method": request.method,
                "subject": hashed(binding.limit.subject),
                "policy": binding.limit.policy,
                "limit": str(binding.limit.item),
                "fallback": decision.fallback,
                "request_id": request_id_var.get(),
            },
        )
        raise RateLimited(decision)
