"""Peer: the `limits` library's asyncio API used directly, without slowapi.

Reproduces the usage of https://limits.readthedocs.io/en/stable/async.html: a storage from
`storage_from_string("async+redis://...")`, `limits.aio.strategies.MovingWindowRateLimiter`
(the service's default algorithm), and one `await limiter.hit(limit, *identifiers)` per request,
here in a FastAPI dependency of the router, keyed by route template and client address as the
service keys anonymous callers. A refused hit is a 429. The check does not block the event loop;
it takes one Redis round trip (limits' moving-window Lua script) per request.

limits 5.8 defaults `async+redis://` to the coredis client, which the service does not install:
the redis-py client is chosen with `implementation="redispy"`, the one the service uses too,
with a connection pool large enough for the benchmark's connections (see below).

The endpoint has the shape of `bare_app.routed_app`'s (and the service's): an APIRouter mounted
with include_router, a `request` parameter, the `Item` response model.

Environment: REDIS_URL (redis://, used as async+redis://); PEER_LIMIT (the limit, never reached
in a run).
"""

import os

from bare_app import list_stored_items
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

storage = storage_from_string(
    "async+" + os.environ["REDIS_URL"],
    implementation="redispy",
    # redis-py's asyncio pool holds 100 connections by default and raises MaxConnectionsError
    # beyond: with Redis 2 ms away and 128 requests in flight, every request holds one.
    max_connections=1000,
)
moving_window = MovingWindowRateLimiter(storage)  # type: ignore[arg-type]
LIMIT = parse(os.environ.get("PEER_LIMIT", "100000000/minute"))


async def rate_limit(request: Request) -> None:
    route = request.scope["route"].path
    client = request.client.host if request.client else "unknown"
    if not await moving_window.hit(LIMIT, route, client):
        raise HTTPException(status_code=429, detail="rate limit exceeded")


router = APIRouter(prefix="/v1/items", dependencies=[Depends(rate_limit)])
# The reference endpoint itself, behind this peer's limiter.
router.get("")(list_stored_items)


app = FastAPI()
app.include_router(router)
