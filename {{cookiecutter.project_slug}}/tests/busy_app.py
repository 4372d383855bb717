"""The service with one CPU-heavy route, for test_shedding.py: started by uvicorn as
`tests.busy_app:app` (the project root on PYTHONPATH, as start_uvicorn puts it), its settings
from the environment."""

import time

from fastapi import APIRouter, Request

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.ratelimit import RateLimitedRoute

# CPU time each request holds the event loop for, as an endpoint that computes would.
BUSY_SECONDS = 0.03

router = APIRouter(route_class=RateLimitedRoute)


@router.get("/v1/busy")
async def busy(request: Request) -> dict[str, float]:
    deadline = time.perf_counter() + BUSY_SECONDS
    while time.perf_counter() < deadline:  # no await: nothing else runs meanwhile
        pass
    return {"busy_seconds": BUSY_SECONDS}


app = create_app()
app.include_router(router)
