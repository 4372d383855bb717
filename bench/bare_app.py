"""The references: the service's endpoint with no limiter and no middleware. The benchmark
divides every throughput by `app`'s, measured in the same run.

- `app`: a bare FastAPI endpoint with the same response, declared on the app itself.
- `routed_app`: the service's own endpoint shape (its example `list_items`: a `request`
  parameter, the `Item` response model, the in-memory store on app.state) on an APIRouter
  mounted with include_router, as the service mounts it. What separates it from the service
  is the limiter and the service's middleware; what separates it from `app` is FastAPI itself.
"""

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field

app = FastAPI()


@app.get("/v1/items")
async def list_items() -> list[dict]:
    return []


class Item(BaseModel):
    id: int
    name: str = Field(min_length=1, max_length=200)


router = APIRouter(prefix="/v1/items")


@router.get("")
async def list_stored_items(request: Request) -> list[Item]:
    state = request.app.state
    if not hasattr(state, "example_items"):
        state.example_items = {}
    return list(state.example_items.values())


routed_app = FastAPI()
routed_app.include_router(router)
