"""GET /v1/rate-limit: the caller's account, its plan and the state of each of its quotas,
spending none of them (GitHub's `GET /rate_limit` is the model).

A key's caller is its account: every key of the account spends the account's quotas (`budget`
"account"); a key with limits of its own also has those, counted for that key alone (`budget`
"key"). An anonymous caller's quotas are its address's (`budget` "address").

A plan's limits are counted per route template, so the answer lists them route by route: every
limited route, and `<unmatched>` (the one budget of every path no route matches). The limits a
route declares itself (`@limiter.limit`) are in its OpenAPI description, not here. All of them
are read in one call to the limit storage, which writes nothing.
"""

import math
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from ...outages import Unavailable
from ...plans.caller import Caller
from ...problems import unavailable
from ...ratelimit import RateLimitedRoute, limiter, peek_quotas

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
    budget: Literal["account", "key", "address"] = Field(
        description="who spends it: every key of the account, this key alone (its own limits), "
        "or an anonymous caller's address"
    )


class RateLimitStatus(BaseModel):
    account: str | None = Field(description="the account of the key; null without a key")
    plan: str
    quotas: list[Quota]


@router.get("", response_model=RateLimitStatus)
@limiter.limit("120/minute")  # on top of the plan's: each call reads every counter of the caller
async def rate_limit(request: Request) -> RateLimitStatus | Response:
    try:
        plan, decision = await peek_quotas(request)
    except Unavailable as exc:
        return unavailable(exc.detail, request.url.path, exc.retry_after)
    caller: Caller = request.state.caller  # set by the caller middleware before routing
    account = caller.account
    budget: Literal["account", "address"] = "address" if account is None else "account"
    return RateLimitStatus(
        account=account,
        plan=plan,
        quotas=[
            Quota(
                route=result.limit.namespace[1],
                policy=result.limit.policy,
                limit=result.limit.item.amount,
                remaining=max(result.remaining, 0),
                reset=math.ceil(result.reset_at),
                window=result.limit.window_seconds,
                shadow=result.limit.shadow,
                budget="key" if result.limit.namespace[0].startswith("key:") else budget,
            )
            for result in decision.results
        ],
    )
