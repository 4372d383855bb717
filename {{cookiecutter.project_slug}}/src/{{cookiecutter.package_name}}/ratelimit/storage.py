"""The Redis connection the limits are counted on, or none: then counts stay in memory."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..settings import Settings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LimitStorage:
    # None when REDIS_URL is unset: counts are then kept in process memory.
    redis: Redis | None
    timeout: float

    async def ping(self) -> bool:
        if self.redis is None:
            return True
        try:
            async with asyncio.timeout(self.timeout):
                return bool(await self.redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False


@asynccontextmanager
async def open_limit_storage(settings: Settings) -> AsyncIterator[LimitStorage]:
    if not settings.redis_url:
        logger.warning(
            "REDIS_URL is not set: rate limits are kept in memory, PER PROCESS. Every instance "
            "and worker grants the full limit. Set REDIS_URL for limits shared across instances."
        )
        yield LimitStorage(redis=None, timeout=settings.redis_timeout_seconds)
        return

    # The pool's timeouts, retries and size are chosen here, for the request path:
    # - without socket timeouts a Redis that accepts connections but never answers hangs
    #   every request;
    # - redis-py's default retry policy (3 retries with backoff) would multiply each timeout;
    #   one immediate retry on a connection error is kept, for the stale pooled connection a
    #   Redis restart leaves behind;
    # - redis-py's default pool raises "Too many connections" past 100 concurrent calls, which
    #   would turn a burst of traffic into an outage (and, fail-open, into per-process limits).
    #   The blocking pool makes callers wait for a free connection instead; Enforcer bounds
    #   the whole check.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=None,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
    )
    try:
        yield LimitStorage(
            redis=Redis(connection_pool=pool), timeout=settings.redis_timeout_seconds
        )
    finally:
        await pool.aclose()
