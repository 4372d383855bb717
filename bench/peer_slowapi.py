"""Peer: the seed article's setup, slowapi counting on Redis as slowapi's documentation shows it.

Reproduces the FastAPI example of https://slowapi.readthedocs.io/en/latest/ with the storage
of its API reference (https://slowapi.readthedocs.io/en/latest/api/, `storage_uri`):
`Limiter(key_func=get_remote_address, storage_uri="redis://...")`, the `RateLimitExceeded`
handler, and `@limiter.limit(...)` on the endpoint. slowapi's defaults are kept: a fixed window
(the cheapest algorithm `limits` has), no rate-limit headers, and a check that is synchronous,
so every request holds the event loop for one Redis round trip.

The endpoint has the shape of `bare_app.routed_app`'s (and the service's): an APIRouter mounted
with include_router, a `request` parameter, the `Item` response model.

Environment: REDIS_URL; PEER_LIMIT (the limit, never reached in a run).
"""

import os

from bare_app import Item
from fastapi import APIRouter, FastAPI, Request
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

limiter = Limiter(key_func=get_remote_address, storage_uri=os.environ["REDIS_URL"])
app = FastAPI()
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

router = APIRouter(prefix="/v1/items")


@router.get("")
@limiter.limit(os.environ.get("PEER_LIMIT", "100000000/minute"))
async def list_stored_items(request: Request) -> list[Item]:
    state = request.app.state
    if not hasattr(state, "example_items"):
        state.example_items = {}
    return list(state.example_items.values())


app.include_router(router)
