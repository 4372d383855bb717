"""The slowapi `Limiter`: where routes declare their limits.

Routes use slowapi as its docs show: `@limiter.limit("10/minute")`, `@limiter.shared_limit(...)`,
`@limiter.exempt`. slowapi records each declaration in this object's registry at import time;
rules.py reads that registry, and enforcer.py with counters.py enforces it.

Why slowapi does not enforce them itself: slowapi 0.1.10 checks limits synchronously, so with
Redis storage every request blocks the event loop for a Redis round trip (and a slow Redis
freezes the whole worker, health checks included); `async+redis://` storage is refused by
slowapi; and with headers on it makes a second round trip per request. So `auto_check=False`
turns its check off and counters.py counts asynchronously, in one Redis script call per
request, with the same limit strings (parsed by `limits`, as slowapi does). The storage,
algorithm and key prefix are settings of the service (see settings.py), not arguments here;
this Limiter never touches storage. slowapi is pinned exactly because the service relies on
its registry layout.
"""

from slowapi import Limiter

from .caller import caller_key

limiter = Limiter(
    key_func=caller_key,
    auto_check=False,  # enforcement happens in guard.py, off the synchronous path
    headers_enabled=False,  # headers come from observability/middleware.py, with the decision
    storage_uri="memory://",  # never used: counting happens in counters.py
)
