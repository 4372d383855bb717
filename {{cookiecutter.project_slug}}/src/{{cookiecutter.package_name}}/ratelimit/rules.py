"""Which limits apply to a request: the caller's plan, plus what the route declared with slowapi.

Every limit is counted per caller and per route template (`/v1/items/{item_id}`, never the raw
URL), except `shared_limit`s, which are counted per caller across every route sharing the scope.

Most of this is known before any request arrives: a route's declarations are read from the
Limiter's registry once, when the route is built, and the limits of one plan on one route are
worked out on the first request and kept (until the plan changes). A request then costs a dict
lookup. Only declarations that depend on the request itself (a limit callable, a `key_func` of
its own, a callable `cost` or `exempt_when`) are worked out per request.
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from limits import RateLimitItem
from slowapi import Limiter
from slowapi.wrappers import Limit
from starlette.requests import Request

from ..plans.plan import Plan
from .limiter import caller_key


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    item: RateLimitItem
    # What is counted, after the subject: ("plan", route) / ("route", route) / ("shared", scope).
    namespace: tuple[str, ...]
    # Name of the policy in the RateLimit-Policy header.
    policy: str
    cost: int = 1
    error_message: str | None = None
    # Who is counted when not the caller: what a route's own key_func returned.
    subject: str | None = None
    window_seconds: int = field(init=False)
    # The counter's name after the subject, e.g. "plan:/v1/items:60/1MINUTE".
    key_suffix: str = field(init=False)

    def __post_init__(self) -> None:
        item = self.item
        window = f"{item.amount}/{item.multiples}{item.GRANULARITY.name}"
        object.__setattr__(self, "window_seconds", item.get_expiry())
        object.__setattr__(self, "key_suffix", ":".join([*self.namespace, window]))


@dataclass(frozen=True, slots=True)
class LimitSet:
    """The limits one request must pass, with what every check of them repeats, done once."""

    limits: tuple[AppliedLimit, ...]
    # RateLimit-Policy header value: the same for every request checked against this set.
    policy_header: bytes = field(init=False)
    # The check script's arguments after the strategy and nonce: n, then amount, window, cost.
    script_args: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        policies = ", ".join(
            f'"{limit.policy}";q={limit.item.amount};w={limit.window_seconds}'
            for limit in self.limits
        )
        args = [len(self.limits)]
        for limit in self.limits:
            args += [limit.item.amount, limit.window_seconds, limit.cost]
        object.__setattr__(self, "policy_header", policies.encode())
        object.__setattr__(self, "script_args", tuple(args))


def endpoint_name(endpoint: Callable[..., Any]) -> str:
    # The name slowapi registers declarations under (Limiter.__limit_decorator).
    return f"{endpoint.__module__}.{endpoint.__name__}"


def is_exempt(limiter: Limiter, endpoint: Callable[..., Any]) -> bool:
    """Whether the route was marked `@limiter.exempt`."""
    return endpoint_name(endpoint) in limiter._exempt_routes


def _policy_names(bases: Sequence[str], items: Sequence[RateLimitItem]) -> list[str]:
    """One policy name per limit: its base name, suffixed by the window where a base repeats."""
    return [
        base if bases.count(base) == 1 else f"{base}-{item.get_expiry()}s"
        for base, item in zip(bases, items, strict=True)
    ]


def standalone_limits(name: str, items: Sequence[RateLimitItem]) -> LimitSet:
    """Limits counted on their own, under one name, not per route (failed authentications)."""
    policies = _policy_names([name] * len(items), items)
    return LimitSet(
        tuple(
            AppliedLimit(item=item, namespace=(name,), policy=policy)
            for item, policy in zip(items, policies, strict=True)
        )
    )


def counted_method(request: Request) -> str:
    """The method a request is counted as: HEAD is a GET without its body, and spends its budget."""
    method = request.method
    return "GET" if method == "HEAD" else method


def _depends_on_request(limit: Limit) -> bool:
    return (
        limit.key_func is not caller_key
        or callable(limit.cost)
        or callable(limit.error_message)
        or limit.exempt_when is not None
    )


class RouteLimits:
    """The limits of one route: its declarations, read once, and its limits per plan."""

    def __init__(self, limiter: Limiter, endpoint: Callable[..., Any], path: str) -> None:
        name = endpoint_name(endpoint)
        self.path = path
        self.endpoint = endpoint
        self.exempt = is_exempt(limiter, endpoint)
        self._static: tuple[Limit, ...] = tuple(limiter._route_limits.get(name, ()))
        self._dynamic = tuple(limiter._dynamic_route_limits.get(name, ()))
        for group in self._dynamic:
            # Refused at start-up: slowapi would silently ignore it at request time.
            if inspect.iscoroutinefunction(getattr(group, "_LimitGroup__limit_provider", None)):
                raise TypeError(
                    f"{name}: slowapi ignores async limit callables; make it a plain function"
                )
        # slowapi's decorator wrapper reads request.state.view_rate_limit after the endpoint.
        self.declares = bool(self._static or self._dynamic)
        self._per_request = bool(self._dynamic) or any(map(_depends_on_request, self._static))
        # (plan name, method) -> (the plan they were worked out for, its limits here)
        self._kept: dict[tuple[str, str], tuple[Plan, LimitSet]] = {}

    def for_request(self, request: Request, plan: Plan) -> LimitSet:
        if self._per_request:
            return self._work_out(request, plan)
        key = (plan.name, counted_method(request))
        kept = self._kept.get(key)
        if kept is not None and kept[0] is plan:  # a changed plan is a new Plan object
            return kept[1]
        limit_set = self._work_out(request, plan)
        self._kept[key] = (plan, limit_set)
        return limit_set

    def _work_out(self, request: Request, plan: Plan) -> LimitSet:
        route = self.path
        plan_limits = plan.limits_for(route)
        applied = [
            AppliedLimit(item=item, namespace=("plan", route), policy=policy)
            for item, policy in zip(
                plan_limits, _policy_names([plan.name] * len(plan_limits), plan_limits), strict=True
            )
        ]
        declared = list(self._static)
        for group in self._dynamic:
            declared.extend(group.with_request(request))  # type: ignore[no-untyped-call]
        method = counted_method(request).lower()
        declared = [
            limit
            for limit in declared
            if (limit.methods is None or method in limit.methods) and not limit.is_exempt(request)
        ]
        names = _policy_names(
            [limit.scope or self.endpoint.__name__ for limit in declared],
            [limit.limit for limit in declared],
        )
        for limit, policy in zip(declared, names, strict=True):
            scope = limit.scope
            namespace: tuple[str, ...] = ("shared", scope) if scope else ("route", route)
            if limit.per_method:
                namespace += (method,)
            message = limit.error_message
            applied.append(
                AppliedLimit(
                    item=limit.limit,
                    namespace=namespace,
                    policy=policy,
                    cost=limit.cost(request) if callable(limit.cost) else limit.cost,
                    error_message=message(request) if callable(message) else message,
                    subject=None if limit.key_func is caller_key else limit.key_func(request),
                )
            )
        return LimitSet(tuple(applied))
