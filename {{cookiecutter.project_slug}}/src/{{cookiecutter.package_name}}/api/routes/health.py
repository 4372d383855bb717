"""Liveness and readiness probes: exempt from every limit and kept out of the access log.

Readiness is for the orchestrator, not the public (nginx does not serve it): it answers from
a result at most READY_MAX_AGE_SECONDS old, and probes arriving while a check runs wait for
that one check. However many probes come, Redis gets one PING and the database one query per
READY_MAX_AGE_SECONDS at most, so a flood of probes cannot become a flood of either.
"""

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import State

from ...migrations import schema_behind
from ...plans.cache import DATABASE_ERRORS
from ...ratelimit import limiter

router = APIRouter(prefix="/health", tags=["health"])

# How old a readiness result may be when it is answered. An orchestrator probes every few
# seconds: a second's delay in noticing is nothing to it, and it caps the checks' cost.
READY_MAX_AGE_SECONDS = 1.0
# REDIS_URL unset: nothing to check (limits are in memory, per process).
NO_REDIS = "not configured (in-memory limits)"


@router.get("/live")
@limiter.exempt
async def live() -> dict[str, str]:
    """The process is up and its event loop answers. Checks nothing else, on purpose."""
    return {"status": "ok"}


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


class ReadinessCheck:
    """The dependencies' state, checked at most once per READY_MAX_AGE_SECONDS."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._result: tuple[float, Readiness] | None = None  # (when its check began, result)
        self._running: asyncio.Task[Readiness] | None = None

    async def result(self) -> Readiness:
        if self._result is not None:
            checked_at, readiness = self._result
            if time.monotonic() - checked_at < READY_MAX_AGE_SECONDS:
                return readiness
        if self._running is None:
            self._running = asyncio.create_task(self._check())
        # Shielded: a probe that gives up does not cancel the check the others wait for.
        return await asyncio.shield(self._running)

    async def _check(self) -> Readiness:
        started = time.monotonic()
        try:
            redis, database = await asyncio.gather(self._redis(), self._database())
            checks = {"redis": redis, "database": database}
            healthy = database == "ok" and redis in ("ok", NO_REDIS)
            readiness = Readiness(status="ok" if healthy else "degraded", checks=checks)
            self._result = (started, readiness)
            return readiness
        finally:
            self._running = None

    async def _redis(self) -> str:
        storage = self._state.limit_storage
        if storage.redis is None:
            return NO_REDIS
        status: str = await storage.status()
        return status

    async def _database(self) -> str:
        # One query: it proves the database answers and says whether its schema is this code's.
        try:
            async with asyncio.timeout(self._state.settings.database_timeout_seconds):
                async with self._state.db_engine.connect() as connection:
                    behind = await schema_behind(connection)
        except DATABASE_ERRORS:
            return "unreachable"
        return behind or "ok"


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is not usable."}},
)
@limiter.exempt
async def ready(request: Request) -> JSONResponse:
    """Can this instance serve traffic? Reports each dependency; 503 while one is not usable
    (unreachable, a wrong Redis password, a database schema behind this code's)."""
    state = request.app.state
    check: ReadinessCheck | None = getattr(state, "readiness_check", None)
    if check is None:
        check = state.readiness_check = ReadinessCheck(state)
    readiness = await check.result()
    return JSONResponse(
        readiness.model_dump(), status_code=200 if readiness.status == "ok" else 503
    )
