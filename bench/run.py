"""Benchmark: what the limiter costs, against a bare FastAPI endpoint and against peer setups.

    python bench/run.py                      # ~4 minutes; prints tables, writes bench/results.json

It bakes a service with the default answers, starts it with one uvicorn worker on loopback
(on a redis-server and a Postgres database of its own), and measures with wrk, interleaved
(A B A B ...) over several rounds, medians reported:

  bare            a bare FastAPI endpoint, same response, no limiter: the reference
  bare-routed     the service's endpoint shape and router, no limiter, no middleware
  anonymous       the limited endpoint, anonymous caller, limit never reached
  api-key         the same with an API key (plan resolved from the cache)
  flood-429       a key far over its limit: every answer a 429
  slowapi         peer: the seed article's slowapi on Redis (peer_slowapi.py), never reached
  limits-aio      peer: `limits.aio` used directly (peer_limits.py), never reached
  *-redis-2ms     our two and the peers with Redis behind a proxy adding 1 ms each way, with
                  more connections (--remote-connections), so that latency does not cap req/s

For each it counts Redis script calls (round trips) and database transactions per request (on
the run's own Redis: the shared one counts other people's calls too), and the CPU time the
uvicorn process spent per request (from /proc: steadier than requests/s on a shared machine).
With two or more CPUs, the uvicorn processes are pinned to one CPU and wrk, Redis and the
delay proxy to the other (taskset), so that nothing else takes the server's CPU. A second table
gives our ratio to each peer, round by round (each pair measured back to back), medians.
Needs: wrk (`apt-get install wrk`), redis-server, Postgres (as the tests do).

bench/scaling.py reuses `Bench`, `measure` and `summarize`.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE.parent
sys.path.insert(0, str(TEMPLATE))
from tests.stack import free_port, stop_processes, wait_for  # noqa: E402  (e2e tests' helpers)

ADMIN_DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Never reached in a run, and a short window: a moving window keeps one entry per hit in Redis
# for the whole window.
NEVER_REACHED = "100000000/minute"
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")

# The rows of the service itself.
OURS = ("anonymous", "api-key", "flood-429", "anonymous-redis-2ms", "api-key-redis-2ms")
# Our rows and the peer rows they are compared with, same Redis distance.
PEER_PAIRS = (
    ("anonymous", "slowapi"),
    ("anonymous", "limits-aio"),
    ("anonymous-redis-2ms", "slowapi-redis-2ms"),
    ("anonymous-redis-2ms", "limits-aio-redis-2ms"),
)


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


def rss_mib(pid: int) -> float:
    """Resident memory of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) / 1024


def wrk(
    url: str,
    seconds: float,
    connections: int,
    headers: dict[str, str],
    script: Path | None = None,
    script_args: tuple[str, ...] = (),
) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]  # whole s
    if PINNED:
        command = CLIENT_CPU + command
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    if script_args:
        command += ["--", *script_args]
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


@dataclass
class Bench:
    """A service baked with the default answers and installed in its own virtualenv, with a
    Postgres database of its own, and the processes started for a run (redis-server included).
    All of it is removed on exit: processes stopped, database dropped, files deleted."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ratelimit-bench-")))
    database: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:10]}")
    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:10]}")
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __enter__(self) -> "Bench":
        from cookiecutter.main import cookiecutter

        try:
            self.project = Path(
                cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(self.workdir))
            )
            self.package = self.project.name.replace("-", "_")
            self.python = service_venv(self.project) / "bin" / "python"
            base, _, _ = ADMIN_DATABASE_URL.rpartition("/")
            self.database_url = f"{base}/{self.database}"
            psql(f'CREATE DATABASE "{self.database}"')
            self.cli("db", "upgrade")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop_processes(self.processes)
        psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.workdir, ignore_errors=True)

    def cli(self, *cli_args: str) -> str:
        return subprocess.run(
            [str(self.python), "-m", self.package, *cli_args],
            cwd=self.workdir,
            env={**os.environ, "DATABASE_URL": self.database_url},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def start(self, command: list[str], **env: str) -> subprocess.Popen:
        # The service's logs (a line per 429 in the flood) are written, as in production,
        # but not shown.
        process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def redis_server(self) -> tuple[redis.Redis, str]:
        """A redis-server of this run's own, without persistence, stopped on exit; a client
        and its URL."""
        port = free_port()
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"]  # fmt: skip
        self.start(CLIENT_CPU + command if PINNED else command)  # off the server's CPU
        wait_for_port(port)
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return client, f"redis://127.0.0.1:{port}/0"
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def uvicorn(self, app: str, port: int, path: str = "/v1/items", **env: str) -> int:
        """One uvicorn worker on loopback, on the server's CPU; its process id."""
        command = [str(self.python), "-m", "uvicorn", app, "--port", str(port),
                   "--no-access-log", "--log-level", "warning", "--no-proxy-headers"]  # fmt: skip
        process = self.start(SERVER_CPU + command if PINNED else command, **env)
        wait_for(f"http://127.0.0.1:{port}{path}", process)
        return process.pid

    def service(self, port: int, redis_url: str, app: str = "", **env: str) -> int:
        """The baked service (or an app module of bench/ wrapping it) on this bench's
        database and key prefix."""
        return self.uvicorn(
            app or f"{self.package}.main:app",
            port,
            REDIS_URL=redis_url,
            DATABASE_URL=self.database_url,
            RATELIMIT_KEY_PREFIX=self.prefix,
            LOG_LEVEL="WARNING",
            PYTHONPATH=str(HERE),
            **env,
        )

    def delay_proxy(self, upstream_port: int) -> int:
        """A port where Redis (at upstream_port) is 1 ms away each way."""
        port = free_port()
        proxy = [str(self.python), str(HERE / "delay_proxy.py"), str(port), str(upstream_port),
                 "0.001"]  # fmt: skip
        self.start(CLIENT_CPU + proxy if PINNED else proxy)  # the network, not the server's CPU
        wait_for_port(port)
        return port


@dataclass(frozen=True)
class Scenario:
    pid: int  # the server process whose CPU time is counted
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    connections: int = 32


def measure(
    scenario: Scenario,
    seconds: float,
    redis_client: redis.Redis,
    database: str,
    **wrk_options: Any,
) -> dict:
    """One wrk run, with the server's CPU time, Redis script calls and database transactions
    per request over it."""
    scripts, xacts = script_calls(redis_client), transactions(database)
    cpu = cpu_seconds(scenario.pid)
    result = wrk(scenario.url, seconds, scenario.connections, scenario.headers, **wrk_options)
    requests = result["requests"]
    result["cpu_us"] = (cpu_seconds(scenario.pid) - cpu) / requests * 1e6
    result["redis_round_trips"] = (script_calls(redis_client) - scripts) / requests
    result["db_queries"] = (transactions(database) - xacts) / requests
    return result


def interleave(
    scenarios: dict[str, Scenario],
    rounds: int,
    seconds: float,
    run: Callable[[Scenario, float], dict],
) -> dict[str, list[dict]]:
    """Every scenario once per round, in order (A B A B ...), after a warm-up of each."""
    for scenario in scenarios.values():  # warm up: connections, caches, scripts
        wrk(scenario.url, 1, scenario.connections, scenario.headers)
    runs: dict[str, list[dict]] = {name: [] for name in scenarios}
    for _ in range(rounds):
        for name, scenario in scenarios.items():
            runs[name].append(run(scenario, seconds))
    return runs


def summarize(runs: dict[str, list[dict]], scenarios: dict[str, Scenario]) -> list[dict]:
    """Medians per scenario; ratios to the first scenario (the reference)."""
    table = []
    for name, results in runs.items():
        table.append(
            {
                "scenario": name,
                "connections": scenarios[name].connections,
                "rps": statistics.median(r["rps"] for r in results),
                "p50_ms": statistics.median(r["p50_ms"] for r in results),
                "p99_ms": statistics.median(r["p99_ms"] for r in results),
                "cpu_us_per_request": statistics.median(r["cpu_us"] for r in results),
                "non_2xx_share": sum(r["non_2xx"] for r in results)
                / sum(r["requests"] for r in results),
                "redis_round_trips": statistics.median(r["redis_round_trips"] for r in results),
                "db_queries": statistics.median(r["db_queries"] for r in results),
            }
        )
    reference = table[0]
    for row in table:
        row["ratio_to_bare"] = row["rps"] / reference["rps"]
        row["cpu_ratio_to_bare"] = reference["cpu_us_per_request"] / row["cpu_us_per_request"]
    return table


def print_table(table: list[dict], first_column: str = "scenario", reference: str = "bare") -> None:
    """The medians; "x bare" and "cpu x" are ratios to the first row, `reference`."""
    print(
        f"{first_column:<22}{'conns':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'x bare':>8}"
        f"{'cpu us':>8}{'cpu x':>7}{'non-2xx':>9}{'redis/req':>11}{'db/req':>8}"
    )
    for row in table:
        print(
            f"{row['scenario']:<22}{row['connections']:>6}{row['rps']:>9.0f}"
            f"{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['ratio_to_bare']:>8.2f}"
            f"{row['cpu_us_per_request']:>8.0f}{row['cpu_ratio_to_bare']:>7.2f}"
            f"{row['non_2xx_share']:>9.0%}{row['redis_round_trips']:>11.2f}{row['db_queries']:>8.3f}"
        )
    print(f"x bare: requests/s over {reference}'s; cpu x: {reference}'s CPU per request over this")


def peer_ratios(runs: dict[str, list[dict]]) -> list[dict]:
    """Our requests/s over the peer's and the peer's CPU per request over ours, round by round
    (the two measured back to back), medians."""
    ratios = []
    for ours, peer in PEER_PAIRS:
        pairs = list(zip(runs[ours], runs[peer], strict=True))
        ratios.append(
            {
                "ours": ours,
                "peer": peer,
                "rps_ratio": statistics.median(o["rps"] / p["rps"] for o, p in pairs),
                "cpu_ratio": statistics.median(p["cpu_us"] / o["cpu_us"] for o, p in pairs),
                "p99_ratio": statistics.median(p["p99_ms"] / o["p99_ms"] for o, p in pairs),
            }
        )
    return ratios


def targets(table: list[dict], ratios: list[dict]) -> list[tuple[str, str, bool]]:
    """The product's performance targets this run can check: (target, measured, met)."""
    rows = {row["scenario"]: row for row in table}
    routed = rows["bare-routed"]["cpu_us_per_request"]
    checks = []
    for name in ("anonymous", "api-key", "anonymous-redis-2ms", "api-key-redis-2ms"):
        cpu = rows[name]["cpu_us_per_request"] / routed
        checks.append((f"{name}: CPU/request <= 1.25 x bare-routed", f"{cpu:.2f} x", cpu <= 1.25))
    flood = rows["flood-429"]["cpu_us_per_request"] / rows["api-key"]["cpu_us_per_request"]
    checks.append(("a 429 no dearer than a 200 (CPU, vs api-key)", f"{flood:.2f} x", flood <= 1))
    by_peer = {ratio["peer"]: ratio["rps_ratio"] for ratio in ratios}
    for peer, floor in (("slowapi", 2), ("slowapi-redis-2ms", 8)):
        checks.append(
            (f"req/s >= {floor} x {peer}", f"{by_peer[peer]:.2f} x", by_peer[peer] >= floor)
        )
    ours = [rows[name] for name in OURS]
    trips = max(row["redis_round_trips"] for row in ours)
    queries = max(row["db_queries"] for row in ours)
    # Requests still in flight when wrk stops reach Redis but are not counted by wrk: a few
    # hundredths above one trip are those.
    checks.append(("<= 1 Redis round trip per request", f"{trips:.2f}", trips < 1.05))
    checks.append(("0 database queries per request", f"{queries:.3f}", queries < 0.001))
    return checks


def template_state() -> dict[str, Any]:
    """Which template was measured: other work may be in the tree when the bench runs."""

    def git(*git_args: str) -> str:
        done = subprocess.run(["git", *git_args], cwd=TEMPLATE, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed": git("status", "--short").splitlines(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration of one measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--remote-connections",
        type=int,
        default=128,
        help="connections of the Redis-2-ms scenarios: enough that latency does not cap req/s",
    )
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    load_before = os.getloadavg()
    with Bench() as bench:
        bench.cli("plans", "update", "anonymous", "--limits", NEVER_REACHED)
        bench.cli("plans", "update", "pro", "--limits", NEVER_REACHED)
        bench.cli("plans", "update", "free", "--limits", "1/hour")
        for plan in ("pro", "free"):
            bench.cli("accounts", "create", f"bench-{plan}", "--plan", plan)
        pro_key, flood_key = (
            bench.cli("keys", "create", "--account", f"bench-{plan}").splitlines()[-1]
            for plan in ("pro", "free")
        )

        redis_client, local_redis = bench.redis_server()
        proxy_port = bench.delay_proxy(redis_client.connection_pool.connection_kwargs["port"])
        remote_redis = f"redis://127.0.0.1:{proxy_port}/0"
        ports = {name: free_port() for name in ("bare", "routed", "local", "remote", "slowapi",
                 "slowapi-remote", "limits", "limits-remote")}  # fmt: skip

        def peer(name: str, module: str, redis_url: str) -> int:
            return bench.uvicorn(
                f"{module}:app",
                ports[name],
                REDIS_URL=redis_url,
                PEER_LIMIT=NEVER_REACHED,
                PYTHONPATH=str(HERE),
            )

        pids = {
            "bare": bench.uvicorn("bare_app:app", ports["bare"], PYTHONPATH=str(HERE)),
            "routed": bench.uvicorn("bare_app:routed_app", ports["routed"], PYTHONPATH=str(HERE)),
            "local": bench.service(ports["local"], local_redis),
            "remote": bench.service(ports["remote"], remote_redis),
            "slowapi": peer("slowapi", "peer_slowapi", local_redis),
            "slowapi-remote": peer("slowapi-remote", "peer_slowapi", remote_redis),
            "limits": peer("limits", "peer_limits", local_redis),
            "limits-remote": peer("limits-remote", "peer_limits", remote_redis),
        }

        def scenario(server: str, headers: dict[str, str] | None = None) -> Scenario:
            remote = server.endswith("remote")
            return Scenario(
                pid=pids[server],
                url=f"http://127.0.0.1:{ports[server]}/v1/items",
                headers=headers or {},
                connections=args.remote_connections if remote else args.connections,
            )

        # Each peer right after the row of ours it is compared with.
        scenarios = {
            "bare": scenario("bare"),
            "bare-routed": scenario("routed"),
            "anonymous": scenario("local"),
            "slowapi": scenario("slowapi"),
            "limits-aio": scenario("limits"),
            "api-key": scenario("local", {"X-API-Key": pro_key}),
            "flood-429": scenario("local", {"X-API-Key": flood_key}),
            "anonymous-redis-2ms": scenario("remote"),
            "slowapi-redis-2ms": scenario("slowapi-remote"),
            "limits-aio-redis-2ms": scenario("limits-remote"),
            "api-key-redis-2ms": scenario("remote", {"X-API-Key": pro_key}),
        }
        runs = interleave(
            scenarios,
            args.rounds,
            args.seconds,
            lambda s, seconds: measure(s, seconds, redis_client, bench.database),
        )
        redis_client.close()

    table = summarize(runs, scenarios)
    print_table(table)
    ratios = peer_ratios(runs)
    print(f"\n{'ours':<22}{'peer':<24}{'req/s x':>9}{'cpu x':>8}{'p99 x':>8}")
    for ratio in ratios:
        print(
            f"{ratio['ours']:<22}{ratio['peer']:<24}{ratio['rps_ratio']:>9.2f}"
            f"{ratio['cpu_ratio']:>8.2f}{ratio['p99_ratio']:>8.2f}"
        )
    print(
        "req/s x: ours over the peer's; cpu x and p99 x: the peer's over ours (above 1: ours less)"
    )
    checks = targets(table, ratios)
    print()
    for target, measured, met in checks:
        print(f"{'met    ' if met else 'NOT MET'}  {target:<50}{measured:>10}")
    meta = {"seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
            "remote_connections": args.remote_connections, "cpus": os.cpu_count(),
            "pinned": PINNED, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "template": template_state()}  # fmt: skip
    report = {
        "meta": meta,
        "results": table,
        "rounds": runs,
        "peers": ratios,
        "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in checks],
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
