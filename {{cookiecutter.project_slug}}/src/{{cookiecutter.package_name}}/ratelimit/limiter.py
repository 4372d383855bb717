"""The slowapi `Limiter`: where routes declare their limits.

Routes use slowapi as its docs show: `@limiter.limit("10/minute")`, `@limiter.shared_limit(...)`,
`@limiter.exempt`. slowapi records each declaration in this object's registry at import time;
rules.py reads that registry, and route.py enforces it.

Why slowapi does not enforce them itself: slowapi 0.1.10 checks limits synchronously, so with
Redis storage every request blocks the event loop for a Redis round trip (and a slow Redis
freezes the whole worker, health checks included); `async+redis://` storage is refused by
slowapi; and with headers on it makes a second round trip per request. So `auto_check=False`
turns its check off and counting.py counts asynchronously, in one Redis script call per
request, with the same limit strings (parsed by `limits`, as slowapi does). The storage,
algorithm and key prefix are settings of the service (see settings.py), not arguments here;
this Limiter never touches storage. slowapi is pinned exactly because the service relies on
its registry layout.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from slowapi import Limiter
from starlette.requests import Request

# Where the caller middleware leaves the request's Caller (plans/caller.py) in its state.
CALLER_STATE_KEY = "caller"

F = TypeVar("F", bound=Callable[..., Any])


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

    def get_app_config(self, key: str, default_value: Any = None) -> Any:
        return default_value

    def exempt(self, obj: F) -> F:
        """`@limiter.exempt`, typed: slowapi's own decorator is not annotated."""
        exempted: F = super().exempt(obj)  # type: ignore[no-untyped-call]
        return exempted


limiter = DeclarationsLimiter(
    key_func=caller_key,
    auto_check=False,  # enforcement happens in route.py, off the synchronous path
    headers_enabled=False,  # the quota headers come from responses.py, with the decision
    storage_uri="memory://",  # never used: counting happens in counting.py
)
