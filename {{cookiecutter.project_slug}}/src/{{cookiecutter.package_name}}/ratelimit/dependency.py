"""The rate-limit check, as an app-wide FastAPI dependency.

It runs after routing, so it sees the matched route however it was mounted (`include_router`
included: slowapi's middleware misses those on FastAPI >= 0.137) and its template
(`/v1/items/{item_id}`), and before the endpoint, so a refused request never runs it.
"""

from fastapi import Request

from .caller import current_caller
from .enforcer import Enforcer
from .responses import RateLimited
from .rules import RouteRules


async def enforce_rate_limits(request: Request) -> None:
    scope = request.scope
    rules: RouteRules = request.app.state.ratelimit_rules
    if rules.is_exempt(scope["endpoint"]):
        return
    limits = rules.for_request(request, current_caller(request), scope["route"].path)
    if not limits:
        return
    enforcer: Enforcer = request.app.state.ratelimit_enforcer
    decision = await enforcer.check(limits)
    state = scope["state"]
    state["ratelimit_decision"] = decision  # read by RateLimitMiddleware for the headers
    # slowapi's decorator wrapper reads this attribute after the endpoint returns.
    binding = decision.binding
    state["view_rate_limit"] = (
        binding.limit.item,
        [binding.limit.subject, *binding.limit.namespace],
    )
    if not decision.allowed:
        raise RateLimited(decision)
