"""The baked service with one more route, `GET /v1/items/declared`, whose own declared limit is
never reached: bench/scaling.py measures the CPU per request as the limits applying to it grow
(the plan's windows plus this declaration). The example routes' declarations (10/minute on
`POST /v1/items`...) are reached within a second of a benchmark, and a refusal is then
remembered in process: their requests would measure the 429 path.

Environment: BENCH_PACKAGE (the baked package's name), BENCH_ROUTE_LIMIT (the declared limit).
"""

import importlib
import os

from fastapi import Request

package = os.environ["BENCH_PACKAGE"]
items = importlib.import_module(f"{package}.api.routes.items")
limiter = importlib.import_module(f"{package}.ratelimit").limiter


# Declared as the example routes declare theirs, on their router, before the app includes it.
@items.router.get("/declared")
@limiter.limit(os.environ.get("BENCH_ROUTE_LIMIT", "100000000/minute"))
async def list_items_declared(request: Request) -> list[items.Item]:  # type: ignore[name-defined]
    return await items.list_items(request)


app = importlib.import_module(f"{package}.main").app
