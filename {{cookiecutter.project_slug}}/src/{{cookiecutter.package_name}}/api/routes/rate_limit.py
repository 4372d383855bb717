"""GET /v1/rate-limit: the caller's plan and the state of each of its quotas, spending none of
them (GitHub's `GET /rate_limit` is the model).

A plan's limits are counted per route template, so the answer lists them route by route: every
limited route, and `<unmatched>` (the one budget of every path no route matches). The limits a
route declares itself (`@limiter.limit`) are in its OpenAPI description, not here. All of them
are read in one call to the limit storage, which writes nothing.
"""

import math

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, Field
from starlette.responses import Response

from ...outages import Unavailable
from ...plans.plan import Plan
from ...problems import unavailable
from ...ratelimit import limiter
from ...ratelimit.failover import Failover
from ...ratelimit.limiter import CALLER_STATE_KEY
from ...ratelimit.route import UNMATCHED, RateLimitedRoute
from ...ratelimit.rules import LimitSet, RouteLimits, is_exempt

router = APIRouter(prefix="/v1/rate-limit", tags=["rate limits"], route_class=RateLimitedRoute)


class Quota(BaseModel):
    route: str = Field(description="the route template whose requests it counts")
    policy: str = Field(description="its name in the `RateLimit-Policy` header")
    limit: int = Field(description="requests allowed per window")
    remaining: int = Field(description="requests left now")
    reset: int = Field(description="when it frees capacity again, in epoch seconds")
    window: int = Field(description="the window, in seconds")
    shadow: bool = Field(
        default=False,
        description="counted but never refusing: a limit being rolled out, not in the headers",
    )


class RateLimitStatus(BaseModel):
    plan: str
    quotas: list[Quota]


def _plan_limits_only() -> None:
    """Stands for a route in RouteLimits when only the plan's limits on it are wanted."""


class PlanQuotas:
    """The counters of a plan's limits on every limited route of the app, as one LimitSet."""

    def __init__(self, app: FastAPI) -> None:
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
        self._kept: dict[tuple[str, str | None], tuple[Plan, LimitSet]] = {}
        self._shadow = app.state.settings.ratelimit_mode == "shadow"

    def of(self, request: Request, plan: Plan) -> LimitSet:
        key = (plan.name, plan.owner)
        kept = self._kept.get(key)
        if kept is not None and kept[0] is plan:  # a changed plan is a new Plan object
            return kept[1]
        limits = [
            limit
            for route in self._routes
            for limit in route.for_request(request, plan, self._shadow).limits
        ]
        limit_set = LimitSet(tuple(limits))
        if len(self._kept) >= RouteLimits.MAX_KEPT:
            self._kept.clear()
        self._kept[key] = (plan, limit_set)
        return limit_set


@router.get("", response_model=RateLimitStatus)
@limiter.limit("120/minute")  # on top of the plan's: each call reads every counter of the caller
async def rate_limit(request: Request) -> RateLimitStatus | Response:
    state = request.app.state
    if not hasattr(state, "plan_quotas"):
        state.plan_quotas = PlanQuotas(request.app)  # routes are all known by the first call
    caller = request.scope["state"][CALLER_STATE_KEY]
    failover: Failover = state.ratelimit_failover
    try:
        decision = await failover.peek(caller.identity, state.plan_quotas.of(request, caller.plan))
    except Unavailable as exc:
        return unavailable(exc.detail, request.url.path, exc.retry_after)
    return RateLimitStatus(
        plan=caller.plan.name,
        quotas=[
            Quota(
                route=result.limit.namespace[1],
                policy=result.limit.policy,
                limit=result.limit.item.amount,
                remaining=max(result.remaining, 0),
                reset=math.ceil(result.reset_at),
                window=result.limit.window_seconds,
                shadow=result.limit.shadow,
            )
            for result in decision.results
        ],
    )
