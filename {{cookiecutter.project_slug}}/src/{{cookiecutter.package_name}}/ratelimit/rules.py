"""Which limits apply to a request: the caller's plan, plus what the route declared with slowapi.

Every limit is counted per caller and per route template (`/v1/items/{item_id}`, never the raw
URL), except `shared_limit`s, which are counted per caller across every route sharing the scope.
"""

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem
from slowapi import Limiter
from slowapi.wrappers import Limit, LimitGroup
from starlette.requests import Request

from .caller import Caller


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    item: RateLimitItem
    # Who is counted: the caller's identity, or what a route's own key_func returned.
    subject: str
    # What is counted, after the subject: ("plan", route) / ("route", route) / ("shared", scope).
    namespace: tuple[str, ...]
    # Name of the policy in the RateLimit-Policy header.
    policy: str
    cost: int = 1
    error_message: str | None = None

    @property
    def window_seconds(self) -> int:
        return self.item.get_expiry()


def _endpoint_name(endpoint: Callable[..., Any]) -> str:
    # The name slowapi registers declarations under (Limiter.__limit_decorator).
    return f"{endpoint.__module__}.{endpoint.__name__}"


def _policy_names(bases: Sequence[str], items: Sequence[RateLimitItem]) -> list[str]:
    """One policy name per limit: its base name, suffixed by the window where a base repeats."""
    return [
        base if bases.count(base) == 1 else f"{base}-{item.get_expiry()}s"
        for base, item in zip(bases, items, strict=True)
    ]


class RouteRules:
    """Reads a Limiter's registry and turns it into the limits one request must pass."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def is_exempt(self, endpoint: Callable[..., Any]) -> bool:
        return _endpoint_name(endpoint) in self._limiter._exempt_routes

    def check_declarations(self) -> None:
        """Refuse at start-up what slowapi would silently ignore at request time."""
        for name, groups in self._limiter._dynamic_route_limits.items():
            for group in groups:
                provider = group._LimitGroup__limit_provider
                if inspect.iscoroutinefunction(provider):
                    raise TypeError(
                        f"{name}: slowapi ignores async limit callables; make it a plain function"
                    )

    def _declared(self, name: str, request: Request) -> list[Limit]:
        declared = list(self._limiter._route_limits.get(name, ()))
        for group in self._limiter._dynamic_route_limits.get(name, ()):
            group: LimitGroup
            declared.extend(group.with_request(request))
        return declared

    def for_request(self, request: Request, caller: Caller, route_path: str) -> list[AppliedLimit]:
        endpoint = request.scope["endpoint"]
        plan_limits = caller.plan.limits_for(route_path)
        applied = [
            AppliedLimit(
                item=item,
                subject=caller.identity,
                namespace=("plan", route_path),
                policy=policy,
            )
            for item, policy in zip(
                plan_limits,
                _policy_names([caller.plan.name] * len(plan_limits), plan_limits),
                strict=True,
            )
        ]
        declared = self._declared(_endpoint_name(endpoint), request)
        method = request.method.lower()
        declared = [
            limit
            for limit in declared
            if (limit.methods is None or method in limit.methods) and not limit.is_exempt(request)
        ]
        names = _policy_names(
            [limit.scope or endpoint.__name__ for limit in declared],
            [limit.limit for limit in declared],
        )
        for limit, policy in zip(declared, names, strict=True):
            scope = limit.scope
            namespace = ("shared", scope) if scope else ("route", route_path)
            if limit.per_method:
                namespace += (method,)
            cost = limit.cost(request) if callable(limit.cost) else limit.cost
            message = limit.error_message
            applied.append(
                AppliedLimit(
                    item=limit.limit,
                    subject=limit.key_func(request),
                    namespace=namespace,
                    policy=policy,
                    cost=cost,
                    error_message=message(request) if callable(message) else message,
                )
            )
        return applied
