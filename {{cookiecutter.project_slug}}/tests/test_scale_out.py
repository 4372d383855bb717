"""Limits that hold on Redis Cluster and Sentinel, only REDIS_URL changing. Each test starts
its own servers on free loopback ports and stops them at the end."""

import asyncio
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from .conftest import RedisServers, metric, running_client, set_plan, storage_errors, wait_until


def free_port_pair() -> int:
    """A port free together with port + 10000 (a cluster node's bus port)."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
                return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServers, list[int]]]:
    """Three masters, no replicas: every slot has one owner."""
    servers = RedisServers(tmp_path)
    ports = [free_port_pair() for _ in range(3)]
    try:
        for port in ports:
            servers.start(port, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                          "--cluster-config-file", f"nodes-{port}.conf")  # fmt: skip
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr

        def ready() -> bool:
            infos = [redis.Redis(port=p, decode_responses=True).cluster("info") for p in ports]
            return all(info.get("cluster_state") == "ok" for info in infos)

        wait_until(ready, 60, "the cluster to be ok")
        yield servers, ports
    finally:
        servers.stop_all()


def cluster_url(ports: list[int]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


async def test_cluster_two_instances_share_one_budget(make_settings, cluster, database_url):
    _, ports = cluster
    await set_plan(database_url, "anonymous", "10/minute")
    settings = make_settings(redis_url=cluster_url(ports))
    async with running_client(settings) as first, running_client(settings) as second:
        responses = await asyncio.gather(
            *(client.get("/v1/items") for client in [first, second] * 20)
        )
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10 and statuses.count(429) == 30


async def test_cluster_counts_a_request_with_several_limits_in_one_slot(
    make_settings, cluster, database_url, key_prefix
):
    # POST /v1/items has the plan's two windows and its own two limits (one of them shadow):
    # four keys in one script call, which a cluster refuses (CROSSSLOT) unless they share a
    # hash slot.
    _, ports = cluster
    await set_plan(database_url, "anonymous", "100/minute;1000/hour")
    async with running_client(make_settings(redis_url=cluster_url(ports))) as client:
        posts = [await client.post("/v1/items", json={"name": "n"}) for _ in range(12)]
    assert [r.status_code for r in posts] == [201] * 10 + [429] * 2
    keys = [
        key
        for port in ports
        for key in redis.Redis(port=port).scan_iter(match=key_prefix + ":{*")  # counters
    ]
    slots = {redis.Redis(port=ports[0]).cluster("keyslot", key) for key in keys}
    assert len(keys) == 4 and len(slots) == 1, keys


async def test_cluster_spreads_callers_over_every_master(make_settings, cluster, key_prefix):
    _, ports = cluster
    async with running_client(make_settings(redis_url=cluster_url(ports))) as client:
        for n in range(60):
            client._transport.client = (f"198.51.100.{n}", 50000)  # type: ignore[attr-defined]
            assert (await client.get("/v1/items")).status_code == 200
    # Callers, not keys (a caller has one key per limit): all of one caller's share a hash tag.
    per_master = [
        len({key.split(b"}")[0] for key in redis.Redis(port=p).scan_iter(match=key_prefix + ":{*")})
        for p in ports
    ]
    assert sum(per_master) == 60 and all(count > 0 for count in per_master), per_master


async def test_cluster_master_restart_costs_no_5xx(make_settings, cluster):
    servers, ports = cluster
    settings = make_settings(
        redis_url=cluster_url(ports),
        ratelimit_outage_policy="fail-open",
        redis_retry_interval_seconds=0.2,
    )
    statuses = []
    async with running_client(settings) as client:
        for n in range(120):
            if n == 30:
                await asyncio.to_thread(servers.restart, ports[1])
            client._transport.client = (f"203.0.113.{n % 40}", 50000)  # type: ignore[attr-defined]
            statuses.append((await client.get("/v1/items")).status_code)
            await asyncio.sleep(0.02)
        after = storage_errors((await client.get("/metrics")).text)
        await asyncio.sleep(0.3)
        recovered_before = storage_errors((await client.get("/metrics")).text)
        for n in range(40):
            client._transport.client = (f"192.0.2.{n}", 50000)  # type: ignore[attr-defined]
            assert (await client.get("/v1/items")).status_code == 200
        recovered_after = storage_errors((await client.get("/metrics")).text)
    print(f"during the restart: {len(statuses)} requests, statuses {sorted(set(statuses))}, "
          f"storage errors so far {after:.0f}")  # fmt: skip
    assert not [s for s in statuses if s >= 500]
    assert recovered_after == recovered_before  # counting in Redis again, no more errors


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[tuple[RedisServers, int, list[int]]]:
    """One master, one replica, three sentinels (quorum 2), fast failover."""
    servers = RedisServers(tmp_path)
    master, replica = free_port_pair(), free_port_pair()
    sentinel_ports = [free_port_pair() for _ in range(3)]
    try:
        servers.start(master)
        servers.start(replica, "--replicaof", "127.0.0.1", str(master))
        for port in sentinel_ports:
            config = tmp_path / f"sentinel-{port}.conf"
            config.write_text(
                f"sentinel monitor mymaster 127.0.0.1 {master} 2\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 5000\n"
                f"dir {tmp_path}\n"
            )
            servers.start(port, str(config), "--sentinel")
        yield servers, master, sentinel_ports
    finally:
        servers.stop_all()


def current_master(sentinel_ports: list[int]) -> int:
    name = redis.Redis(port=sentinel_ports[0]).execute_command(
        "SENTINEL", "get-master-addr-by-name", "mymaster"
    )
    return int(name[1])


async def test_sentinel_failover_keeps_limiting(make_settings, sentinels, database_url):
    servers, master, sentinel_ports = sentinels
    await set_plan(database_url, "anonymous", "5/minute")
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in sentinel_ports) + "/mymaster"
    settings = make_settings(
        redis_url=url, ratelimit_outage_policy="fail-open", redis_retry_interval_seconds=0.2
    )
    async with running_client(settings, client_ip="203.0.113.1") as client:
        before = [(await client.get("/v1/items")).status_code for _ in range(6)]
        servers.stop(master)
        started = time.monotonic()
        await asyncio.to_thread(
            wait_until, lambda: current_master(sentinel_ports) != master, 30, "a failover"
        )
        failover_seconds = time.monotonic() - started
        during = []
        client._transport.client = ("203.0.113.2", 50000)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the new master counts again
            response = await client.get("/v1/items")
            during.append(response.status_code)
            if response.status_code == 429:
                break
            await asyncio.sleep(0.1)
        text = (await client.get("/metrics")).text
    print(f"failover took {failover_seconds:.1f} s; the new caller then got {during}")
    assert before == [200] * 5 + [429]
    assert failover_seconds < 30
    assert not [s for s in during if s >= 500]
    assert during[-1] == 429, during  # the new master limits the new caller
    assert (
        metric(
            text,
            "ratelimit_decisions_total",
            plan="anonymous",
            route="/v1/items",
            decision="limited",
        )
        >= 2
    )
