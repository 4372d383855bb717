"""One Redis connection for the rate limiter's script calls: an asyncio Protocol that writes the
calls of a batch in one go and hands each reply, in order, to the future waiting for it.

Why not redis-py for these calls: every call through a redis-py connection goes through its
pool, its per-read timeout and its parser's awaitable reads (the README's performance section
has the CPU it costs per request); a protocol fed by hiredis's reader (the parser redis-py
itself uses) is a write and a callback, and its timers can tell a slow Redis from a busy event
loop (below). It is the one path of a single Redis: plain TCP, TLS (with the SSL context
redis-py builds from the URL) and Unix sockets; Sentinel and Cluster stay on redis-py, which
follows their topology (storage.py chooses). Everything else (readiness pings, the cluster's
slot map) stays on redis-py.

Redis answers the commands of one connection in the order they were sent, so the replies are
matched to the calls by order alone; a call whose request went away (its future cancelled)
still has its reply read, and dropped.

Timeouts measure Redis, not this process: a timer that fires late because the event loop was
busy (a CPU-heavy request, a flood) would otherwise find no reply, although Redis answered long
ago and the reply waits in the socket. uvloop runs due timers before it polls the sockets, so
every timer here, when it fires, first lets the loop poll once more (`after_io`); a reply that
was there in time is then read, and only a reply that is really missing is a timeout.
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import hiredis
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError


class AfterIo:
    """A timer whose callback runs once the loop has polled its sockets after the deadline.

    A late timer (the loop was busy past the deadline) must not beat the I/O that arrived in
    time: asyncio's own loop polls before it runs due timers, uvloop (libuv) runs timers first.
    So the timer first re-arms itself 1 ms ahead: libuv polls before a timer that is not yet
    due runs, and asyncio's loop does anyway. The 1 ms is spent only on expiry.
    """

    __slots__ = ("_callback", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, callback: Any) -> None:
        self._loop, self._callback = loop, callback
        self._handle: asyncio.TimerHandle = loop.call_later(delay, self._due)

    def _due(self) -> None:
        self._handle = self._loop.call_later(0.001, self._callback)

    def cancel(self, *_: object) -> None:
        self._handle.cancel()


@asynccontextmanager
async def deadline_after_io(delay: float) -> AsyncIterator[None]:
    """asyncio.timeout(delay), except that I/O which arrived by the deadline is read first."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as bound:
        timer = AfterIo(loop, delay, lambda: bound.reschedule(loop.time()))
        try:
            yield
        finally:
            timer.cancel()


def _error(reply: ResponseError) -> ResponseError:
    """The reply error as redis-py would raise it: NOSCRIPT is its own type (storage.py reloads
    the script on it)."""
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else reply


class RespChannel(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(cls, connection: dict[str, Any], connect_timeout: float) -> "RespChannel":
        """A channel to the Redis redis-py's pool would connect to with `connection` (its
        connection_kwargs), authenticated and on its database, within `connect_timeout`."""
        loop = asyncio.get_running_loop()
        async with deadline_after_io(connect_timeout):
            if "path" in connection:
                _, channel = await loop.create_unix_connection(cls, connection["path"])
            else:
                host = connection.get("host", "localhost")
                _, channel = await loop.create_connection(
                    cls, host, connection.get("port", 6379),
                    ssl=connection.get("ssl_context"),
                    server_hostname=host if connection.get("ssl_context") else None,
                )  # fmt: skip
            try:
                await channel._set_up(connection)
            except BaseException:
                channel.close()
                raise
        return channel

    async def _set_up(self, connection: dict[str, Any]) -> None:
        """AUTH and SELECT, as redis-py does on a new connection."""
        setup: list[list[Any]] = []
        password, username = connection.get("password"), connection.get("username")
        if password is not None:
            setup.append(["AUTH", username, password] if username else ["AUTH", password])
        if connection.get("db"):
            setup.append(["SELECT", connection["db"]])
        for future in self.send(setup) if setup else ():
            reply = await future
            if isinstance(reply, ResponseError):
                raise AuthenticationError(f"Redis refused the connection's setup: {reply}")

    def send(
        self, commands: Sequence[Sequence[Any]], read_timeout: float | None = None
    ) -> list["asyncio.Future[Any]"]:
        """Send `commands` in one write; a future for each reply (a ResponseError for an error
        reply). Raises ConnectionError when the connection is gone. Replies not there within
        `read_timeout` fail with TimeoutError, and the connection is closed: a Redis that does
        not answer in time is not waited for, and its late replies are never read."""
        if self.closed or self._transport is None:
            raise RedisConnectionError("the connection to Redis is closed")
        self._transport.write(b"".join(map(pack, commands)))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._waiting.extend(futures)
        if read_timeout is not None:
            # One timer for the batch (its last reply comes last), cheaper than asyncio.timeout.
            futures[-1].add_done_callback(AfterIo(loop, read_timeout, self._timed_out).cancel)
        return futures

    def close(self) -> None:
        """Close it, failing the calls still waiting with an error that is not retried: Redis may
        have run them already."""
        if self._transport is not None:
            self._transport.close()
        self._lost(RedisError("the service closed its connection to Redis"))

    def _timed_out(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._lost(TimeoutError("Redis did not answer in time"))

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: asyncio's, or uvloop's, which does not subclass asyncio's classes.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self._waiting
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not waiting:  # nothing asked for it: the stream is out of step, start over
                self.close()
                return
            future = waiting.popleft()
            if not future.done():  # else: its request went away, or its batch timed out
                if isinstance(reply, ResponseError):
                    future.set_result(_error(reply))
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(RedisConnectionError(f"Redis closed the connection ({exc or 'EOF'})"))

    def _lost(self, error: Exception) -> None:
        self.closed = True
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)


def pack(command: Sequence[Any]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    packed = [b"*%d\r\n" % len(command)]
    for part in command:
        data = part if isinstance(part, bytes) else str(part).encode()
        packed.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(packed)
