"""The service with slow endpoints of a test's own, for concurrency limits across processes:
`uvicorn tests.slow_app:app` (with the project root on PYTHONPATH, as start_uvicorn puts it)."""

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.ratelimit import RateLimitedRoute, limiter
from {{ cookiecutter.package_name }}.settings import settings_or_exit

# The most requests of one caller in flight on /slow and /slow-stream.
IN_FLIGHT = 2

router = APIRouter(route_class=RateLimitedRoute)


@router.get("/slow")
@limiter.concurrency(IN_FLIGHT)
async def slow(request: Request, seconds: float = 1.0) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@router.get("/slow-stream")
@limiter.concurrency(IN_FLIGHT)
async def slow_stream(request: Request, chunks: int = 100) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield b"x" * 1024
            await asyncio.sleep(0.1)

    return StreamingResponse(body())


app = create_app(settings_or_exit())
app.include_router(router)
