"""Where counters live: Redis shared by every instance, or memory when no Redis is configured."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..settings import Settings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LimitStorage:
    storage: Storage
    # The client behind `storage`, for readiness checks; None for in-memory storage.
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
        yield LimitStorage(
            storage=MemoryStorage(), redis=None, timeout=settings.redis_timeout_seconds
        )
        return

    # We build the pool ourselves (instead of letting `limits` do it) to own its timeouts,
    # retries and size, and to close it on shutdown:
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
    storage = RedisStorage(
        f"async+{settings.redis_url}",
        implementation="redispy",  # redis-py's client costs less CPU per call than coredis
        key_prefix=settings.ratelimit_key_prefix,
        wrap_exceptions=True,  # every Redis failure surfaces as limits.errors.StorageError
        connection_pool=pool,
    )
    try:
        yield LimitStorage(
            storage=storage,
            redis=Redis(connection_pool=pool),
            timeout=settings.redis_timeout_seconds,
        )
    finally:
        await pool.aclose()
