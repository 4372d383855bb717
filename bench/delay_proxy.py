"""A TCP proxy that delays every chunk by a fixed time in each direction: Redis "2 ms away".

python delay_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_SECONDS
"""

import asyncio
import sys


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(65536):
            # Same delay for every chunk: call_later keeps them in order.
            loop.call_later(delay, writer.write, data)
    except ConnectionError:
        pass
    finally:
        loop.call_later(delay, writer.close)


async def main(listen: int, upstream: int, delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pump(reader, up_writer, delay), pump(up_reader, writer, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
