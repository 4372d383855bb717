"""The generated service running for real on loopback: two uvicorn instances behind real nginx,
on the shared Redis and a Postgres database of its own. Used by the end-to-end tests."""

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import yaml

from . import nginx
from .conftest import run

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_200(url: str, stopped: Callable[[], str | None], timeout: float = 60) -> None:
    """Until `url` answers 200. `stopped()` says why the server waited for is gone (None while
    it runs): then this fails at once, saying so, instead of waiting out the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (why := stopped()) is not None:
            raise RuntimeError(why)
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until `url` answers 200, failing at once if `process` exits (with its stderr if piped)."""

    def stopped() -> str | None:
        if process.poll() is None:
            return None
        stderr = process.stderr.read()[-1500:] if process.stderr else ""
        return f"{process.args[0]} exited with {process.returncode} {stderr}".rstrip()

    wait_until_200(url, stopped, timeout)


def psql(sql: str) -> None:
    done = subprocess.run(
        ["psql", ADMIN_DATABASE_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def stop_processes(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each, then wait for each, killing any that takes over 10 s."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def forget(database: str, key_prefix: str) -> None:
    """Drop a test's own database and delete its Redis keys (SCAN, never KEYS or FLUSHALL)."""
    psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    shared = redis.Redis.from_url(REDIS_URL)
    keys = list(shared.scan_iter(match=f"{key_prefix}:*", count=1000))
    if keys:
        shared.delete(*keys)
    shared.close()


@dataclass
class Stack:
    project: Path
    venv: Path
    workdir: Path
    nginx_values: dict[str, str]
    app_env: dict[str, str] = field(default_factory=dict)
    # The ASGI app the instances serve: the service's own (`<package>.main:app`) unless set,
    # e.g. to the baked tests' `tests.slow_app:app` (the service plus slow endpoints).
    app: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)
    app_urls: list[str] = field(default_factory=list)
    nginx_url: str = ""
    database: str = field(default_factory=lambda: f"e2e_{uuid.uuid4().hex[:12]}")
    key_prefix: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:12]}")

    @property
    def database_url(self) -> str:
        base, _, _ = ADMIN_DATABASE_URL.rpartition("/")
        return f"{base}/{self.database}"

    def cli(self, *args: str) -> str:
        done = run(
            [str(self.venv / "bin" / "python"), "-m", self.project.name.replace("-", "_"), *args],
            cwd=self.workdir,
            DATABASE_URL=self.database_url,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def create_database(self) -> None:
        """A database of the stack's own, migrated and seeded, before any instance starts."""
        psql(f'CREATE DATABASE "{self.database}"')
        self.cli("db", "upgrade")

    def start(self, instances: int = 2) -> None:
        env = {
            **os.environ,
            "REDIS_URL": REDIS_URL,
            "DATABASE_URL": self.database_url,
            "RATELIMIT_KEY_PREFIX": self.key_prefix,
            "TRUSTED_PROXIES": "127.0.0.1",  # nginx connects from here
            "PYTHONPATH": str(self.project),  # for an app of the baked tests
            **self.app_env,
        }
        package = self.project.name.replace("-", "_")
        app = self.app or f"{package}.main:app"
        for _ in range(instances):
            port = free_port()
            process = subprocess.Popen(
                [str(self.venv / "bin" / "python"), "-m", "uvicorn", app,
                 "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers",
                 "--log-level", "warning", "--no-access-log"],
                cwd=self.workdir,
                env=env,
            )  # fmt: skip
            self.processes.append(process)
            self.app_urls.append(f"http://127.0.0.1:{port}")
        for url, process in zip(self.app_urls, self.processes, strict=True):
            wait_for(f"{url}/health/live", process)
        port = free_port()
        servers = " ".join(f"server {url.removeprefix('http://')};" for url in self.app_urls)
        values = {"NGINX_PORT": f"127.0.0.1:{port}", "NGINX_UPSTREAM_SERVERS": servers}
        config = nginx.write_config(
            self.workdir / "nginx", self.project, values | self.nginx_values
        )
        checked = nginx.check_config(config)
        assert checked.returncode == 0, checked.stderr
        process = nginx.start(config)
        self.processes.append(process)
        self.nginx_url = f"http://127.0.0.1:{port}"
        wait_for(f"{self.nginx_url}/health/live", process)

    def stop(self) -> None:
        stop_processes(self.processes[::-1])
        self.processes.clear()
        forget(self.database, self.key_prefix)

    def upstream_log(self) -> list[str]:
        return (self.workdir / "nginx" / "access.log").read_text().splitlines()


def client(source_ip: str = "127.0.0.1", **kwargs) -> httpx.AsyncClient:
    """An HTTP client whose requests come from `source_ip` (any 127.x address is local)."""
    transport = httpx.AsyncHTTPTransport(local_address=source_ip)
    limits = httpx.Limits(max_connections=200)
    return httpx.AsyncClient(transport=transport, timeout=30, limits=limits, **kwargs)


class ThrowawayRedis:
    """A redis-server of the test's own, with its data saved on shutdown and loaded on start."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--save", "3600 1", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: Redis saves its data, then exits
            self.process.wait(timeout=10)
            self.process = None


class Prometheus:
    """The Prometheus server (Debian's `prometheus` package) on loopback, scraping a stack's
    instances with the bake's own deploy/prometheus/prometheus.yml and rules: only discovery
    (compose's DNS name) becomes the instances' addresses, and the intervals become 1 s."""

    def __init__(self, project: Path, workdir: Path, targets: list[str]) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        deploy = project / "deploy" / "prometheus"
        config = yaml.safe_load((deploy / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(deploy / name) for name in config["rule_files"]]
        (job,) = config["scrape_configs"]
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": targets}]
        self.config = self.workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with (self.workdir / "prometheus.log").open("wb") as log:  # the server keeps its copy
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip
        wait_for(f"{self.url}/-/ready", self.process)

    def query(self, expr: str) -> list[dict]:
        """The instant vector `expr` evaluates to now (an error if Prometheus refuses it)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        assert answer.status_code == 200, f"{expr}: {answer.text}"
        return answer.json()["data"]["result"]

    def alerts(self, name: str) -> list[dict]:
        """The alerts of rule `name` now pending or firing, with their labels and state."""
        found = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [alert for alert in found if alert["labels"]["alertname"] == name]

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process])
            self.process = None
