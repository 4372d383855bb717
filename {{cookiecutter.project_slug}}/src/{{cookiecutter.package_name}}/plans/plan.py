"""A subscription plan as the service uses it (its limit strings' grammar: grammar.py)."""

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from limits import RateLimitItem

from .grammar import LIMITS_PATTERN, parse_limits

__all__ = ["ANONYMOUS", "LIMITS_PATTERN", "Plan", "parse_limits", "parse_route_limits"]

# The plan of callers without an API key, counted per client address.
ANONYMOUS = "anonymous"


def check_priority(value: int) -> int:
    """A plan's priority: an integer, 0 or more (a negative one would be shed at any lag)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"priority {value!r} must be a whole number, 0 or more")
    return value


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    limits: tuple[RateLimitItem, ...]
    # Per-route replacements of `limits`, by route template.
    route_limits: Mapping[str, tuple[RateLimitItem, ...]] = field(default_factory=dict)
    # Counted on every route beside `limits`, never refusing: a limit being rolled out.
    shadow_limits: tuple[RateLimitItem, ...] = ()
    # Whose own limits these are, when not the plan's alone: "account:<id>" (with_account_limits)
    # or "key:<public id>" (with_key_limits); None for the plan as it is. Caches of worked-out
    # limits are keyed by (name, owner).
    owner: str | None = None
    # A key's own limits, counted for that key alone on top of the limits above (which its
    # account's keys spend together), and per route template; key_id names the key.
    key_limits: tuple[RateLimitItem, ...] = ()
    key_route_limits: Mapping[str, tuple[RateLimitItem, ...]] = field(default_factory=dict)
    key_id: str | None = None
    # Under overload the lowest priorities are shed first; anonymous is 0 (migration 0004).
    priority: int = 0

    @classmethod
    def from_strings(
        cls,
        name: str,
        limits: str,
        route_limits: Mapping[str, str] | None = None,
        shadow_limits: str | None = None,
        priority: int = 0,
    ) -> "Plan":
        return cls(
            name=name,
            limits=parse_limits(limits),
            route_limits=parse_route_limits(route_limits or {}),
            shadow_limits=parse_limits(shadow_limits) if shadow_limits else (),
            priority=check_priority(priority),
        )

    def limits_for(self, route: str) -> tuple[RateLimitItem, ...]:
        return self.route_limits.get(route, self.limits)

    def key_limits_for(self, route: str) -> tuple[RateLimitItem, ...]:
        return self.key_route_limits.get(route, self.key_limits)

    def with_account_limits(
        self,
        account_id: int,
        limits: tuple[RateLimitItem, ...] | None,
        route_limits: Mapping[str, tuple[RateLimitItem, ...]],
    ) -> "Plan":
        """This plan as one account gets it, with the account's own limits in place of the plan's.

        Limits of every route replace the plan's limits and its per-route limits alike; per-route
        limits alone replace the plan's on those routes only. Shadow limits stay the plan's.
        """
        owner = f"account:{account_id}"
        if limits is not None:
            return replace(self, limits=limits, route_limits=dict(route_limits), owner=owner)
        merged = {**self.route_limits, **route_limits}
        return replace(self, route_limits=merged, owner=owner)

    def with_key_limits(
        self,
        public_id: str,
        limits: tuple[RateLimitItem, ...] | None,
        route_limits: Mapping[str, tuple[RateLimitItem, ...]],
    ) -> "Plan":
        """This plan (an account's) as one of its keys gets it: the key's own limits are counted
        for the key alone, on top of the account's, which every key of the account spends.

        The key's limits of every route apply on each route; its per-route limits replace them
        on those routes.
        """
        return replace(
            self,
            key_limits=limits or (),
            key_route_limits=dict(route_limits),
            key_id=public_id,
            owner=f"key:{public_id}",
        )


def parse_route_limits(route_limits: Mapping[str, str]) -> dict[str, tuple[RateLimitItem, ...]]:
    """Per-route limits by route template; ValueError naming what is wrong."""
    if not isinstance(route_limits, Mapping):
        raise ValueError(f"{route_limits!r} is not an object of route template -> limits")
    parsed = {}
    for route, value in route_limits.items():
        if not isinstance(route, str) or not route.startswith("/"):
            raise ValueError(f"route {route!r} must be a route template such as /v1/items")
        parsed[route] = parse_limits(value)
    return parsed
