"""Liveness and readiness probes: exempt from every limit and kept out of the access log."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...ratelimit import limiter

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
@limiter.exempt
async def live() -> dict[str, str]:
    """The process is up and its event loop answers. Checks nothing else, on purpose."""
    return {"status": "ok"}


@router.get("/ready")
@limiter.exempt
async def ready(request: Request) -> JSONResponse:
    """Can this instance serve traffic? Reports each dependency; 503 while one is down."""
    redis_ok = await request.app.state.limit_storage.ping()
    checks = {"redis": "ok" if redis_ok else "unreachable"}
    if request.app.state.limit_storage.redis is None:
        checks["redis"] = "not configured (in-memory limits)"
    healthy = redis_ok
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", "checks": checks},
        status_code=200 if healthy else 503,
    )
