"""The Redis the limits are counted on (or none: then counts stay in memory): its connection,
its timeouts, and how script calls travel to it.
"""

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from ...observability.metrics import RATELIMIT_STORAGE_ERRORS, RATELIMIT_STORAGE_MAY_EVICT, labelled
from ...settings import Settings, mask_password
from .resp import RespChannel, deadline_after_io, pack

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
    # Whether Redis answered when the service started (else its start-up checks wait for it).
    answered_at_start: bool = True

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
        storage.answered_at_start = status == "ok"
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
    """The connection settings of a single Redis (TCP, TLS or a Unix socket), which script
    calls reach through resp.py; None for Sentinel and Cluster, which they reach through
    redis-py (it follows their topology). With TLS, `ssl_context` is the context redis-py would
    build from the URL's `ssl_*` settings."""
    if not isinstance(client, Redis):
        return None
    pool = client.connection_pool
    if pool.connection_class not in (Connection, UnixDomainSocketConnection, SSLConnection):
        return None  # a Sentinel-managed connection
    settings = dict(pool.connection_kwargs)
    if pool.connection_class is SSLConnection:
        settings["ssl_context"] = SSLConnection(**pool.connection_kwargs).ssl_context.get()
    return settings


class ScriptExpired(TimeoutError):
    """Redis ran a call after its deadline, when its caller had given up: it counted nothing."""


# Reply errors that say the server cannot count at all right now, whatever the keys: Redis is
# loading its data, busy in a script, a replica after a failover, a cluster without a quorum, a
# connection no longer authenticated. Like a lost connection, they are an outage.
SERVER_STATES = frozenset(
    ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "NOAUTH",
     "WRONGPASS", "NOPERM", "NOREPLICAS", "UNBLOCKED")
)  # fmt: skip
ErrorKind = Literal["timeout", "connection", "server", "reply"]


def error_kind(exc: BaseException) -> ErrorKind:
    """What a failed script call says of Redis (the fault model, in the README):

    - timeout: no reply in time, the event loop being on time (resp.py), or a reply that said
      the call ran too late: Redis may be stalled;
    - connection: no connection, or one lost (after one retry): Redis is unreachable;
    - server: a reply error about the server's state (SERVER_STATES): it cannot count now;
    - reply: any other reply error (a script error, WRONGTYPE, a value out of range, OOM): it
      concerns the keys of that one call, not Redis as a whole.
    """
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ResponseError):
        # redis-py's parser strips the code of the errors it has a class for.
        if isinstance(exc, ReadOnlyError | NoPermissionError | ClusterDownError | TryAgainError):
            return "server"
        code = str(exc).split(" ", 1)[0]
        return "server" if code in SERVER_STATES else "reply"
    return "connection"


def count_error(exc: BaseException) -> None:
    labelled(RATELIMIT_STORAGE_ERRORS, error_kind(exc)).inc()


class ScriptRunner:
    """Calls one Lua script by EVALSHA: the calls of one event-loop tick in one write.

    Loads the script again when Redis has lost it (a restart, SCRIPT FLUSH). On a single Redis
    (TCP, TLS or a Unix socket) the calls travel on one connection of resp.py's, pipelined, each
    batch bounded by the read timeout (REDIS_TIMEOUT_SECONDS) and a new connection by the
    connect timeout: no call waits for another batch, so with Redis stalled no request waits
    much longer than the timeout, however many arrive. Through Sentinel on redis-py's pooled
    connections, at most `max_calls` batches at once, each bounded by `timeout`; on a cluster
    one call at a time.
    """

    def __init__(
        self,
        client: RedisClient,
        script: str,
        max_calls: int,
        timeout: float,
        deadline: float | None = None,
    ) -> None:
        """`deadline`: when set, every call's first script argument is the moment (ms on
        Redis' clock) `deadline` seconds after the call is written, after which the script must
        count nothing: its caller has given up on it by then."""
        self._client = client
        self._deadline_ms = None if deadline is None else deadline * 1000
        # Redis' clock minus this process's wall clock, in ms, from a TIME call (measured when
        # a connection opens): the deadline on Redis' clock. None: not known yet, no deadline.
        self._clock_offset: float | None = None
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
        self._read_timeout = read_timeout if isinstance(read_timeout, int | float) else timeout
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
                async with deadline_after_io(self._timeout), self._in_flight:
                    if self._deadline_ms is not None and self._clock_offset is None:
                        await self._measure_clock()
                    try:
                        reply: Reply = await self._client.evalsha(
                            self._sha, len(keys), *keys, *self._stamped(args)
                        )
                    except NoScriptError:
                        await self._client.script_load(self._script)
                        reply = await self._client.evalsha(
                            self._sha, len(keys), *keys, *self._stamped(args)
                        )
                    return reply
            except (RedisError, OSError, TimeoutError) as exc:
                count_error(exc)
                raise
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)  # after every request of this tick has queued its call
        return await future

    def _stamped(self, args: ScriptArgs) -> ScriptArgs:
        """`args` after the deadline of a call written now, where the script takes one."""
        if self._deadline_ms is None:
            return args
        offset = self._clock_offset
        deadline = 0 if offset is None else int(time.time() * 1000 + offset + self._deadline_ms)
        return [deadline, *args]

    async def _measure_clock(self) -> None:
        """Redis' clock against ours, by one TIME call; lenient: taken from the moment the
        call was sent, so the offset includes the way there and a deadline is never early."""
        sent = time.time() * 1000
        reply: Any
        if self._direct is not None and self._channel is not None:
            (reply,) = await self._replies(self._channel, [["TIME"]])
        else:
            reply = await self._client.time()
        if isinstance(reply, dict):  # a cluster: one per node
            reply = next(iter(reply.values()))
        if isinstance(reply, ResponseError):
            raise reply
        seconds, micros = (int(part) for part in reply)
        self._clock_offset = seconds * 1000 + micros / 1000 - sent

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[PendingCall]) -> None:
        try:
            if self._direct is not None:
                replies = await self._run(batch)  # bounded by resp.py's timers
            else:
                async with deadline_after_io(self._timeout), self._in_flight:
                    replies = await self._run(batch)
            for (*_, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue  # its request was cancelled (the client went away)
                if isinstance(reply, Exception):
                    count_error(reply)  # that call's own error: one each
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except BaseException as exc:  # handed to every request still waiting on this batch
            if isinstance(exc, RedisError | OSError | TimeoutError):
                count_error(exc)  # one failed call, however many requests wait
            error = exc if isinstance(exc, Exception) else RedisConnectionError("call cancelled")
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            if error is not exc:
                raise  # cancelled (shutting down): the task itself ends cancelled

    async def _run(self, batch: list[PendingCall]) -> list[Reply | ResponseError]:
        """The batch's replies; where Redis lost the script (a restart, SCRIPT FLUSH), it is
        loaded again and those calls redone."""
        replies = await self._pipeline(batch)
        retry = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if retry:
            await self._load_script()
            for i, reply in zip(
                retry, await self._pipeline([batch[i] for i in retry]), strict=True
            ):
                replies[i] = reply
        return replies

    async def _load_script(self) -> None:
        if self._direct is None:
            await self._client.script_load(self._script)
            return
        channel = await self._open_channel()
        (loaded,) = await self._replies(channel, [["SCRIPT", "LOAD", self._script]])
        if isinstance(loaded, ResponseError):
            raise loaded

    async def _pipeline(self, batch: list[PendingCall]) -> list[Reply | ResponseError]:
        """Every call of the batch in one write, on resp.py's connection or a pooled redis-py
        one (Sentinel), then their replies.

        Why not redis-py's Pipeline: it builds a command stack, encodes every argument through
        its encoder and wraps the exchange in retries and response callbacks, about twice the
        CPU per call of writing the commands out here (figures: the README's performance
        section). On the pooled path the connection, its pool, AUTH/SELECT/TLS, Sentinel and
        reply parsing stay redis-py's.
        """
        calls = [(keys, args) for keys, args, _ in batch]
        if self._direct is not None:
            exchange = partial(self._exchange_direct, calls)
        else:
            exchange = partial(self._exchange, calls)
        try:
            return await exchange()
        except RedisConnectionError:
            # Redis dropped the connection (a restart), found when used or while waiting: one
            # more try, on a fresh connection, as redis-py's own retry does. (A failure of the
            # service's own making, a timeout or the shutdown, is not retried.)
            return await exchange()

    def _commands(self, calls: list[tuple[list[str], ScriptArgs]]) -> list[list[str | int]]:
        # Built when written, not when queued: a busy event loop may take a while between the
        # two, and the deadline is the script's from its writing on.
        return [
            ["EVALSHA", self._sha, len(keys), *keys, *self._stamped(args)] for keys, args in calls
        ]

    async def _exchange_direct(
        self, calls: list[tuple[list[str], ScriptArgs]]
    ) -> list[Reply | ResponseError]:
        channel = self._channel
        if channel is None or channel.closed:
            channel = await self._open_channel()
        return await self._replies(channel, self._commands(calls))

    async def _replies(
        self, channel: RespChannel, commands: list[list[str | int]]
    ) -> list[Reply | ResponseError]:
        # A batch cancelled here (the service is stopping) leaves the connection as it is: its
        # futures are cancelled, and its replies, when they come, are read and dropped in
        # turn. Closing it would fail the other batches on it, which Redis may have run
        # already. A reply that does not come in time aborts it (resp.py).
        futures = channel.send(commands, self._read_timeout)
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:  # they fail together: their errors are this one
                if future.done() and not future.cancelled():
                    future.exception()
                else:
                    future.add_done_callback(_retrieve)
            raise

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
                if self._deadline_ms is not None:
                    await self._measure_clock()
            return channel

    async def _exchange(
        self, calls: list[tuple[list[str], ScriptArgs]]
    ) -> list[Reply | ResponseError]:
        assert isinstance(self._client, Redis)  # a cluster's calls are not batched
        if self._deadline_ms is not None and self._clock_offset is None:
            await self._measure_clock()
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated
        try:
            payload = b"".join(map(pack, self._commands(calls)))
            await connection.send_packed_command(payload, check_health=False)
            received: list[Reply | ResponseError] = []
            for _ in calls:
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


def _retrieve(future: "asyncio.Future[Any]") -> None:
    """Mark a failed future's error as seen: asyncio logs "Future exception was never
    retrieved" for each otherwise, dozens per stalled batch."""
    if not future.cancelled():
        future.exception()


async def check_eviction(storage: LimitStorage) -> None:
    """Warn at start-up when Redis may evict the limiter's keys, and say so in a gauge.

    An evicted counter is a fresh budget: a caller at 59 of 60 gets 60 more, silently. Every
    limiter key has a TTL, so the `volatile-*` policies evict them too: only `noeviction` (or
    a Redis of the limiter's own, sized for it) keeps counts. Read from INFO, which managed
    Redis services allow where they deny CONFIG; when it is denied too, the warning says the
    policy could not be checked.
    """
    if storage.redis is None:
        return
    try:
        async with deadline_after_io(storage.timeout):
            info = await storage.redis.info("memory")
    except (RedisError, OSError, TimeoutError) as exc:
        RATELIMIT_STORAGE_MAY_EVICT.set(-1)
        logger.warning(
            "Could not check Redis' maxmemory-policy (%s: %s): the limiter needs noeviction "
            "(README, 'Redis for the limiter')",
            type(exc).__name__,
            exc,
        )
        return
    # A cluster answers per node: {node: info}; any node that evicts is one too many.
    nodes = info.values() if info and all(isinstance(v, dict) for v in info.values()) else [info]
    policies = {str(node.get("maxmemory_policy", "unknown")) for node in nodes}
    evicting = sorted(policies - {"noeviction"})
    RATELIMIT_STORAGE_MAY_EVICT.set(1 if evicting else 0)
    if evicting:
        logger.warning(
            "Redis evicts keys (maxmemory-policy %s, maxmemory %s): an evicted counter is a "
            "fresh budget for its caller. Set maxmemory-policy noeviction, or give the limiter "
            "a Redis of its own (README, 'Redis for the limiter')",
            ", ".join(evicting),
            ", ".join(sorted({str(node.get("maxmemory", "?")) for node in nodes})),
        )


@asynccontextmanager
async def eviction_checked(storage: LimitStorage, retry_interval: float) -> AsyncIterator[None]:
    """check_eviction at start-up, or, when Redis did not answer then (the start-up warning has
    said so), as soon as it does: in the background, once."""
    if storage.answered_at_start:
        await check_eviction(storage)
        yield
        return

    async def when_up() -> None:
        while True:  # polling: Redis has no way to tell us it is back
            if await storage.ping():
                await check_eviction(storage)
                return
            await asyncio.sleep(max(retry_interval, 0.5))

    task = asyncio.create_task(when_up())
    try:
        yield
    finally:
        task.cancel()
