"""Liveness and readiness probes: exempt from every limit and kept out of the access log."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from ...plans.cache import DATABASE_ERRORS
from ...ratelimit import limiter

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
@limiter.exempt
async def live() -> dict[str, str]:
    """The process is up and its event loop answers. Checks nothing else, on purpose."""
    return {"status": "ok"}


async def _database_answers(request: Request) -> bool:
    settings = request.app.state.settings
    try:
        async with asyncio.timeout(settings.database_timeout_seconds):
            async with request.app.state.db_engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except DATABASE_ERRORS:
        return False
    return True


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency does not answer."}},
)
@limiter.exempt
async def ready(request: Request) -> JSONResponse:
    """Can this instance serve traffic? Reports each dependency; 503 while one is down."""
    limit_storage = request.app.state.limit_storage
    redis_ok, database_ok = await asyncio.gather(limit_storage.ping(), _database_answers(request))
    checks = {
        "redis": "ok" if redis_ok else "unreachable",
        "database": "ok" if database_ok else "unreachable",
    }
    if limit_storage.redis is None:
        checks["redis"] = "not configured (in-memory limits)"
    healthy = redis_ok and database_ok
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", "checks": checks},
        status_code=200 if healthy else 503,
    )
