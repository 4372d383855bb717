"""Who is calling: the identity limits are counted against, and the plan whose limits apply."""

from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from starlette.requests import Request
from starlette.types import Scope


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    limits: tuple[RateLimitItem, ...]

    @classmethod
    def from_string(cls, name: str, limits: str) -> "Plan":
        return cls(name=name, limits=tuple(parse_many(limits)))


@dataclass(frozen=True, slots=True)
class Caller:
    # Stable, non-secret identity used in limiter keys, e.g. "ip:203.0.113.7".
    identity: str
    plan: Plan


def anonymous_caller(scope: Scope, plan: Plan) -> Caller:
    """A caller without credentials, keyed by its client address.

    `scope["client"]` is the real client: when the direct peer is a trusted proxy, uvicorn's
    ProxyHeadersMiddleware (installed by create_app) has already replaced it with the address
    from X-Forwarded-For; from anyone else the header is ignored.
    """
    client = scope.get("client")
    return Caller(identity=f"ip:{client[0] if client else 'unknown'}", plan=plan)


def current_caller(request: Request) -> Caller:
    return request.scope["state"]["caller"]


def caller_key(request: Request) -> str:
    """slowapi key function: the caller's identity, so route limits count per caller too."""
    return current_caller(request).identity
