"""A limited streaming response reaches the client chunk by chunk, with its quota headers."""

import asyncio
import time

import httpx
from fastapi import Request
from fastapi.responses import StreamingResponse

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.ratelimit import limiter

from .conftest import free_port, set_plan


@limiter.limit("3/minute")
async def slow_stream(request: Request) -> StreamingResponse:
    async def chunks():
        for n in range(3):
            yield f"chunk {n}\n"
            await asyncio.sleep(0.3)

    return StreamingResponse(chunks(), media_type="text/plain")


async def test_streaming_response_streams_through_the_limiter(make_settings, database_url):
    import uvicorn

    await set_plan(database_url, "anonymous", "100/minute")
    app = create_app(make_settings())
    app.get("/stream")(slow_stream)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(200):  # uvicorn offers no event to wait on
            if server.started:
                break
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            started = time.monotonic()
            async with client.stream("GET", "/stream") as response:
                arrivals = []
                async for chunk in response.aiter_text():
                    arrivals.append((time.monotonic() - started, chunk))
            statuses = [(await client.get("/stream")).status_code for _ in range(3)]
    finally:
        server.should_exit = True
        await serving

    assert response.status_code == 200
    assert response.headers["ratelimit-policy"] == '"anonymous";q=100;w=60, "slow_stream";q=3;w=60'
    assert "".join(chunk for _, chunk in arrivals) == "chunk 0\nchunk 1\nchunk 2\n"
    assert arrivals[0][0] < 0.25, "the first chunk must arrive before the stream ends"
    assert statuses == [200, 200, 429]
