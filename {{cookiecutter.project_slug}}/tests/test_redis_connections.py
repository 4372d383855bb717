"""The limiter's own Redis connection (ratelimit/counters/resp.py) connects as redis-py would:
with the URL's password or ACL user, to its database, over TCP, TLS or a Unix socket; a refused
login or an untrusted certificate is an outage (the policy applies), never a 500. Each test runs
a redis-server of its own."""

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .conftest import RedisServers, free_port, running_client, wait_until

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


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks TLS only, with a throwaway self-signed certificate for
    127.0.0.1: (its TLS port, the certificate)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.fail(f"openssl could not make a certificate: {made.stderr}", pytrace=False)
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--dir", str(tmp_path), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool:
        try:
            with redis.Redis(port=port, ssl=True, ssl_ca_certs=str(cert)) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(answers, 30, f"a TLS redis-server on port {port}")
        yield port, cert
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_tls_script_calls_travel_on_the_limiters_own_connection(
    make_settings, tls_redis, key_prefix
):
    port, cert = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    settings = make_settings(redis_url=url)
    async with running_client(settings) as client:
        answers = [(await client.get("/v1/items")).status_code for _ in range(6)]
        check = client._transport.app.state.ratelimit_check  # type: ignore[attr-defined]
        runner = check._failover._primary._script
    assert answers == [200] * 5 + [429]  # counted in Redis, over TLS
    assert runner._direct is not None  # resp.py's path, the one with the fault model's timers
    with redis.Redis(port=port, ssl=True, ssl_ca_certs=str(cert)) as raw:
        assert list(raw.scan_iter(match=f"{key_prefix}:*"))


async def test_a_tls_certificate_not_trusted_is_an_outage_not_a_500(
    make_settings, tls_redis, tmp_path
):
    port, _ = tls_redis
    stranger = tmp_path / "stranger.pem"  # a CA that did not sign the server's certificate
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(tmp_path / "stranger.key"), "-out", str(stranger), "-subj", "/CN=x"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={stranger}"
    closed = make_settings(redis_url=url, ratelimit_outage_policy="fail-closed")
    assert await statuses(closed, count=3) == [503] * 3
