"""A subscription plan as the service uses it, and the grammar of its limit strings."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from limits import RateLimitItem, parse_many

# The plan of callers without an API key, counted per client address.
ANONYMOUS = "anonymous"


def parse_limits(value: str) -> tuple[RateLimitItem, ...]:
    """Limits in `limits` syntax ("1000/minute;20000/day"); ValueError naming what is wrong."""
    try:
        items = tuple(parse_many(value))
    except ValueError:
        items = ()
    if not items or any(item.amount < 1 or item.multiples < 1 for item in items):
        raise ValueError(f"{value!r} is not a limit such as '60/minute' or '10/second;1000/day'")
    return items


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    limits: tuple[RateLimitItem, ...]
    # Per-route replacements of `limits`, by route template.
    route_limits: Mapping[str, tuple[RateLimitItem, ...]] = field(default_factory=dict)

    @classmethod
    def from_strings(
        cls, name: str, limits: str, route_limits: Mapping[str, str] | None = None
    ) -> "Plan":
        return cls(
            name=name,
            limits=parse_limits(limits),
            route_limits={
                route: parse_limits(value) for route, value in (route_limits or {}).items()
            },
        )

    def limits_for(self, route: str) -> tuple[RateLimitItem, ...]:
        return self.route_limits.get(route, self.limits)
