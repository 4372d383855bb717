"""The check every limited route runs before its endpoint: which limits, one count, the answer.

It runs after routing (see route.py), so it knows the matched route however it was mounted,
and its template (`/v1/items/{item_id}`), and a refused request never reaches the endpoint or
the parsing of its body. A refusal is a response returned here, not an exception: the 429
path stays as cheap as the 200 path.
"""

import hashlib
import logging
import time

from starlette.requests import Request
from starlette.responses import Response

from ..observability.logs import request_id_var
from ..observability.metrics import RATELIMIT_CHECK_SECONDS, RATELIMIT_DECISIONS, child
from ..plans.resolver import CallerResolver
from .enforcer import Enforcer, StorageUnavailable
from .middleware import CALLER_STATE_KEY, identify
from .responses import too_many_requests, unavailable
from .rules import RouteLimits

# Every refusal, once, on a logger of its own: route it to its own sink or alert on it.
refusals = logging.getLogger("ratelimit")

# Where the decision is left in the request's state, for the quota headers on the way out.
DECISION_STATE_KEY = "ratelimit_decision"


def hashed(identity: str) -> str:
    """A stable, non-reversible name for a caller in logs (client addresses are personal data)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


class RateLimitGuard:
    def __init__(self, resolver: CallerResolver, enforcer: Enforcer) -> None:
        self._resolver = resolver
        self._enforcer = enforcer

    async def refusal(self, request: Request, route: RouteLimits) -> Response | None:
        """The response refusing this request (401, 429, 503), or None to let it through."""
        scope = request.scope
        state = scope["state"]
        caller = state.get(CALLER_STATE_KEY)  # resolved by CallerMiddleware, before routing
        if caller is None:  # a limited route under a path that middleware passes through
            caller = await identify(self._resolver, scope)
            if isinstance(caller, Response):
                return caller
            state[CALLER_STATE_KEY] = caller
        plan = caller.plan.name
        limit_set = route.for_request(request, caller.plan)
        started = time.perf_counter()
        try:
            decision = await self._enforcer.check(caller.identity, limit_set)
        except StorageUnavailable as exc:
            child(RATELIMIT_DECISIONS, plan, route.path, "unavailable").inc()
            detail = "Rate limiting is temporarily unavailable; retry later."
            return unavailable(detail, scope["path"], exc.retry_after)
        finally:
            RATELIMIT_CHECK_SECONDS.observe(time.perf_counter() - started)
        state[DECISION_STATE_KEY] = decision
        binding = decision.binding
        if route.declares:  # slowapi's decorator wrapper reads this after the endpoint
            subject = binding.limit.subject or caller.identity
            state["view_rate_limit"] = (binding.limit.item, [subject, *binding.limit.namespace])
        outcome = "allowed" if binding.allowed else "limited"
        if decision.fallback:
            outcome = "fallback"
        child(RATELIMIT_DECISIONS, plan, route.path, outcome).inc()
        if binding.allowed:
            return None
        refusals.warning(
            "rate limit exceeded",
            extra={
                "plan": plan,
                "route": route.path,
                "method": scope["method"],
                "subject": hashed(binding.limit.subject or caller.identity),
                "policy": binding.limit.policy,
                "limit": str(binding.limit.item),
                "fallback": decision.fallback,
                "request_id": request_id_var.get(),
            },
        )
        return too_many_requests(decision, scope["path"])
