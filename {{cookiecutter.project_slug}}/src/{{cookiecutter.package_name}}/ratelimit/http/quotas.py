"""The quota endpoint's question: every limit of a caller's plan, on every limited route, read
in one call to the limit storage that spends nothing (a peek)."""

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.requests import Request

from ...plans.plan import Plan
from ..rules.applied import LimitSet, RouteLimits, is_exempt
from ..rules.counting import Decision
from ..rules.limiter import CALLER_STATE_KEY, limiter
from .route import UNMATCHED, RateLimitCheck, RateLimitedRoute


def _plan_limits_only() -> None:
    """Stands for a route in RouteLimits when only the plan's limits on it are wanted."""


class PlanQuotas:
    """The counters of a plan's limits on every limited route of the app, as one LimitSet."""

    def __init__(self, app: FastAPI, shadow: bool) -> None:
        paths = {
            context.path_format: None
            for context in iter_route_contexts(app.routes)
            if isinstance(context.original_route, RateLimitedRoute)
            and not is_exempt(limiter, context.original_route.endpoint)
            and context.path_format is not None
        }
        self._routes = [
            RouteLimits(limiter, _plan_limits_only, path) for path in [*paths, UNMATCHED]
        ]
        # (plan name, key override) -> (the plan it was worked out for, its limits everywhere)
        self._limit_sets: dict[tuple[str, str | None], tuple[Plan, LimitSet]] = {}
        self._shadow = shadow

    def limit_set(self, request: Request, plan: Plan) -> LimitSet:
        key = (plan.name, plan.owner)
        kept = self._limit_sets.get(key)
        if kept is not None and kept[0] is plan:  # a changed plan is a new Plan object
            return kept[1]
        limits = [
            limit
            for route in self._routes
            for limit in route.for_request(request, plan, self._shadow).limits
        ]
        limit_set = LimitSet(tuple(limits))
        if len(self._limit_sets) >= RouteLimits.MAX_LIMIT_SETS:
            self._limit_sets.clear()
        self._limit_sets[key] = (plan, limit_set)
        return limit_set


async def peek_quotas(request: Request) -> tuple[str, Decision]:
    """The caller's plan name, and the state of each of its limits on every limited route;
    raises Unavailable as a check would (the outage policy)."""
    check: RateLimitCheck = request.app.state.ratelimit_check
    state = request.app.state
    if not hasattr(state, "plan_quotas"):  # routes are all known by the first call
        state.plan_quotas = PlanQuotas(request.app, check.shadow)
    caller = request.scope["state"][CALLER_STATE_KEY]
    limit_set = state.plan_quotas.limit_set(request, caller.plan)
    return caller.plan.name, await check.peek(caller.identity, limit_set)
