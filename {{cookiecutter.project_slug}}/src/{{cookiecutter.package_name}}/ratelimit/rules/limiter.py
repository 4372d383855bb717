"""The slowapi `Limiter`: where routes declare their limits.

Routes use slowapi as its docs show: `@limiter.limit("10/minute")`, `@limiter.shared_limit(...)`,
`@limiter.exempt`. slowapi records each declaration in this object's registry at import time;
applied.py reads that registry, and http/route.py enforces it. Two declarations are ours, since
slowapi has neither: `shadow=True` on `limit`/`shared_limit` (counted and logged, never refused:
how a new limit is rolled out), and `@limiter.concurrency(N)` (at most N requests of one caller
in flight on the route, across every instance).

Why slowapi does not enforce them itself: slowapi 0.1.10 checks limits synchronously, so with
Redis storage every request blocks the event loop for a Redis round trip (and a slow Redis
freezes the whole worker, health checks included); `async+redis://` storage is refused by
slowapi; and with headers on it makes a second round trip per request. So `auto_check=False`
turns its check off and counters/redis_counter.py counts asynchronously, in one Redis script
call per request, with the same limit strings (parsed by `limits`, as slowapi does). The
storage, algorithm and key prefix are settings of the service (see settings.py), not arguments
here; this Limiter never touches storage. slowapi is pinned exactly because the service relies on
its registry layout.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from slowapi import Limiter
from slowapi.wrappers import Limit, LimitGroup
from starlette.requests import Request

# Where the caller middleware leaves the request's Caller (plans/caller.py) in its state.
CALLER_STATE_KEY = "caller"

F = TypeVar("F", bound=Callable[..., Any])

# Set on the slowapi Limit (or LimitGroup) objects declared with `shadow=True`.
SHADOW_ATTRIBUTE = "ratelimit_shadow"


def is_shadow(declaration: Limit | LimitGroup) -> bool:
    return bool(getattr(declaration, SHADOW_ATTRIBUTE, False))


def endpoint_name(endpoint: Callable[..., Any]) -> str:
    # The name slowapi registers declarations under (Limiter.__limit_decorator).
    return f"{endpoint.__module__}.{endpoint.__name__}"


def caller_key(request: Request) -> str:
    """slowapi key function: the caller's identity, so route limits count per caller too."""
    identity: str = request.scope["state"][CALLER_STATE_KEY].identity
    return identity


class DeclarationsLimiter(Limiter):
    """slowapi's Limiter, deaf to slowapi's own configuration.

    slowapi reads `RATELIMIT_*` variables from the environment and from `./.env` when the
    Limiter is built (RATELIMIT_STRATEGY, RATELIMIT_ENABLED, RATELIMIT_DEFAULT, ...). Several
    of those names are also this service's settings, with other meanings and values: slowapi
    refused `RATELIMIT_STRATEGY=gcra` and the app crashed at import. Every knob of the service
    is in settings.py; this object only holds declarations, so slowapi reads nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Endpoint name -> most requests of one caller in flight (@limiter.concurrency).
        self.concurrency_limits: dict[str, int] = {}

    def get_app_config(self, key: str, default_value: Any = None) -> Any:
        return default_value

    def limit(self, *args: Any, shadow: bool = False, **kwargs: Any) -> Callable[[F], F]:
        """slowapi's `@limiter.limit(...)`; with `shadow=True` the limit is counted and its
        would-be refusals logged and counted in metrics, but nothing is refused."""
        return self._declare(super().limit(*args, **kwargs), shadow)

    def shared_limit(self, *args: Any, shadow: bool = False, **kwargs: Any) -> Callable[[F], F]:
        """slowapi's `@limiter.shared_limit(...)`, with `shadow` as in `limit`."""
        return self._declare(super().shared_limit(*args, **kwargs), shadow)

    def concurrency(self, most: int) -> Callable[[F], F]:
        """At most `most` requests of one caller in flight on this route, on every instance
        together; one more gets 429 with Retry-After: 1 (ratelimit/rules/applied.py)."""
        if not isinstance(most, int) or most < 1:
            raise ValueError(f"@limiter.concurrency({most!r}): expected a whole number above 0")

        def declare(endpoint: F) -> F:
            self.concurrency_limits[endpoint_name(endpoint)] = most
            return endpoint

        return declare

    def _declare(self, decorator: Callable[[F], F], shadow: bool) -> Callable[[F], F]:
        if not shadow:
            return decorator

        def declare(endpoint: F) -> F:
            name = endpoint_name(endpoint)
            before = [*self._route_limits.get(name, ()), *self._dynamic_route_limits.get(name, ())]
            wrapped = decorator(endpoint)
            for declaration in (
                *self._route_limits.get(name, ()),
                *self._dynamic_route_limits.get(name, ()),
            ):
                if not any(declaration is known for known in before):
                    setattr(declaration, SHADOW_ATTRIBUTE, True)
            return wrapped

        return declare

    def exempt(self, obj: F) -> F:
        """`@limiter.exempt`, typed: slowapi's own decorator is not annotated."""
        exempted: F = super().exempt(obj)  # type: ignore[no-untyped-call]
        return exempted


limiter = DeclarationsLimiter(
    key_func=caller_key,
    auto_check=False,  # enforcement happens in http/route.py, off the synchronous path
    headers_enabled=False,  # the quota headers come from http/responses.py, with the decision
    storage_uri="memory://",  # never used: counting happens in counters/
)
