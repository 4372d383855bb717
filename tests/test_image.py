"""The generated image, built with podman (tests/podman.py) and run with the host's real Redis
and Postgres: migrations, limits, health check, user, graceful shutdown, layer reuse; then two
containers behind the rendered nginx config on loopback, HTTP and HTTPS, one restarted under load.

Figures (printed with -s): the build, the rebuild after a code change, the image size, and what
the restart under load saw."""

import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from . import nginx, podman
from .conftest import TEMPLATE
from .stack import forget, free_port, psql, stop_processes, wait_for, wait_until_200

# One worker runs them all (pytest-xdist --dist loadgroup): they share the module's image and
# containers.
pytestmark = pytest.mark.xdist_group("image")

RUN_ID = uuid.uuid4().hex[:10]
TAG = f"localhost/ratelimit-image-test:{RUN_ID}"
# A guard far above what these tests send from one address: only the plans refuse.
NGINX_GUARD = {
    "NGINX_RATE_PER_IP": "1000r/s",
    "NGINX_BURST_PER_IP": "1000",
    "NGINX_CONNECTIONS_PER_IP": "200",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    podman.require_podman()
    from cookiecutter.main import cookiecutter

    bake_dir = tmp_path_factory.mktemp("image-bake")
    return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(bake_dir)))


@pytest.fixture(scope="module")
def image(project, tmp_path_factory) -> Iterator[str]:
    started = time.monotonic()
    podman.ensure_bases(project / "Dockerfile", tmp_path_factory.mktemp("bases"))
    bases = time.monotonic() - started
    seconds, _ = podman.build(project, TAG)
    size = podman.podman("image", "inspect", TAG, "--format", "{{.Size}}").stdout.strip()
    print(f"\nbases ready in {bases:.0f}s; image built in {seconds:.0f}s, {int(size) / 1e6:.0f} MB")
    yield TAG
    podman.podman("rmi", "-f", TAG, check=False)


@pytest.fixture(scope="module")
def app_env() -> Iterator[dict[str, str]]:
    """A database and a Redis key prefix of this module's own, dropped and deleted after."""
    database, key_prefix = f"test_image_{RUN_ID}", f"image-{RUN_ID}"
    psql(f'CREATE DATABASE "{database}"')
    yield {
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "RATELIMIT_KEY_PREFIX": key_prefix,
        "LOG_CLIENT_KEY": uuid.uuid4().hex,
        "TRUSTED_PROXIES": "127.0.0.1",  # nginx, on loopback
        "UVICORN_HOST": "127.0.0.1",
    }
    forget(database, key_prefix)


def cli(image: str, project: Path, env: dict[str, str], *args: str) -> str:
    """The service's command line, run in a throwaway container of the image."""
    done = podman.run_once(image, env, project.name, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def key_of_new_account(image: str, project: Path, env: dict[str, str], plan: str) -> str:
    """A key of a new account on `plan` (a budget of its own), made with the image's CLI."""
    account = f"image-{plan}-{uuid.uuid4().hex[:8]}"
    cli(image, project, env, "accounts", "create", account, "--plan", plan)
    return cli(image, project, env, "keys", "create", "--account", account).splitlines()[-1]


@pytest.fixture(scope="module")
def upgraded(image, project, app_env) -> str:
    """`db upgrade` in the container; then the limits these tests count against."""
    applied = cli(image, project, app_env, "db", "upgrade")
    cli(image, project, app_env, "plans", "update", "anonymous", "--limits", "3/minute")
    cli(image, project, app_env, "plans", "update", "free", "--limits", "20/minute")
    # The restart test's load, at most 400 requests a second (LOAD_PER_SECOND), stays under both
    # this and the nginx flood guard's 1000r/s: every answer it gets is a 200 unless a
    # restart costs one.
    cli(image, project, app_env, "plans", "update", "enterprise", "--limits", "100000/minute")
    return applied


def wait_healthy(name: str, url: str, timeout: float = 60) -> None:
    """Until `url` answers 200; failing at once if the container stopped."""

    def stopped() -> str | None:
        state = podman.podman("inspect", name, "--format", "{{.State.Status}}", check=False)
        if state.stdout.strip() in {"running", "created", "configured", "stopping"}:
            return None
        logs = podman.podman("logs", name, check=False)
        return f"{name} is {state.stdout.strip()}: {logs.stderr[-1500:]}"

    wait_until_200(url, stopped, timeout)


def start_app(image: str, env: dict[str, str], *args: str) -> tuple[str, str]:
    """A container of the image on a free loopback port; its name and URL, once it answers."""
    name, port = f"image-{RUN_ID}-{uuid.uuid4().hex[:6]}", free_port()
    podman.run_detached(image, name, env | {"UVICORN_PORT": str(port)}, *args)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(name, f"{url}/health/live")
    except Exception:
        podman.remove(name)
        raise
    return name, url


@pytest.fixture(scope="module")
def app(image, upgraded, app_env) -> Iterator[tuple[str, str]]:
    name, url = start_app(image, app_env)
    yield name, url
    podman.remove(name)


def test_db_upgrade_in_the_container_applies_every_migration(project, upgraded, app_env):
    versions = project / "src" / project.name.replace("-", "_") / "migrations" / "versions"
    revisions = sorted(path.name.split("_")[0] for path in versions.glob("*.py"))
    assert upgraded == f"applied {', '.join(revisions)}"
    database = app_env["DATABASE_URL"].rpartition("/")[2]
    current = subprocess.run(
        ["psql", f"postgresql://postgres@127.0.0.1:5432/{database}", "-tAc",
         "SELECT version_num FROM alembic_version"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert current.stdout.split() == [revisions[-1]]


def test_the_container_answers_200_then_429_with_the_quota_headers(app):
    _, url = app
    with httpx.Client(timeout=10) as http:
        responses = [http.get(f"{url}/v1/items") for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["ratelimit"] for r in responses[:3]] == [
        f'"anonymous";r={left};t=60' for left in (2, 1, 0)
    ]
    assert all(r.headers["ratelimit-policy"] == '"anonymous";q=3;w=60' for r in responses)
    assert int(responses[3].headers["retry-after"]) > 0
    assert responses[3].headers["content-type"] == "application/problem+json"


def test_the_healthcheck_passes_on_the_port_the_container_listens_on(app):
    name, url = app
    assert not url.endswith(":8000")  # the check must follow UVICORN_PORT, not assume 8000
    configured = podman.podman("inspect", name, "--format", "{{.Config.Healthcheck.Test}}")
    assert "/health/live" in configured.stdout  # kept: the image is built in Docker's format
    checked = podman.podman("healthcheck", "run", name, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_service_runs_as_the_non_root_uid(app):
    name, _ = app
    status = podman.podman("exec", name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {"10001"}
    assert podman.podman("exec", name, "id", "-u").stdout.strip() == "10001"


def slow_app_args(project: Path) -> list[str]:
    """The image serving the bake's tests/slow_app.py (the service plus a /slow endpoint)."""
    return ["--volume", f"{project / 'tests'}:/app/tests:ro", "--env", "PYTHONPATH=/app"]


SLOW_COMMAND = ["uvicorn", "tests.slow_app:app", "--no-proxy-headers"]


def start_slow_app(image: str, project: Path, env: dict[str, str]) -> tuple[str, str]:
    name, port = f"image-{RUN_ID}-slow-{uuid.uuid4().hex[:6]}", free_port()
    environment = env | {"UVICORN_PORT": str(port)}
    flags = [item for key, value in environment.items() for item in ("-e", f"{key}={value}")]
    podman.podman(
        "run", "-d", "--name", name, "--network", "host", *podman.ULIMITS, *flags,
        *slow_app_args(project), image, *SLOW_COMMAND,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(name, f"{url}/health/live")
    return name, url


def in_flight(url: str, seconds: float) -> tuple[threading.Thread, dict]:
    """GET /slow?seconds=... in a thread; returns once the app counts it in flight."""
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["response"] = httpx.get(f"{url}/slow", params={"seconds": seconds}, timeout=60)
        except httpx.HTTPError as error:
            outcome["error"] = repr(error)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 10
    # The limiter's decision comes before the endpoint sleeps: counted, the request is in flight.
    labels = ('decision="allowed"', 'plan="anonymous"', 'route="/slow"')
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", timeout=2).text.splitlines()
        decided = [line for line in metrics if line.startswith("ratelimit_decisions_total{")]
        if any(all(label in line for label in labels) for line in decided):
            return thread, outcome
        time.sleep(0.05)
    raise TimeoutError("the slow request was never decided (ratelimit_decisions_total)")


def test_sigterm_lets_a_slow_request_finish_within_the_grace_period(
    image, project, upgraded, app_env
):
    name, url = start_slow_app(image, project, app_env)
    try:
        thread, outcome = in_flight(url, 3)
        started = time.monotonic()
        podman.podman("stop", "-t", "30", name, timeout=60)  # SIGTERM, SIGKILL after 30 s
        stopped_in = time.monotonic() - started
        thread.join(timeout=30)
        assert "response" in outcome, outcome
        assert outcome["response"].status_code == 200
        assert outcome["response"].json() == {"slept": 3}
        exit_code = podman.podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout
        assert exit_code.strip() == "0"  # uvicorn's own clean exit, not a SIGKILL (137)
        assert 1 < stopped_in < 20, stopped_in
    finally:
        podman.remove(name)


def test_a_request_past_the_graceful_timeout_is_cut_and_the_container_exits(
    image, project, upgraded, app_env
):
    """UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN bounds the wait: the container never outlives it."""
    env = app_env | {"UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": "2"}
    name, url = start_slow_app(image, project, env)
    try:
        thread, outcome = in_flight(url, 40)
        started = time.monotonic()
        podman.podman("stop", "-t", "30", name, timeout=60)
        stopped_in = time.monotonic() - started
        thread.join(timeout=30)
        assert stopped_in < 10, stopped_in  # 2 s of grace, not the 30 s before SIGKILL
        # uvicorn cancels it and answers 500 (README, Running in containers), or drops it.
        assert "error" in outcome or outcome["response"].status_code == 500, outcome
    finally:
        podman.remove(name)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A throwaway self-signed certificate for 127.0.0.1 (key.pem and cert.pem in its folder)."""
    folder = tmp_path_factory.mktemp("tls")
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return folder


@pytest.fixture(scope="module")
def pair(image, project, upgraded, app_env, certificate, tmp_path_factory) -> Iterator[dict]:
    """Two containers behind the rendered nginx config, HTTP and HTTPS (NGINX_TLS)."""
    apps = [start_app(image, app_env) for _ in range(2)]
    workdir = tmp_path_factory.mktemp("image-nginx")
    port, tls_port = free_port(), free_port()
    servers = " ".join(f"server {url.removeprefix('http://')};" for _, url in apps)
    values = NGINX_GUARD | {
        "NGINX_PORT": f"127.0.0.1:{port}",
        "NGINX_UPSTREAM_SERVERS": servers,
        "NGINX_TLS": f"listen 127.0.0.1:{tls_port} ssl; "
        f"ssl_certificate {certificate / 'cert.pem'}; "
        f"ssl_certificate_key {certificate / 'key.pem'};",
    }
    config = nginx.write_config(workdir, project, values)
    checked = nginx.check_config(config)
    assert checked.returncode == 0, checked.stderr
    process = nginx.start(config)
    try:
        wait_for(f"http://127.0.0.1:{port}/health/live", process, timeout=30)
        yield {
            "apps": apps,
            "url": f"http://127.0.0.1:{port}",
            "tls_url": f"https://127.0.0.1:{tls_port}",
            "log": workdir / "access.log",
        }
    finally:
        stop_processes([process])
        podman.remove(*(name for name, _ in apps))


def upstreams(log: Path, path: str) -> Counter:
    """Which upstream served each request for `path` (nginx's access log, tests/nginx.py)."""
    return Counter(
        line.split()[2].strip('"') for line in log.read_text().splitlines() if line.endswith(path)
    )


def test_one_budget_across_both_containers(image, project, app_env, pair):
    key = key_of_new_account(image, project, app_env, "free")
    path = f"/v1/items?budget={RUN_ID}"
    with httpx.Client(timeout=10) as http:
        responses = [
            http.get(f"{pair['url']}{path}", headers={"X-API-Key": key}) for _ in range(30)
        ]
    assert Counter(r.status_code for r in responses) == {200: 20, 429: 10}
    served = upstreams(pair["log"], path)
    assert set(served) == {url.removeprefix("http://") for _, url in pair["apps"]}, served


def test_nginx_terminates_tls_with_the_configured_certificate(pair, certificate):
    trusted = ssl.create_default_context(cafile=certificate / "cert.pem")
    with httpx.Client(verify=trusted, timeout=10) as https:
        answer = https.get(f"{pair['tls_url']}/health/live")
        assert answer.status_code == 200
        assert answer.http_version == "HTTP/1.1"
    with pytest.raises(httpx.ConnectError):  # the certificate is the one configured, no other
        httpx.get(f"{pair['tls_url']}/health/live", timeout=10)


LOAD_WORKERS, LOAD_PER_SECOND = 4, 100  # requests a second per worker, at most


def test_restarting_one_container_under_load_costs_no_5xx(image, project, app_env, pair):
    key = key_of_new_account(image, project, app_env, "enterprise")
    statuses: Counter = Counter()
    errors: list[str] = []
    other_than_200: list[str] = []  # the first few, whole, to say who answered them and why
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.wait(1 / LOAD_PER_SECOND):  # paced: a quiet machine is fast
                try:
                    answer = http.get(f"{pair['url']}/v1/items", headers={"X-API-Key": key})
                    statuses[answer.status_code] += 1
                    if answer.status_code != 200 and len(other_than_200) < 3:
                        other_than_200.append(f"{answer.headers}\n{answer.text[:500]}")
                except httpx.HTTPError as error:
                    errors.append(repr(error))

    workers = [threading.Thread(target=load) for _ in range(LOAD_WORKERS)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(2)
        before = sum(statuses.values())
        name, url = pair["apps"][0]
        started = time.monotonic()
        podman.podman("restart", "-t", "30", name, timeout=90)  # SIGTERM, then a fresh start
        wait_healthy(name, f"{url}/health/live")
        restarted_in = time.monotonic() - started
        time.sleep(2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    during = sum(statuses.values()) - before
    print(f"\nrestart under load: {dict(statuses)}, {len(errors)} client errors, "
          f"{during} requests after the restart began, back in {restarted_in:.1f}s")  # fmt: skip
    assert not errors, errors[:3]
    assert set(statuses) == {200}, (statuses, other_than_200)
    assert during > 0


def test_a_rebuild_after_a_code_change_reuses_the_dependency_layer(image, project):
    """Last: it changes the bake's source. The dependency layer comes from the build cache."""
    main = project / "src" / project.name.replace("-", "_") / "main.py"
    main.write_text(main.read_text() + f"\n# changed by the image test {RUN_ID}\n")
    kept = podman.dangling_images()
    seconds, output = podman.build(project, f"{TAG}-changed")
    try:
        steps = output.split("STEP ")
        dependencies = next(step for step in steps if "--no-install-project" in step)
        code = next(step for step in steps if step.split(": ", 1)[-1].startswith("COPY src"))
        assert "Using cache" in dependencies, dependencies[-500:]
        assert "Using cache" not in code, code[-500:]
        print(f"\nrebuilt after a code change in {seconds:.0f}s")
    finally:
        # This run's own layers go; the cached ones (the dependency layer) stay for the next.
        podman.podman("rmi", "-f", f"{TAG}-changed", check=False)
        podman.remove_images(podman.dangling_images() - kept)
