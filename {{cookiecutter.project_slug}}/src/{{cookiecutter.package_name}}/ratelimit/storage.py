"""The Redis connection the limits are counted on, or none: then counts stay in memory."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..settings import Settings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LimitStorage:
    # None when REDIS_URL is unset: counts are then kept in process memory.
    redis: Redis | RedisCluster | None
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
    client = connect(settings.redis_url, settings)
    if isinstance(client, RedisCluster):
        # Learn the slot map now: concurrent first requests would each start discovering it.
        try:
            await client.initialize()
        except (RedisError, OSError) as exc:
            logger.warning("Redis Cluster unreachable at start-up (%s); will retry", exc)
    try:
        yield LimitStorage(redis=client, timeout=settings.redis_timeout_seconds)
    finally:
        await client.aclose()


def _hosts(netloc: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """`user:password@host1:port1,host2:port2` -> the hosts, and the credentials if any."""
    auth, _, hosts = netloc.rpartition("@")
    credentials = {}
    if auth:
        username, _, password = auth.partition(":")
        credentials = {"username": unquote(username) or None, "password": unquote(password)}
    found = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        found.append((name or host, int(port) if port else 6379))
    return found, credentials


def connect(url: str, settings: Settings) -> Redis | RedisCluster:
    """A client for `redis://`, `rediss://`, `redis+cluster://` or `redis+sentinel://` URLs
    (the forms the `limits` library uses), with the same timeouts and retries for all.

    - Without socket timeouts a Redis that accepts connections but never answers hangs every
      request; redis-py's default retry policy (3 retries with backoff) would multiply each
      timeout. One immediate retry on a connection error is kept, for the stale pooled
      connection a Redis restart leaves behind (cluster and sentinel clients also use it to
      follow a topology change).
    - redis-py's default pool raises "Too many connections" past its size, which would turn a
      burst of traffic into an outage; counters.py bounds concurrent calls to
      REDIS_MAX_CONNECTIONS, and the standalone pool waits for a free connection.
    """
    timeout = settings.redis_timeout_seconds
    common = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
    }
    parts = urlsplit(url)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        hosts, credentials = _hosts(parts.netloc)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            ssl=parts.scheme.startswith("rediss"),
            max_connections=settings.redis_max_connections,
            **credentials,
            **common,
        )
    if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
        hosts, credentials = _hosts(parts.netloc)
        service, _, database = parts.path.strip("/").partition("/")
        if not service:
            raise ValueError(
                "a redis+sentinel:// URL names the service: redis+sentinel://h:26379/mymaster"
            )
        sentinel = Sentinel(hosts, sentinel_kwargs={**common, **credentials}, **common)
        return sentinel.master_for(
            service,
            db=int(database or 0),
            ssl=parts.scheme.startswith("rediss"),
            **credentials,
        )
    pool = BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_max_connections, timeout=None, **common
    )
    return Redis(connection_pool=pool)
