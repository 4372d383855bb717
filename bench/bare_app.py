"""The reference: the same endpoint and response as the generated service, with no limiter and
no middleware. The benchmark divides every throughput by this one, measured in the same run."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/v1/items")
async def list_items() -> list[dict]:
    return []
