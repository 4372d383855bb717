"""The Redis the limits are counted on (or none: then counts stay in memory): its connection,
its timeouts, and how script calls travel to it.
"""

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from ..observability.metrics import RATELIMIT_STORAGE_ERRORS
from ..settings import Settings, mask_password
from .resp import RespChannel, pack

logger = logging.getLogger(__name__)

RedisClient = Redis | RedisCluster
# A script call's arguments after its keys, and its reply: a flat list of integers.
ScriptArgs = list[str | int]
Reply = list[int]
# One call waiting in a batch: its keys, its arguments, and where its reply goes.
PendingCall = tuple[list[str], ScriptArgs, "asyncio.Future[Reply]"]


@dataclass(slots=True)
class LimitStorage:
    # None when REDIS_URL is unset: counts are then kept in process memory.
    redis: RedisClient | None
    timeout: float

    async def ping(self) -> bool:
        return await self.status() == "ok"

    async def status(self) -> str:
        """ "ok", or why Redis cannot be used, in the words an operator acts on: a wrong
        password is not an unreachable server."""
        if self.redis is None:
            return "ok"
        try:
            async with asyncio.timeout(self.timeout):
                return "ok" if await self.redis.ping() else "unreachable"
        except AuthenticationError:  # WRONGPASS, NOAUTH (a password expected, none sent)
            return "authentication failed"
        except (RedisError, OSError, TimeoutError):
            return "unreachable"


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
    storage = LimitStorage(redis=client, timeout=settings.redis_timeout_seconds)
    try:
        if isinstance(client, RedisCluster):
            # Learn the slot map now: concurrent first requests would each start discovering it.
            with suppress(RedisError, OSError):
                await client.initialize()
        # Said at start-up, not first noticed by the first limited request; start-up goes on.
        status = await storage.status()
        if status != "ok":
            logger.warning(
                "Redis at %s: %s at start-up; RATELIMIT_OUTAGE_POLICY=%s applies until it answers",
                mask_password(settings.redis_url),
                "authentication failed (check the password in REDIS_URL)"
                if status == "authentication failed"
                else "does not answer",
                settings.ratelimit_outage_policy,
            )
        yield storage
    finally:
        await client.aclose()


@dataclass(frozen=True, slots=True)
class _Credentials:
    username: str | None = None
    password: str | None = None


def _hosts(netloc: str) -> tuple[list[tuple[str, int]], _Credentials]:
    """`user:password@host1:port1,host2:port2` -> the hosts, and the credentials if any."""
    auth, _, hosts = netloc.rpartition("@")
    credentials = _Credentials()
    if auth:
        username, _, password = auth.partition(":")
        credentials = _Credentials(unquote(username) or None, unquote(password))
    found = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        found.append((name or host, int(port) if port else 6379))
    return found, credentials


def connect(url: str, settings: Settings) -> RedisClient:
    """A client for `redis://`, `rediss://`, `redis+cluster://` or `redis+sentinel://` URLs
    (the forms the `limits` library uses), with the same timeouts and retries for all.

    - Without socket timeouts a Redis that accepts connections but never answers hangs every
      request; redis-py's default retry policy (3 retries with backoff) would multiply each
      timeout. One immediate retry on a connection error is kept, for the stale pooled
      connection a Redis restart leaves behind (cluster and sentinel clients also use it to
      follow a topology change).
    - redis-py's default pool raises "Too many connections" past its size, which would turn a
      burst of traffic into an outage; ScriptRunner bounds concurrent calls to
      REDIS_MAX_CONNECTIONS, and the standalone pool waits for a free connection.
    """
    timeout = settings.redis_timeout_seconds
    retry = Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,))
    parts = urlsplit(url)
    tls = parts.scheme.startswith("rediss")
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        hosts, credentials = _hosts(parts.netloc)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            ssl=tls,
            max_connections=settings.redis_max_connections,
            username=credentials.username,
            password=credentials.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
        )
    if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
        hosts, credentials = _hosts(parts.netloc)
        service, _, database = parts.path.strip("/").partition("/")
        if not service:
            raise ValueError(
                "a redis+sentinel:// URL names the service: redis+sentinel://h:26379/mymaster"
            )
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            hosts,
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": retry,
                "username": credentials.username,
                "password": credentials.password,
            },
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry,
        )
        master: Redis = sentinel.master_for(
            service,
            db=int(database or 0),
            ssl=tls,
            username=credentials.username,
            password=credentials.password,
        )
        return master
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=retry,
    )
    return Redis(connection_pool=pool)


def _direct_connection(client: RedisClient) -> dict[str, object] | None:
    """The connection settings of a plain TCP or Unix-socket Redis, which script calls reach
    through resp.py; None for TLS, Sentinel and Cluster, which they reach through redis-py."""
    if not isinstance(client, Redis):
        return None
    pool = client.connection_pool
    if pool.connection_class not in (Connection, UnixDomainSocketConnection):
        return None  # SSLConnection, or a Sentinel-managed connection
    return dict(pool.connection_kwargs)


class ScriptRunner:
    """Calls one Lua script by EVALSHA: the calls of one event-loop tick in one write.

    Loads the script again when Redis has lost it (a restart, SCRIPT FLUSH). At most
    `max_calls` calls (or batches) in flight; each bounded by `timeout`, above the socket
    timeouts (connecting, NOSCRIPT reload and retries included). On a plain TCP or Unix-socket
    Redis the calls travel on one connection of resp.py's, pipelined; otherwise on redis-py's
    pooled connections.
    """

    def __init__(self, client: RedisClient, script: str, max_calls: int, timeout: float) -> None:
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        # redis-py refuses EVALSHA in cluster pipelines: on a cluster, each call goes alone
        # (still one round trip per request) to the node owning its keys' slot.
        self._pipelined = not isinstance(client, RedisCluster)
        self._in_flight = asyncio.Semaphore(max_calls)
        self._timeout = timeout  # one timer per batch rather than one per request
        self._pending: list[PendingCall] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._direct = _direct_connection(client)
        read_timeout = (self._direct or {}).get("socket_timeout")
        self._read_timeout = read_timeout if isinstance(read_timeout, int | float) else None
        self._channel: RespChannel | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    def close(self) -> None:
        """Close resp.py's connection, if any, for good (redis-py's close with the client)."""
        self._closed = True
        if self._channel is not None:
            self._channel.close()

    async def call(self, keys: list[str], args: ScriptArgs) -> Reply:
        if not self._pipelined:
            try:
                async with asyncio.timeout(self._timeout), self._in_flight:
                    try:
                        reply: Reply = await self._client.evalsha(
                            self._sha, len(keys), *keys, *args
                        )
                    except NoScriptError:
                        await self._client.script_load(self._script)
                        reply = await self._client.evalsha(self._sha, len(keys), *keys, *args)
                    return reply
            except (RedisError, OSError, TimeoutError):
                RATELIMIT_STORAGE_ERRORS.inc()
                raise
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)  # after every request of this tick has queued its call
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[PendingCall]) -> None:
        try:
            async with asyncio.timeout(self._timeout), self._in_flight:
                replies = await self._pipeline(batch)
                if any(isinstance(reply, NoScriptError) for reply in replies):
                    # Redis restarted or SCRIPT FLUSH: load the script again, redo those calls.
                    await self._client.script_load(self._script)
                    retry = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                    for i, reply in zip(
                        retry, await self._pipeline([batch[i] for i in retry]), strict=True
                    ):
                        replies[i] = reply
            for (*_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue  # its request was cancelled (the client went away)
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except BaseException as exc:  # handed to every request still waiting on this batch
            if isinstance(exc, RedisError | OSError | TimeoutError):
                RATELIMIT_STORAGE_ERRORS.inc()  # one failed call, however many requests wait
            error = exc if isinstance(exc, Exception) else RedisConnectionError("call cancelled")
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            if error is not exc:
                raise  # cancelled (shutting down): the task itself ends cancelled

    async def _pipeline(self, batch: list[PendingCall]) -> list[Reply | ResponseError]:
        """Every call of the batch in one write, on resp.py's connection or a pooled redis-py
        one (TLS, Sentinel), then their replies.

        Why not redis-py's Pipeline: it builds a command stack, encodes every argument through
        its encoder and wraps the exchange in retries and response callbacks, about twice the
        CPU per call of writing the commands out here (figures: the README's performance
        section). On the pooled path the connection, its pool, AUTH/SELECT/TLS, Sentinel and
        reply parsing stay redis-py's.
        """
        commands = [["EVALSHA", self._sha, len(keys), *keys, *args] for keys, args, _ in batch]
        if self._direct is not None:
            exchange = partial(self._exchange_direct, commands)
        else:
            exchange = partial(self._exchange, b"".join(map(pack, commands)), len(commands))
        try:
            return await exchange()
        except RedisConnectionError:
            # Redis dropped the connection (a restart), found when used or while waiting: one
            # more try, on a fresh connection, as redis-py's own retry does. (A failure of the
            # service's own making, a timeout or the shutdown, is not retried.)
            return await exchange()

    async def _exchange_direct(
        self, commands: list[list[str | int]]
    ) -> list[Reply | ResponseError]:
        channel = self._channel
        if channel is None or channel.closed:
            channel = await self._open_channel()
        # A batch cancelled here (its time is up, or the service is stopping) leaves the
        # connection as it is: its futures are cancelled, and its replies, when they come, are
        # read and dropped in turn. Closing it would fail the other batches on it, which Redis
        # may have run already. A reply that does not come in time aborts it (resp.py).
        futures = channel.send(commands, self._read_timeout)
        return [await future for future in futures]

    async def _open_channel(self) -> RespChannel:
        async with self._opening:  # one connection, however many batches wait for it
            if self._closed:
                raise RedisError("the rate limiter's Redis connection is closed (shutting down)")
            channel = self._channel
            if channel is None or channel.closed:
                assert self._direct is not None
                timeout = self._direct.get("socket_connect_timeout") or self._timeout
                assert isinstance(timeout, int | float)
                channel = self._channel = await RespChannel.open(self._direct, timeout)
            return channel

    async def _exchange(self, payload: bytes, replies: int) -> list[Reply | ResponseError]:
        assert isinstance(self._client, Redis)  # a cluster's calls are not batched
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated
        try:
            await connection.send_packed_command(payload, check_health=False)
            received: list[Reply | ResponseError] = []
            for _ in range(replies):
                try:
                    received.append(await connection.read_response())
                except ResponseError as exc:  # that call's error (NOSCRIPT); the others go on
                    received.append(exc)
            return received
        except BaseException:
            await connection.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            await pool.release(connection)
