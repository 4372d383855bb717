"""Who is calling: the identity limits are counted against, and the plan whose limits apply."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv6Address, ip_address, ip_network

from limits import RateLimitItem, parse_many
from starlette.requests import Request
from starlette.types import Scope


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


@dataclass(frozen=True, slots=True)
class Caller:
    # Stable, non-secret identity used in limiter keys: "ip:203.0.113.7" or "key:3f9a0c1b2d4e".
    identity: str
    plan: Plan


def client_address(scope: Scope) -> str:
    """The real client address, as text.

    When the direct peer is a trusted proxy, uvicorn's ProxyHeadersMiddleware (installed by
    create_app) has already replaced it with the address from X-Forwarded-For; from anyone
    else the header is ignored. The proxy copies that entry as it is, so it may not be an
    address at all: address_identity() says so.
    """
    client = scope.get("client")
    return client[0] if client else "unknown"


@lru_cache(maxsize=65_536)  # parsing costs more than the lookup, and callers come back
def address_identity(host: str, ipv6_prefix_length: int) -> str | None:
    """The identity an anonymous caller at `host` is counted as, or None if it is no address.

    One text per address (`2001:DB8:0:0::1` is `2001:db8::1`; `::ffff:1.2.3.4` is `1.2.3.4`),
    and an IPv6 caller is counted by its network prefix (a /64 by default): one subscriber
    usually holds a whole /64, and would otherwise get a fresh budget from every address in it.
    """
    try:
        address = ip_address(host)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return f"ip:{address.ipv4_mapped}"
        return f"ip:{ip_network((address, ipv6_prefix_length), strict=False)}"
    return f"ip:{address}"


def current_caller(request: Request) -> Caller:
    return request.scope["state"]["caller"]  # put there by ratelimit/middleware.py


def caller_key(request: Request) -> str:
    """slowapi key function: the caller's identity, so route limits count per caller too."""
    return current_caller(request).identity
