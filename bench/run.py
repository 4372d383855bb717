"""Benchmark: what the limiter costs, as throughput ratios against a bare FastAPI endpoint.

    python bench/run.py                      # ~3 minutes; prints a table, writes bench/results.json

It bakes a service with the default answers, starts it with one uvicorn worker on loopback
(on the shared Redis and a Postgres database of its own), and measures with wrk, interleaved
(A B A B ...) over several rounds, medians reported:

  bare            a bare FastAPI endpoint, same response, no limiter: the reference
  bare-routed     the service's endpoint shape and router, no limiter, no middleware
  anonymous       the limited endpoint, anonymous caller, limit never reached
  api-key         the same with an API key (plan resolved from the cache)
  *-redis-2ms     the same two with Redis behind a proxy adding 1 ms each way
  flood-429       a key far over its limit: every answer a 429

For each it counts Redis script calls (round trips) and database transactions per request, and
the CPU time the uvicorn process spent per request (from /proc: steadier than requests/s on a
shared machine). With two or more CPUs, the uvicorn processes are pinned to one CPU and wrk to
another (taskset), so that the load generator never takes the server's CPU.
Needs: wrk (`apt-get install wrk`), redis-server, Postgres (as the tests do).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import venv
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent
sys.path.insert(0, str(TEMPLATE))
from tests.stack import free_port, wait_for  # noqa: E402  (the e2e tests' process helpers)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Never reached in a run, and a short window: a moving window keeps one entry per hit in Redis
# for the whole window.
NEVER_REACHED = "100000000/minute"
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def psql(sql: str, database_url: str = ADMIN_DATABASE_URL) -> str:
    done = subprocess.run(
        ["psql", database_url, "-v", "ON_ERROR_STOP=1", "-tAqc", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def service_venv(project: Path) -> Path:
    """A virtualenv with the service's runtime dependencies, cached across runs."""
    digest = hashlib.sha256(
        (project / "pyproject.toml").read_bytes() + (project / "constraints.txt").read_bytes()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = cache / "ratelimit-template" / f"bench-venv-{digest}"
    if not (path / ".complete").exists():
        venv.create(path, with_pip=True, clear=True)
        pip = [str(path / "bin" / "pip"), "install", "-q", "-c", "constraints.txt"]
        subprocess.run([*pip, "."], cwd=project, check=True)
        (path / ".complete").touch()
    subprocess.run(
        [str(path / "bin" / "pip"), "install", "-q", "--no-deps", "--force-reinstall", "."],
        cwd=project,
        check=True,
    )
    return path


PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
SERVER_CPU, CLIENT_CPU = ["taskset", "-c", "1"], ["taskset", "-c", "0"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: float, connections: int, headers: dict[str, str]) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]  # whole s
    if PINNED:
        command = CLIENT_CPU + command
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def latency_ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", out)[1])
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50_ms": latency_ms("50%"),
        "p99_ms": latency_ms("99%"),
        "requests": requests,
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "errors": "Socket errors" in out,
    }


def script_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in SCRIPT_COMMANDS)


def transactions(database: str) -> int:
    return int(
        psql(
            f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{database}'"
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration of one measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    from cookiecutter.main import cookiecutter

    workdir = Path(tempfile.mkdtemp(prefix="ratelimit-bench-"))
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(workdir)))
    package = project.name.replace("-", "_")
    env_python = service_venv(project) / "bin" / "python"
    database = f"bench_{uuid.uuid4().hex[:10]}"
    base, _, _ = ADMIN_DATABASE_URL.rpartition("/")
    database_url = f"{base}/{database}"
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    processes: list[subprocess.Popen] = []

    def cli(*cli_args: str) -> str:
        return subprocess.run(
            [str(env_python), "-m", package, *cli_args],
            cwd=workdir,
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def start(command: list[str], **env: str) -> subprocess.Popen:
        # The service's logs (a line per 429 in the flood) are written, as in production,
        # but not shown.
        process = subprocess.Popen(
            command, cwd=workdir, env={**os.environ, **env}, stderr=subprocess.DEVNULL
        )
        processes.append(process)
        return process

    def uvicorn(app: str, port: int, **env: str) -> int:
        command = [str(env_python), "-m", "uvicorn", app, "--port", str(port),
                   "--no-access-log", "--log-level", "warning", "--no-proxy-headers"]  # fmt: skip
        process = start(SERVER_CPU + command if PINNED else command, **env)
        wait_for(f"http://127.0.0.1:{port}/v1/items", process)
        return process.pid

    psql(f'CREATE DATABASE "{database}"')
    try:
        cli("db", "upgrade")
        cli("plans", "update", "anonymous", "--limits", NEVER_REACHED)
        cli("plans", "update", "pro", "--limits", NEVER_REACHED)
        cli("plans", "update", "free", "--limits", "1/hour")
        pro_key = cli("keys", "create", "--plan", "pro", "--owner", "bench").splitlines()[-1]
        flood_key = cli("keys", "create", "--plan", "free", "--owner", "bench").splitlines()[-1]

        shared_redis = redis.Redis.from_url(REDIS_URL)
        redis_port = shared_redis.connection_pool.connection_kwargs.get("port", 6379)
        proxy_port = free_port()
        proxy = [str(env_python), str(HERE / "delay_proxy.py"), str(proxy_port), str(redis_port),
                 "0.001"]  # fmt: skip
        start(CLIENT_CPU + proxy if PINNED else proxy)  # the network, not the server's CPU
        wait_for_port(proxy_port)
        ports = {name: free_port() for name in ("bare", "routed", "local", "remote")}
        service_env = {"DATABASE_URL": database_url, "RATELIMIT_KEY_PREFIX": prefix,
                       "LOG_LEVEL": "WARNING", "PYTHONPATH": str(HERE)}  # fmt: skip
        pids = {
            "bare": uvicorn("bare_app:app", ports["bare"], PYTHONPATH=str(HERE)),
            "routed": uvicorn("bare_app:routed_app", ports["routed"], PYTHONPATH=str(HERE)),
            "local": uvicorn(
                f"{package}.main:app", ports["local"], REDIS_URL=REDIS_URL, **service_env
            ),
            "remote": uvicorn(
                f"{package}.main:app",
                ports["remote"],
                REDIS_URL=f"redis://127.0.0.1:{proxy_port}/0",
                **service_env,
            ),
        }

        scenarios = {
            "bare": ("bare", {}),
            "bare-routed": ("routed", {}),
            "anonymous": ("local", {}),
            "api-key": ("local", {"X-API-Key": pro_key}),
            "anonymous-redis-2ms": ("remote", {}),
            "api-key-redis-2ms": ("remote", {"X-API-Key": pro_key}),
            "flood-429": ("local", {"X-API-Key": flood_key}),
        }

        def url(server: str) -> str:
            return f"http://127.0.0.1:{ports[server]}/v1/items"

        for server, headers in scenarios.values():  # warm up: connections, caches, scripts
            wrk(url(server), 1, args.connections, headers)
        runs: dict[str, list[dict]] = {name: [] for name in scenarios}
        for _ in range(args.rounds):
            for name, (server, headers) in scenarios.items():
                scripts, xacts = script_calls(shared_redis), transactions(database)
                cpu = cpu_seconds(pids[server])
                result = wrk(url(server), args.seconds, args.connections, headers)
                result["cpu_us"] = (cpu_seconds(pids[server]) - cpu) / result["requests"] * 1e6
                result["redis_round_trips"] = (script_calls(shared_redis) - scripts) / result[
                    "requests"
                ]
                result["db_queries"] = (transactions(database) - xacts) / result["requests"]
                runs[name].append(result)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
        psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        keys = list(redis.Redis.from_url(REDIS_URL).scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            redis.Redis.from_url(REDIS_URL).delete(*keys)
        shutil.rmtree(workdir, ignore_errors=True)

    bare = statistics.median(r["rps"] for r in runs["bare"])
    table = []
    for name, results in runs.items():
        row = {
            "scenario": name,
            "rps": statistics.median(r["rps"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "cpu_us_per_request": statistics.median(r["cpu_us"] for r in results),
            "non_2xx_share": sum(r["non_2xx"] for r in results)
            / sum(r["requests"] for r in results),
            "redis_round_trips": statistics.median(r["redis_round_trips"] for r in results),
            "db_queries": statistics.median(r["db_queries"] for r in results),
        }
        row["ratio_to_bare"] = row["rps"] / bare
        table.append(row)
    bare_cpu = table[0]["cpu_us_per_request"]
    for row in table:
        row["cpu_ratio_to_bare"] = bare_cpu / row["cpu_us_per_request"]
    print(
        f"{'scenario':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'x bare':>8}"
        f"{'cpu us':>8}{'cpu x':>7}{'non-2xx':>9}{'redis/req':>11}{'db/req':>8}"
    )
    for row in table:
        print(
            f"{row['scenario']:<22}{row['rps']:>9.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
            f"{row['ratio_to_bare']:>8.2f}{row['cpu_us_per_request']:>8.0f}"
            f"{row['cpu_ratio_to_bare']:>7.2f}{row['non_2xx_share']:>9.0%}"
            f"{row['redis_round_trips']:>11.2f}{row['db_queries']:>8.3f}"
        )
    print("x bare: requests/s over bare's; cpu x: bare's CPU per request over this one's")
    meta = {"seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
            "cpus": os.cpu_count(), "pinned": PINNED,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    args.json.write_text(json.dumps({"meta": meta, "results": table}, indent=2) + "\n")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
