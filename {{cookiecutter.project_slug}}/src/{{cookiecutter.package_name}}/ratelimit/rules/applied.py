"""Which limits apply to a request: the caller's plan, plus what the route declared with slowapi.

Every limit is counted per caller and per route template (`/v1/items/{item_id}`, never the raw
URL), except `shared_limit`s, which are counted per caller across every route sharing the scope.

A limit is enforced or shadow: a shadow limit (declared `shadow=True`, a plan's
`shadow_limits`, or every limit under RATELIMIT_MODE=shadow) is counted exactly as if it were
enforced (declared and plan ones under counters of their own), but never refuses: its would-be
refusals are logged and counted (http/route.py), and it is left out of the quota headers, which
describe only what can refuse. A concurrency limit (`@limiter.concurrency(N)`) counts requests
in flight instead of requests in a window.

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

from limits import RateLimitItem, RateLimitItemPerSecond
from slowapi import Limiter
from slowapi.wrappers import Limit
from starlette.requests import Request

from ...plans.grammar import bounds_problem, check_cost
from ...plans.plan import Plan
from .limiter import DeclarationsLimiter, caller_key, endpoint_name, is_shadow


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
    # Counted and logged, never refusing.
    shadow: bool = False
    # Requests in flight at once (item.amount of them), not requests per window.
    concurrent: bool = False
    window_seconds: int = field(init=False)
    # The counter's name after the subject, e.g. "plan:/v1/items:60/1MINUTE".
    key_suffix: str = field(init=False)
    # The limit in words, for logs and the 429 body.
    text: str = field(init=False)

    def __post_init__(self) -> None:
        item = self.item
        # A declared limit is parsed by slowapi, not by the plans' grammar: bound it here too,
        # so that no count, window or header it leads to overflows.
        problem = bounds_problem(item.amount, item.multiples, item.GRANULARITY.name)
        if problem is not None:
            raise ValueError(f"limit {item}: {problem}")
        check_cost(self.cost)
        if self.concurrent:
            window, text = f"in-flight{item.amount}", f"{item.amount} concurrent requests"
        else:
            window, text = f"{item.amount}/{item.multiples}{item.GRANULARITY.name}", str(item)
        object.__setattr__(self, "window_seconds", item.get_expiry())
        object.__setattr__(self, "key_suffix", ":".join([*self.namespace, window]))
        object.__setattr__(self, "text", text)


@dataclass(frozen=True, slots=True)
class LimitSet:
    """The limits one request must pass, with what every check of them repeats, done once."""

    limits: tuple[AppliedLimit, ...]
    # RateLimit-Policy header value: the same for every request checked against this set. Only
    # enforced limits: a client must not slow down for a limit that cannot refuse it.
    policy_header: bytes = field(init=False)
    # Whether a request admitted under this set holds a slot until its response is done.
    holds_slots: bool = field(init=False)
    # What a counter derives from the set once and reuses for every request (the Redis
    # counter's script arguments), by the counter's name. The rules know nothing of it.
    memo: dict[str, Any] = field(init=False, compare=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        policies = ", ".join(
            f'"{limit.policy}";q={limit.item.amount};qu="concurrent-requests"'
            if limit.concurrent
            else f'"{limit.policy}";q={limit.item.amount};w={limit.window_seconds}'
            for limit in self.limits
            if not limit.shadow
        )
        object.__setattr__(self, "policy_header", policies.encode())
        object.__setattr__(self, "holds_slots", any(limit.concurrent for limit in self.limits))


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

    # Most limit sets kept per route: one per plan, method and per-key override in use.
    MAX_LIMIT_SETS = 10_000

    def __init__(
        self, limiter: DeclarationsLimiter, endpoint: Callable[..., Any], path: str
    ) -> None:
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
        concurrency = limiter.concurrency_limits.get(name)
        self._concurrency = None if concurrency is None else RateLimitItemPerSecond(concurrency)
        # slowapi's decorator wrapper reads request.state.view_rate_limit after the endpoint.
        self.declares = bool(self._static or self._dynamic)
        self._per_request = bool(self._dynamic) or any(map(_depends_on_request, self._static))
        # (plan name, key override, method, all shadow) -> (the plan they were worked out for,
        # its limits here)
        self._limit_sets: dict[tuple[str, str | None, str, bool], tuple[Plan, LimitSet]] = {}

    def for_request(self, request: Request, plan: Plan, shadow: bool = False) -> LimitSet:
        """The limits of this request; `shadow`: every one of them shadow (RATELIMIT_MODE)."""
        if self._per_request:
            return self._limit_set_for(request, plan, shadow)
        key = (plan.name, plan.owner, counted_method(request), shadow)
        kept = self._limit_sets.get(key)
        if kept is not None and kept[0] is plan:  # a changed plan is a new Plan object
            return kept[1]
        limit_set = self._limit_set_for(request, plan, shadow)
        if len(self._limit_sets) >= self.MAX_LIMIT_SETS:
            self._limit_sets.clear()
        self._limit_sets[key] = (plan, limit_set)
        return limit_set

    def _limit_set_for(self, request: Request, plan: Plan, shadow: bool) -> LimitSet:
        route = self.path
        applied = []
        # A declared or configured shadow limit is counted apart ("plan-shadow", "shadow:..."),
        # so that rolling it out never touches the enforced counts, even of an equal limit.
        # Under RATELIMIT_MODE=shadow every limit keeps its usual counter: nothing is enforced
        # beside it, and enforcing later goes on from the same counts.
        for items, base, kind, is_shadow_limit in (
            (plan.limits_for(route), plan.name, "plan", shadow),
            # A key's own limits, on top of its account's: the same subject (the account, one
            # Redis hash slot), a counter of the key's own.
            (plan.key_limits_for(route), "key", f"key:{plan.key_id}", shadow),
            (plan.shadow_limits, f"{plan.name}-shadow", "plan-shadow", True),
        ):
            names = _policy_names([base] * len(items), items)
            applied += [
                AppliedLimit(
                    item=item, namespace=(kind, route), policy=policy, shadow=is_shadow_limit
                )
                for item, policy in zip(items, names, strict=True)
            ]
        declared = [(limit, is_shadow(limit)) for limit in self._static]
        for group in self._dynamic:
            limits = group.with_request(request)  # type: ignore[no-untyped-call]
            declared += [(limit, is_shadow(group)) for limit in limits]
        method = counted_method(request).lower()
        declared = [
            (limit, declared_shadow)
            for limit, declared_shadow in declared
            if (limit.methods is None or method in limit.methods) and not limit.is_exempt(request)
        ]
        names = _policy_names(
            [
                (limit.scope or self.endpoint.__name__) + ("-shadow" if declared_shadow else "")
                for limit, declared_shadow in declared
            ],
            [limit.limit for limit, _ in declared],
        )
        for (limit, declared_shadow), policy in zip(declared, names, strict=True):
            scope = limit.scope
            namespace: tuple[str, ...] = ("shared", scope) if scope else ("route", route)
            if limit.per_method:
                namespace += (method,)
            if declared_shadow:
                namespace = ("shadow", *namespace)
            message = limit.error_message
            applied.append(
                AppliedLimit(
                    item=limit.limit,
                    namespace=namespace,
                    policy=policy,
                    cost=limit.cost(request) if callable(limit.cost) else limit.cost,
                    error_message=message(request) if callable(message) else message,
                    subject=None if limit.key_func is caller_key else limit.key_func(request),
                    shadow=shadow or declared_shadow,
                )
            )
        if self._concurrency is not None:
            applied.append(
                AppliedLimit(
                    item=self._concurrency,
                    namespace=("concurrency", route),
                    policy="concurrency",
                    error_message=f"Too many concurrent requests: at most "
                    f"{self._concurrency.amount} in flight on this route",
                    shadow=shadow,
                    concurrent=True,
                )
            )
        return LimitSet(tuple(applied))
