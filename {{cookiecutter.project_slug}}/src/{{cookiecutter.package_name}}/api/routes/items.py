"""An example resource showing each way a route declares limits. Replace with your own.

Every route here is also bound by the caller's plan (anonymous callers: ANONYMOUS_LIMIT).
"""

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ...ratelimit import RateLimitedRoute, limiter

# route_class puts the rate-limit check in front of every route here (create_app refuses to
# start with a router that forgets it).
router = APIRouter(prefix="/v1/items", tags=["items"], route_class=RateLimitedRoute)


class ItemIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class Item(ItemIn):
    id: int


def _items(request: Request) -> dict[int, Item]:
    """Example storage, in the app's memory; a real service keeps its data in its database."""
    state = request.app.state
    if not hasattr(state, "example_items"):
        state.example_items = {}
    items: dict[int, Item] = state.example_items
    return items


@router.get("")
async def list_items(request: Request) -> list[Item]:
    return list(_items(request).values())


@router.post("", status_code=201)
@limiter.limit("10/minute")  # writes are costlier: a stricter limit on top of the plan's
# Stricter still, being rolled out: counted, and logged where it would refuse, refusing nothing
# until `shadow=True` is removed (README, Rolling out a new limit).
@limiter.limit("5/minute", shadow=True)
async def create_item(request: Request, item: ItemIn) -> Item:
    items = _items(request)
    created = Item(id=len(items) + 1, name=item.name)
    items[created.id] = created
    return created


@router.post("/import", status_code=201)
@limiter.limit("30/hour", cost=10)  # a bulk import weighs ten ordinary writes
async def import_items(request: Request, items: list[ItemIn]) -> list[Item]:
    store = _items(request)
    created = [Item(id=len(store) + n, name=item.name) for n, item in enumerate(items, start=1)]
    store.update((item.id, item) for item in created)
    return created


@router.get("/export")
@limiter.shared_limit("5/minute", scope="exports")  # one budget for every export route
@limiter.concurrency(2)  # a long response: at most two of one caller's in flight at once
async def export_items(request: Request) -> StreamingResponse:
    async def rows() -> AsyncIterator[str]:
        yield "id,name\n"
        for item in list(_items(request).values()):
            yield f"{item.id},{item.name}\n"
            await asyncio.sleep(0)

    return StreamingResponse(rows(), media_type="text/csv")


@router.get("/{item_id:int}")  # not "/import" or "/export": those are other routes
async def get_item(request: Request, item_id: int) -> Item:
    items = _items(request)
    if item_id not in items:
        raise HTTPException(status_code=404, detail="item not found")
    return items[item_id]
