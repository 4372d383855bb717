"""The limiter's own Redis connection (ratelimit/resp.py) connects as redis-py would: with the
URL's password or ACL user, to its database, over TCP or a Unix socket; a refused login is an
outage (the policy applies), never a 500. Each test runs a redis-server of its own."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .conftest import RedisServers, free_port, running_client

PASSWORD = "s3cret-for-tests"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that wants a password, also listening on a Unix socket: (port, socket)."""
    servers = RedisServers(tmp_path)
    port, socket_path = free_port(), tmp_path / "redis.sock"
    servers.start(port, "--unixsocket", str(socket_path))
    try:
        open_door = redis.Redis(port=port)
        open_door.config_set("requirepass", PASSWORD)  # once it answers: the start waits on it
        open_door.close()
        yield port, socket_path
    finally:
        servers.stop_all()


def keys_in(port: int, database: int, prefix: str, **auth: str) -> list[bytes]:
    client = redis.Redis(port=port, db=database, **auth)
    try:
        return list(client.scan_iter(match=f"{prefix}:*"))
    finally:
        client.close()


async def statuses(settings, count: int = 6) -> list[int]:
    async with running_client(settings) as client:
        return [(await client.get("/v1/items")).status_code for _ in range(count)]


async def test_a_password_and_a_database_from_the_url(make_settings, locked_redis, key_prefix):
    port, _ = locked_redis
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/2"
    assert await statuses(make_settings(redis_url=url)) == [200] * 5 + [429]
    assert keys_in(port, 2, key_prefix, password=PASSWORD)  # counted in Redis, in database 2
    assert not keys_in(port, 0, key_prefix, password=PASSWORD)


async def test_an_acl_user_from_the_url(make_settings, locked_redis, key_prefix):
    port, _ = locked_redis
    admin = redis.Redis(port=port, password=PASSWORD)
    admin.acl_setuser(
        "limiter", enabled=True, passwords=["+limiter-pw"], keys=["*"], commands=["+@all"]
    )
    admin.close()
    url = f"redis://limiter:limiter-pw@127.0.0.1:{port}/0"
    assert await statuses(make_settings(redis_url=url)) == [200] * 5 + [429]
    assert keys_in(port, 0, key_prefix, username="limiter", password="limiter-pw")


async def test_a_unix_socket(make_settings, locked_redis, key_prefix):
    port, socket_path = locked_redis
    url = f"unix://:{PASSWORD}@{socket_path}?db=1"
    assert await statuses(make_settings(redis_url=url)) == [200] * 5 + [429]
    assert keys_in(port, 1, key_prefix, password=PASSWORD)


async def test_a_wrong_password_is_an_outage_not_a_500(make_settings, locked_redis):
    port, _ = locked_redis
    url = f"redis://:wrong@127.0.0.1:{port}/0"
    closed = make_settings(redis_url=url, ratelimit_outage_policy="fail-closed")
    assert await statuses(closed, count=3) == [503] * 3
    opened = make_settings(redis_url=url, ratelimit_outage_policy="fail-open")
    assert await statuses(opened) == [200] * 5 + [429]  # counted in memory meanwhile
