"""How the limiter's cost grows with the work: limit sizes, limits per request, callers.

    python bench/scaling.py                  # ~3 minutes; prints tables, writes bench/scaling.json

Everything runs on a throwaway redis-server this script starts on a free port and stops (the
shared Redis is never touched, so its numbers are the limiter's alone), with a service baked
with the default answers (bench/run.py's `Bench`: its own virtualenv, Postgres database and
redis-server):

  algorithms   for each algorithm and a limit of 100/minute, 10,000/minute and 100,000/day,
               the service's own check.lua (read from the baked package) called as RedisCounter
               calls it, one caller, until the window is full: Redis memory of that caller's
               keys (MEMORY USAGE), and Redis CPU per call (INFO commandstats, evalsha) while
               admitting and once at the limit
  limits       the service's CPU per request (wrk, interleaved rounds, medians, as run.py
               measures) with 1, 2, 3 and 6 limits applying: plans of 1, 2 and 5 windows, on
               `GET /v1/items` (no declared limit) and on a route declaring one more
               (declared_app.py); limits never reached, the default algorithm (moving window)
  callers      100,000 distinct anonymous callers, one request each, within the default
               anonymous limit's window: Redis memory, the service's resident memory, and
               whether every key in Redis expires (PTTL)

Needs what run.py needs (wrk, redis-server, Postgres). Not a test: it measures.
"""

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import redis
from run import (
    HERE,
    PINNED,
    Bench,
    Scenario,
    free_port,
    interleave,
    measure,
    print_table,
    rss_mib,
    summarize,
    template_state,
    wrk,
)

# (row label, strategy, check.lua's exact_max): each algorithm as it is, then the moving window
# as the service runs it by default (RATELIMIT_MOVING_WINDOW_MAX_HITS=1000: larger limits are
# counted by the sliding window counter).
STRATEGIES = (
    ("moving-window", "moving-window", 10**12),
    ("sliding-window-counter", "sliding-window-counter", 10**12),
    ("fixed-window", "fixed-window", 10**12),
    ("gcra", "gcra", 10**12),
    ("moving-window (default)", "moving-window", 1000),
)
# (label, amount, window seconds)
LIMIT_SIZES = (
    ("100/minute", 100, 60),
    ("10000/minute", 10_000, 60),
    ("100000/day", 100_000, 86_400),
)
# Calls per pipeline while filling a window: Redis CPU per call is what is measured, not the
# client's round trips.
BATCH = 1000
# Calls made once the window is full, to measure a call at the limit.
AT_LIMIT_CALLS = 2000

NEVER = "100000000"
PLANS = {
    "windows-1": f"{NEVER}/minute",
    "windows-2": f"{NEVER}/minute;{NEVER}/hour",
    "windows-5": f"{NEVER}/second;{NEVER}/minute;{NEVER}/hour;{NEVER}/day;{NEVER}/month",
}
# name: (plan, path); the declared route adds one limit to the plan's
LIMIT_COUNTS = {
    "bare-routed": (None, "/v1/items"),
    "1 limit": ("windows-1", "/v1/items"),
    "2 limits": ("windows-1", "/v1/items/declared"),
    "3 limits": ("windows-2", "/v1/items/declared"),
    "6 limits": ("windows-5", "/v1/items/declared"),
}


def evalsha_usec_per_call(client: redis.Redis) -> float:
    return client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]


def keys_memory(client: redis.Redis) -> tuple[int, int]:
    """(keys, bytes) of every key in the throwaway Redis, nested values counted in full."""
    keys = list(client.scan_iter(count=1000))
    return len(keys), sum(client.memory_usage(key, samples=0) or 0 for key in keys)


def check(
    client: redis.Redis,
    sha: str,
    key: str,
    args: tuple[str, int, int, int],
    calls: int,
    nonces: Any,
) -> int:
    """`calls` one-hit checks of one limit (amount, window seconds), as RedisCounter sends
    them, pipelined; how many were admitted."""
    strategy, exact_max, amount, window = args
    admitted = 0
    for start in range(0, calls, BATCH):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(BATCH, calls - start)):
            # deadline (0: none), strategy, nonce, exact_max, lease, n; amount, window, cost,
            # flags (check.lua)
            arguments = (0, strategy, next(nonces), exact_max, 30, 1, amount, window, 1, 0)
            pipe.evalsha(sha, 1, key, *arguments)
        admitted += sum(reply[0] for reply in pipe.execute())
    return admitted


def algorithms(bench: Bench, client: redis.Redis) -> list[dict]:
    counters = bench.project / "src" / bench.package / "ratelimit" / "counters"
    script = (counters / "check.lua").read_text()
    sha = client.script_load(script)
    # As RedisCounter makes them: a process prefix and a sequence number.
    prefix = os.urandom(6).hex()
    nonces = (f"{prefix}-{sequence}" for sequence in itertools.count())
    rows = []
    for row_label, strategy, exact_max in STRATEGIES:
        for label, amount, window in LIMIT_SIZES:
            client.flushdb()
            # As RedisCounter names keys (the algorithm in them).
            key = f"scaling:{{caller}}:{strategy}:plan:/v1/items:{label}"
            args = (strategy, exact_max, amount, window)
            client.config_resetstat()
            admitted = check(client, sha, key, args, amount, nonces)
            admitting_us = evalsha_usec_per_call(client)
            keys, memory = keys_memory(client)
            client.config_resetstat()
            check(client, sha, key, args, AT_LIMIT_CALLS, nonces)
            rows.append(
                {
                    "strategy": row_label,
                    "limit": label,
                    "admitted": admitted,
                    "keys": keys,
                    "bytes_per_caller": memory,
                    "bytes_per_admitted_hit": memory / admitted,
                    "redis_us_per_call_admitting": admitting_us,
                    "redis_us_per_call_at_limit": evalsha_usec_per_call(client),
                }
            )
    client.flushdb()
    return rows


def limit_counts(
    bench: Bench, client: redis.Redis, redis_url: str, seconds: int, rounds: int, connections: int
) -> tuple[list[dict], dict[str, list[dict]]]:
    keys = {}
    for plan, limits in PLANS.items():
        bench.cli("plans", "create", plan, limits)
        bench.cli("accounts", "create", f"bench-{plan}", "--plan", plan)
        created = bench.cli("keys", "create", "--account", f"bench-{plan}")
        keys[plan] = created.splitlines()[-1]
    routed_port, service_port = free_port(), free_port()
    routed = bench.uvicorn("bare_app:routed_app", routed_port, PYTHONPATH=str(HERE))
    service = bench.service(
        service_port,
        redis_url,
        app="declared_app:app",
        BENCH_PACKAGE=bench.package,
        BENCH_ROUTE_LIMIT=f"{NEVER}/minute",
    )
    scenarios = {
        name: Scenario(
            pid=routed if plan is None else service,
            url=f"http://127.0.0.1:{routed_port if plan is None else service_port}{path}",
            headers={} if plan is None else {"X-API-Key": keys[plan]},
            connections=connections,
        )
        for name, (plan, path) in LIMIT_COUNTS.items()
    }
    runs = interleave(
        scenarios, rounds, seconds, lambda s, sec: measure(s, sec, client, bench.database)
    )
    client.flushdb()
    return summarize(runs, scenarios), runs


def callers(
    bench: Bench, client: redis.Redis, redis_url: str, count: int, connections: int
) -> dict:
    """`count` anonymous callers, one request each, as fast as the service answers them."""
    port = free_port()
    # Trusts X-Forwarded-For from loopback, where wrk connects from, as it would from nginx.
    pid = bench.service(port, redis_url, TRUSTED_PROXIES="127.0.0.1")
    url = f"http://127.0.0.1:{port}/v1/items"
    client.flushdb()
    wrk(url, 1, connections, {})  # warm up (one caller: 127.0.0.1)
    client.flushdb()
    memory_before = client.info("memory")["used_memory"]
    rss_before = rss_mib(pid)
    sent, non_2xx, seconds, started = 0, 0, 5, time.monotonic()
    while sent < count:
        # In chunks, each going on from the last caller sent, the last one short: past `count`,
        # callers come round again. wrk runs whole seconds.
        result = wrk(url, seconds, connections, {}, script=HERE / "callers.lua",
                     script_args=(str(sent), str(count)))  # fmt: skip
        sent += result["requests"]
        non_2xx += result["non_2xx"]
        seconds = max(1, min(5, math.ceil((count - sent) / result["rps"])))
    elapsed = time.monotonic() - started
    keys = client.dbsize()
    memory = client.info("memory")["used_memory"] - memory_before
    rss_after = rss_mib(pid)
    ttls = []
    names = list(client.scan_iter(count=1000))
    for start in range(0, len(names), BATCH):
        pipe = client.pipeline(transaction=False)
        for name in names[start : start + BATCH]:
            pipe.pttl(name)
        ttls += pipe.execute()
    client.flushdb()
    return {
        "callers": count,
        "requests": sent,
        "seconds": elapsed,
        "non_2xx": non_2xx,
        "redis_keys": keys,
        "redis_bytes": memory,
        "redis_bytes_per_key": memory / keys if keys else 0,
        "rss_mib_before": rss_before,
        "rss_mib_after": rss_after,
        "keys_without_ttl": sum(1 for ttl in ttls if ttl == -1),
        "max_ttl_s": max(ttls) / 1000 if ttls else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration of one measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--callers", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=HERE / "scaling.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        sys.exit("needs wrk and redis-server: apt-get install wrk redis-server")

    load_before = os.getloadavg()
    with Bench() as bench:
        client, redis_url = bench.redis_server()
        by_algorithm = algorithms(bench, client)
        by_limits, runs = limit_counts(
            bench, client, redis_url, args.seconds, args.rounds, args.connections
        )
        many = callers(bench, client, redis_url, args.callers, args.connections)
        redis_version = client.info("server")["redis_version"]
        client.close()

    print(f"Redis {redis_version}: memory per caller key, and Redis CPU per check.lua call")
    print(
        f"{'algorithm':<24}{'limit':<14}{'admitted':>9}{'keys':>5}{'bytes':>11}{'B/hit':>7}"
        f"{'us/call':>9}{'at limit':>10}"
    )
    for row in by_algorithm:
        print(
            f"{row['strategy']:<24}{row['limit']:<14}{row['admitted']:>9}{row['keys']:>5}"
            f"{row['bytes_per_caller']:>11,}{row['bytes_per_admitted_hit']:>7.0f}"
            f"{row['redis_us_per_call_admitting']:>9.2f}{row['redis_us_per_call_at_limit']:>10.2f}"
        )
    print("us/call: while the window fills; at limit: once it is full")
    print("\nThe service's CPU per request by the number of limits applying (moving window)")
    print_table(by_limits, first_column="limits", reference="bare-routed")
    base = next(row for row in by_limits if row["scenario"] == "1 limit")["cpu_us_per_request"]
    for row in by_limits[2:]:
        extra = (row["cpu_us_per_request"] - base) / (int(row["scenario"].split()[0]) - 1)
        row["cpu_us_per_extra_limit"] = extra
        print(f"{row['scenario']}: {extra:.1f} us CPU per limit beyond the first")
    print(
        f"\n{many['callers']:,} anonymous callers, {many['requests']:,} requests in "
        f"{many['seconds']:.0f} s (the default anonymous limit, a one-minute moving window):"
    )
    print(
        f"  Redis: {many['redis_keys']:,} keys, {many['redis_bytes'] / 2**20:.1f} MiB "
        f"({many['redis_bytes_per_key']:.0f} B a key); every key expires: "
        f"{'yes' if many['keys_without_ttl'] == 0 else 'NO, ' + str(many['keys_without_ttl'])} "
        f"(longest TTL {many['max_ttl_s']:.0f} s)"
    )
    print(
        f"  service: {many['rss_mib_before']:.1f} MiB resident before, "
        f"{many['rss_mib_after']:.1f} MiB after; non-2xx answers: {many['non_2xx']}"
    )
    meta: dict[str, Any] = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "connections": args.connections,
        "cpus": os.cpu_count(),
        "pinned": PINNED,
        "redis_version": redis_version,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "template": template_state(),
    }
    report = {
        "meta": meta,
        "algorithms": by_algorithm,
        "limits": by_limits,
        "limits_rounds": runs,
        "callers": many,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
