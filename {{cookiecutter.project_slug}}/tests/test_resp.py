"""The limiter's own Redis connection (ratelimit/counters/resp.py), against a stand-in for Redis
that answers slowly: a unit test of how replies are matched to calls, which a real Redis answers
too fast to show. (test_outage.py and test_redis_connections.py run it against real Redis.)"""

import asyncio

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis

from {{ cookiecutter.package_name }}.ratelimit.counters.storage import ScriptRunner


async def test_a_batch_cancelled_in_flight_leaves_the_others_to_run_once():
    executed: list[list[bytes]] = []

    async def slow_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                executed.append(command[3:])  # EVALSHA sha numkeys: then the key
                await asyncio.sleep(0.05)
                writer.write(b"*1\r\n:1\r\n")

    server = await asyncio.start_server(slow_redis, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = BlockingConnectionPool.from_url(
        f"redis://127.0.0.1:{port}", socket_timeout=1.0, socket_connect_timeout=1.0
    )
    client = Redis(connection_pool=pool)
    runner = ScriptRunner(client, "return {1}", max_calls=10, timeout=2.0)
    try:
        first = asyncio.create_task(runner.call(["key:a"], ["a"]))
        await asyncio.sleep(0.01)
        (sending_first,) = runner._sending
        second = asyncio.create_task(runner.call(["key:b"], ["b"]))
        await asyncio.sleep(0.01)
        sending_first.cancel()  # as its batch's timeout would, while both are in flight
        assert await second == [1]  # answered on the same connection, in turn
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.sleep(0.1)
        assert executed == [[b"key:a", b"a"], [b"key:b", b"b"]]  # each once: nothing re-sent
    finally:
        runner.close()
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_every_reply_goes_to_its_own_call_even_past_a_cancelled_batch():
    # The stand-in answers each call with the number in its key (`key:7` -> [7]), slowly and
    # in pieces: a reply handed to the wrong call fails here, which identical replies hide.
    async def numbering_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                number = int(command[3].split(b":")[1])  # EVALSHA sha numkeys key
                reply = b"*1\r\n:%d\r\n" % number
                await asyncio.sleep(0.01)
                writer.write(reply[:5])  # a reply cut in two: the parser waits for the rest
                await writer.drain()
                await asyncio.sleep(0.005)
                writer.write(reply[5:])

    server = await asyncio.start_server(numbering_redis, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = BlockingConnectionPool.from_url(
        f"redis://127.0.0.1:{port}", socket_timeout=2.0, socket_connect_timeout=1.0
    )
    client = Redis(connection_pool=pool)
    runner = ScriptRunner(client, "return {1}", max_calls=10, timeout=5.0)
    try:
        # Many calls, in batches of several ticks, on one connection.
        calls = []
        for tick in range(4):
            calls += [
                asyncio.create_task(runner.call([f"key:{tick * 10 + n}"], ["x"])) for n in range(5)
            ]
            await asyncio.sleep(0)
        replies = await asyncio.gather(*calls)
        assert replies == [[tick * 10 + n] for tick in range(4) for n in range(5)]

        # A batch of two cancelled while in flight (its timeout, say): its replies still come,
        # and are dropped, not handed to the call sent after it.
        cancelled = [asyncio.create_task(runner.call([f"key:{n}"], ["x"])) for n in (101, 102)]
        await asyncio.sleep(0.005)
        (sending,) = runner._sending
        after = asyncio.create_task(runner.call(["key:103"], ["x"]))
        await asyncio.sleep(0.005)
        sending.cancel()
        assert await after == [103]
        await asyncio.gather(*cancelled, return_exceptions=True)
        assert await runner.call(["key:104"], ["x"]) == [104]
    finally:
        runner.close()
        await client.aclose()
        server.close()
        await server.wait_closed()
