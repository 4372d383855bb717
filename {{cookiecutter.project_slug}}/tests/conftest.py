"""Fixtures giving real services: Redis at REDIS_URL, Postgres at DATABASE_URL, throwaway
servers, and the service under real uvicorn.

Isolation: every test counts under its own Redis key prefix and deletes only its own keys (SCAN,
never KEYS or FLUSHALL), and gets a database of its own, copied from a migrated template; the
suite drops only the databases it created. So the tests run in parallel (pytest-xdist, `-n auto`
in pyproject.toml) with nothing shared between workers but the two servers.

Busy machines: a test waits for the line, count or port it needs with a deadline (`wait_until`,
`wait_for_line`), never reads once and hopes: a log written after the response is not there yet
when the response arrives.
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.engine import make_url

from {{ cookiecutter.package_name }}.database import create_engine, session_factory
from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.migrations import upgrade_to_head
from {{ cookiecutter.package_name }}.plans import repository
from {{ cookiecutter.package_name }}.settings import Settings

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# A Postgres where the suite may create (and drop) databases of its own.
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# compose.yaml publishes neither Redis nor Postgres on the host, hence plain `docker run`.
HOW_TO_START_REDIS = (
    "start one with `docker run -d --rm -p 127.0.0.1:6379:6379 redis:7.4-alpine` "
    "or `sudo apt-get install redis-server` (macOS: `brew install redis && brew services start "
    "redis`), or point REDIS_URL at a running Redis"
)
HOW_TO_START_POSTGRES = (
    "start one with `docker run -d --rm -p 127.0.0.1:5432:5432 "
    "-e POSTGRES_HOST_AUTH_METHOD=trust postgres:17-alpine` or `sudo apt-get install postgresql`, "
    "or point DATABASE_URL at a Postgres where this user may create databases"
)
# What the suite names its databases and Redis keys with on the shared servers: change them when
# two projects' suites share one server. Each pytest-xdist worker adds its id ("gw0"), so no two
# workers ever pick the same name, and a leftover names the run that left it.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
DEFAULT_DB_PREFIX = "test_{{ cookiecutter.package_name }}_"
TEST_DB_PREFIX = os.environ.get("TEST_DATABASE_PREFIX", DEFAULT_DB_PREFIX) + f"{WORKER}_"
TEST_REDIS_KEY_PREFIX = os.environ.get("TEST_REDIS_KEY_PREFIX", "test-") + f"{WORKER}-"
# The project's root: where `tests` is importable from.
PROJECT = str(Path(__file__).resolve().parents[1])


# A test that starts a server process of its own (uvicorn, redis-server, a Redis cluster or
# sentinels) or cuts a connection to wait out an outage is `slow`, found by the fixtures it
# asks for, so a new test is sorted without anyone remembering to mark it; other slow tests
# carry the marker themselves. `make test-fast` (-m "not slow") is the inner loop.
SLOW_FIXTURES = {
    "start_uvicorn",
    "throwaway_redis",
    "database_proxy",
    "cluster",
    "sentinels",
    "locked_redis",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _tcp_address(url: str, default_port: int) -> tuple[str, int] | None:
    """The host and port of a URL, or None when it has none (a Unix socket, a list of hosts)."""
    try:
        parsed = urlsplit(url)
        return (parsed.hostname, parsed.port or default_port) if parsed.hostname else None
    except ValueError:
        return None


def _accepts_connections(address: tuple[str, int] | None) -> bool:
    if address is None:
        return True  # nothing to check here: the fixtures will say what is wrong
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


# Tests of pure logic, which need neither Redis nor Postgres: `pytest tests/unit` runs anywhere.
UNIT_TESTS = Path(__file__).resolve().parent / "unit"


def _only_unit_tests(config: pytest.Config) -> bool:
    asked = [Path(arg.split("::")[0]).resolve() for arg in config.args] or [Path.cwd()]
    return all(path == UNIT_TESTS or UNIT_TESTS in path.parents for path in asked)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop in the first second, one line a service, when Redis or Postgres is not running
    (unless only the unit tests were asked for)."""
    if _only_unit_tests(session.config):
        return
    services = [
        ("Redis", "REDIS_URL", _tcp_address(REDIS_URL, 6379), HOW_TO_START_REDIS),
        ("Postgres", "DATABASE_URL", _tcp_address(DATABASE_URL, 5432), HOW_TO_START_POSTGRES),
    ]
    with ThreadPoolExecutor() as pool:  # both at once: a second in all, at most
        up = list(pool.map(_accepts_connections, [address for _, _, address, _ in services]))
    missing = [
        f"{name} is not running at {address[0]}:{address[1]} ({variable}): {how}"
        for (name, variable, address, how), running in zip(services, up, strict=True)
        if not running and address is not None
    ]
    if missing:
        # Written here, once: pytest repeats an exit reason, and these lines are long.
        print(*missing, sep="\n", file=sys.stderr)
        pytest.exit("the tests need Redis and Postgres", returncode=pytest.ExitCode.USAGE_ERROR)


def _url_for(database: str) -> str:
    return make_url(DATABASE_URL).set(database=database).render_as_string(hide_password=False)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(*statements: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(DATABASE_URL), timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated once per run; each test's database is a copy of it."""
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:8]}_template"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"Postgres at {DATABASE_URL} is unusable ({exc}): {HOW_TO_START_POSTGRES}",
            pytrace=False,
        )
    try:
        upgrade_to_head(_url_for(name))
        yield _url_for(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own; anonymous callers get 5/minute there."""
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:12]}"
    template = make_url(template_database).database
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    url = _url_for(name)
    await set_plan(url, "anonymous", "5/minute")
    yield url
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _in_session(url: str, work: Callable[..., Awaitable]) -> object:
    engine = create_engine(Settings(_env_file=None, database_url=url))
    try:
        async with session_factory(engine)() as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


async def set_plan(
    url: str,
    name: str,
    limits: str,
    route_limits: dict | None = None,
    shadow_limits: str | None = None,
) -> None:
    """Create or change a plan in the database at `url`, as the CLI would."""

    async def work(session):
        if await repository.find_plan(session, name) is None:
            await repository.create_plan(session, name, limits, route_limits, shadow_limits)
        else:
            await repository.update_plan(
                session, name, limits, route_limits or {}, shadow_limits=shadow_limits or ""
            )

    await _in_session(url, work)


async def create_account(url: str, name: str, plan: str) -> None:
    """An account on `plan` in the database at `url`, as the CLI would."""

    async def work(session):
        await repository.create_account(session, name, plan)

    await _in_session(url, work)


async def create_key(url: str, plan: str | None = None, account: str | None = None) -> str:
    """A key of `account`; without one, of a new account of its own on `plan` (so each such key
    is a caller with its own budget)."""

    async def work(session):
        name = account
        if name is None:
            name = f"tests-{uuid.uuid4().hex[:8]}"
            await repository.create_account(session, name, plan)
        key, _ = await repository.create_key(session, name)
        return key

    return await _in_session(url, work)


async def revoke_key(url: str, key: str) -> None:
    async def work(session):
        await repository.revoke_key(session, key.split("_")[1])

    await _in_session(url, work)


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {REDIS_URL} is unreachable ({exc}): {HOW_TO_START_REDIS}", pytrace=False
        )
    return REDIS_URL


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"{TEST_REDIS_KEY_PREFIX}{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_settings(redis_url: str, key_prefix: str, database_url: str) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        # Explicit values, not the baked defaults, so every answer set runs the same tests;
        # tests about another algorithm or policy say so.
        values: dict[str, object] = {
            "redis_url": redis_url,
            "ratelimit_key_prefix": key_prefix,
            "database_url": database_url,
            "ratelimit_strategy": "moving-window",
            "ratelimit_outage_policy": "fail-open",
            # Load shedding off: a test's own event loop also runs its client, and a slow
            # moment of a busy machine must not turn an expected 200 or 429 into a 503.
            # test_shedding.py turns it on.
            "load_shedding_lag_ms": 0,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@asynccontextmanager
async def running_client(
    settings: Settings, client_ip: str = "203.0.113.10", app: FastAPI | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An app built from `settings` (or `app`), its lifespan entered, and a client bound to it."""
    app = app or create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_for_line(
    log: Path, wanted: Callable[[str], bool], what: str, timeout: float = 10
) -> list[str]:
    """The complete lines of `log` once one of them is `wanted`. A server writes some lines (an
    access line, nginx's log) after its response: the client may hold the answer first."""
    lines: list[str] = []

    def written() -> bool:
        nonlocal lines
        text = log.read_text() if log.exists() else ""
        lines = text.split("\n")[:-1]  # a line still being written has no newline yet
        return any(wanted(line) for line in lines)

    wait_until(written, timeout, what)
    return lines


class RedisServers:
    """redis-server processes of one test, by port; each start waits until it answers."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[int, tuple[list[str], subprocess.Popen[bytes]]] = {}

    def start(self, port: int, *args: str) -> None:
        if args and args[0].endswith(".conf"):  # a sentinel: its config file comes first
            command = ["redis-server", *args, "--port", str(port)]
        else:
            command = ["redis-server", *args, "--port", str(port), "--bind", "127.0.0.1",
                       "--dir", str(self.workdir), "--save", "", "--appendonly", "no"]  # fmt: skip
        self._run(port, command)

    def _run(self, port: int, command: list[str]) -> None:
        self.processes[port] = (command, subprocess.Popen(command, stdout=subprocess.DEVNULL))
        wait_until(lambda: self.answers(port), 30, f"redis-server on port {port}")

    def answers(self, port: int) -> bool:
        try:
            return bool(redis.Redis(port=port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self, port: int) -> None:
        _, process = self.processes.pop(port)
        process.terminate()
        process.wait(timeout=10)

    def restart(self, port: int) -> None:
        command, _ = self.processes[port]
        self.stop(port)
        self._run(port, command)

    def stop_all(self) -> None:
        for port in list(self.processes):
            self.stop(port)


class ThrowawayRedis:
    """A redis-server of the test's own on a free port, for tests that stop and restart it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._servers = RedisServers(workdir)

    def start(self) -> None:
        self._servers.start(self.port)

    def stop(self) -> None:
        if self.port in self._servers.processes:
            self._servers.stop(self.port)


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path)
    try:
        server.start()
    except FileNotFoundError:
        pytest.fail("redis-server is not installed: `apt-get install redis-server`", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def start_uvicorn(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start the service as the README does (uvicorn), in its own process; returns its base URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(
        app: str = "{{ cookiecutter.package_name }}.main:app",
        *,
        log_level: str = "warning",
        stderr: Path | None = None,
        workers: int = 1,
        **env: str,
    ) -> str:
        """`stderr`: a file to write the server's stderr (its logs) to, for the test to read."""
        port = free_port()
        output = stderr.open("wb") if stderr else None
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app,
             "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers",
             "--log-level", log_level, "--workers", str(workers)],
            cwd=tmp_path,  # away from the project's .env: the test decides every setting
            # Load shedding off unless the test sets it (as make_settings does): tests that
            # flood an instance on purpose expect 200s and 429s, never a shed 503.
            # The project root on PYTHONPATH: `app` may be one of the tests' own modules
            # (tests.slow_app:app), which the server, started away from here, imports.
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [PROJECT, os.getenv("PYTHONPATH")])),
                "LOAD_SHEDDING_LAG_MS": "0",
                **env,
            },
            stderr=output,
        )  # fmt: skip
        if output:
            output.close()  # the server writes to its own copy
        processes.append(process)
        base_url = f"http://127.0.0.1:{port}"
        start.processes[base_url] = process  # type: ignore[attr-defined]

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {process.returncode}")
            try:
                return httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        # Start-up deadlines are generous: a busy machine (load 7 on 2 cores) once took over 20 s.
        wait_until(answers, 60, f"uvicorn on port {port}")
        return base_url

    start.processes = {}  # type: ignore[attr-defined]  # base URL -> its process
    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)


class TcpProxy:
    """A TCP proxy the test controls, in front of a real server: `cut()` makes the server
    unreachable (refused connections, open ones dropped), `restore()` brings it back."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()


@pytest.fixture
async def database_proxy(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """This test's database, reached through a proxy the test can cut; yields (proxy, url)."""
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.restore()
    yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    await proxy.cut()


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    """Run the service's command line against `database_url`: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "{{ cookiecutter.package_name }}", *args,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    return process.returncode or 0, stdout.decode(), stderr.decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus' text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.startswith(name + "{") or sample == name:
            found = sample[len(name) :].strip("{}")
            if ",".join(sorted(found.split(","))) == wanted or (not labels and not found):
                return float(value)
    return 0.0


def storage_errors(text: str, *kinds: str) -> float:
    """Failed storage calls in Prometheus' text format: of the kinds given, else of every kind."""
    kinds = kinds or ("timeout", "connection", "server", "reply")
    return sum(metric(text, "ratelimit_storage_errors_total", kind=kind) for kind in kinds)


def count_statements(app: FastAPI) -> list[str]:
    """Every SQL statement the app's own engine sends from now on, as a list that grows.

    The rule: a claim that something is cached (no database read, no Redis call per request)
    is backed by a count of those reads or calls, never by the answers alone, which a cache
    that reads every time gives too. (Redis calls: a throwaway redis-server's INFO
    commandstats.) Likewise a stand-in server answers each call distinguishably, so that a
    reply given to the wrong call fails a test; and a test waits for the line or count it
    needs with a deadline (wait_until) rather than reading it once.
    """
    statements: list[str] = []

    def record(connection: object, cursor: object, statement: str, *rest: object) -> None:
        statements.append(statement)

    event.listen(app.state.db_engine.sync_engine, "before_cursor_execute", record)
    return statements
