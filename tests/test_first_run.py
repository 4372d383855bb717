"""Every answer set starts the way its README says, and answers a 200, a 429 and health probes.

A green bake that crashes at start-up is the bug these tests exist for: a `gcra` bake once died
at import because slowapi read `RATELIMIT_STRATEGY=gcra` from the project's own `.env`. So each
service runs on its own Python, from its own folder, with its own `.env`, through its console
script and the README's uvicorn line; the test gives only the addresses of Redis and of a
database of its own, and its own key prefix.
"""

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import ANSWER_SETS, SERVICE_TEMPLATE, bake_ok, project_venv
from .stack import ADMIN_DATABASE_URL, REDIS_URL, forget, free_port, psql

ROUTE = "/v1/items"


def scrubbed_env(**settings: str) -> dict[str, str]:
    """This process's environment without any setting of the service's storage or limits, plus
    `settings`: the baked `.env` decides everything else."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in ("REDIS_URL", "DATABASE_URL") and not name.startswith("RATELIMIT_")
    }
    return {**inherited, **settings}


def install(service_venv: Path, project: Path) -> Path:
    """`project` installed in a venv of its own beside its folder, as its README's
    `pip install -e .` would; the venv's path."""
    return project_venv(service_venv, project, project.parent / "venv")


def console(venv: Path, project: Path, env: dict[str, str], *args: str) -> str:
    """The project's console script (`<slug> ...`), run from its folder; its stdout."""
    done = subprocess.run(
        [str(venv / "bin" / project.name), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{project.name} {' '.join(args)}: {done.stderr}"
    return done.stdout


def readme_uvicorn(project: Path, venv: Path, port: int) -> list[str]:
    """The README's `uvicorn ...` command line, run from the venv, on `port` instead of its own."""
    lines = [
        line.partition("#")[0].strip()
        for line in (project / "README.md").read_text().splitlines()
        if line.startswith("uvicorn ")
    ]
    assert lines, "the README shows no `uvicorn ...` command line"
    command = shlex.split(lines[0])
    assert "--port" in command, lines[0]
    command[command.index("--port") + 1] = str(port)
    return [str(venv / "bin" / "uvicorn"), *command[1:]]


@contextmanager
def serving(command: list[str], project: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """`command` (a server on the `--port` it names) running from the project's folder until the
    block ends; yields its base URL. Everything it starts is killed afterwards."""
    port = command[command.index("--port") + 1]
    base_url = f"http://127.0.0.1:{port}"
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: reloaders and workers die with it
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"{shlex.join(command)} exited with {process.returncode}:\n"
                    + log.read_text()[-4000:],
                    pytrace=False,
                )
            try:
                if httpx.get(f"{base_url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer within 60 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.05)
        yield base_url
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def names_plan(policy: str, plan: str) -> bool:
    """Whether a `RateLimit-Policy` header describes `plan` (one item per window: "pro-60s")."""
    return re.match(rf'"{re.escape(plan)}(-\d+s)?";', policy) is not None


def paid_plan(answers: dict) -> str:
    """A plan the answer set seeds for API keys: its own first one, else the default `pro`."""
    return next(iter(answers.get("plans", {})), "pro")


@contextmanager
def own_database_and_prefix() -> Iterator[tuple[str, str]]:
    """A new, empty Postgres database and a Redis key prefix, both gone afterwards."""
    database = f"first_run_{uuid.uuid4().hex[:12]}"
    prefix = f"first-run-{uuid.uuid4().hex[:12]}"
    psql(f'CREATE DATABASE "{database}"')
    try:
        yield f"{ADMIN_DATABASE_URL.rpartition('/')[0]}/{database}", prefix
    finally:
        forget(database, prefix)


@pytest.mark.parametrize("answer_set", list(ANSWER_SETS))
def test_each_answer_set_starts_as_its_readme_says(cookies, service_venvs, tmp_path, answer_set):
    answers = ANSWER_SETS[answer_set]
    project = bake_ok(cookies, answers)
    venv = install(service_venvs(answers.get("python_version", "3.11")), project)
    plan = paid_plan(answers)

    with own_database_and_prefix() as (database_url, prefix):
        env = scrubbed_env(
            REDIS_URL=REDIS_URL, DATABASE_URL=database_url, RATELIMIT_KEY_PREFIX=prefix
        )
        console(venv, project, env, "db", "upgrade")
        listed = console(venv, project, env, "plans", "list")
        console(venv, project, env, "plans", "update", "anonymous", "--limits", "3/hour")
        console(venv, project, env, "accounts", "create", "test", "--plan", plan)
        key = console(venv, project, env, "keys", "create", "--account", "test")
        key = key.strip().splitlines()[-1]

        command = readme_uvicorn(project, venv, free_port())
        with serving(command, project, env, tmp_path / "uvicorn.log") as base_url:
            anonymous = [httpx.get(f"{base_url}{ROUTE}", timeout=10) for _ in range(4)]
            keyed = httpx.get(f"{base_url}{ROUTE}", headers={"X-API-Key": key}, timeout=10)
            live = httpx.get(f"{base_url}/health/live", timeout=10)
            ready = httpx.get(f"{base_url}/health/ready", timeout=10)

    # Priorities follow the order the plans were given (shedding spares the later ones first),
    # whatever their names: anonymous 0, then the defaults' order, then the answers' own plans.
    priorities = {
        line.split("\t")[0]: int(re.search(r"\tpriority (\d+)", line)[1])  # type: ignore[index]
        for line in listed.splitlines()
    }
    defaults = json.loads((SERVICE_TEMPLATE.parent / "cookiecutter.json").read_text())["plans"]
    given = ["anonymous", *{**defaults, **answers.get("plans", {})}]
    assert priorities == {name: n for n, name in enumerate(given)}, listed

    assert [r.status_code for r in anonymous] == [200, 200, 200, 429], anonymous[-1].text
    assert names_plan(anonymous[0].headers["ratelimit-policy"], "anonymous")
    refused = anonymous[3]
    assert refused.headers["retry-after"].isdigit() and int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["status"] == 429
    assert keyed.status_code == 200, keyed.text
    assert names_plan(keyed.headers["ratelimit-policy"], plan), keyed.headers["ratelimit-policy"]
    assert (live.status_code, ready.status_code) == (200, 200), ready.text


@dataclass
class DevRun:
    """What one `<slug> dev` printed and answered."""

    reused_keys: bool  # it said it reused the keys of the run before
    key: str  # the key in the printed request with a key
    answers: dict[str, str]  # output of each printed request: "plain", "loop", "key"


def dev_run(venv: Path, project: Path, log: Path) -> DevRun:
    """`<slug> dev` from the project's folder with no Redis or database in the environment;
    the requests it printed are run as printed, with bash and curl."""
    command = [str(venv / "bin" / project.name), "dev", "--port", str(free_port()), "--no-reload"]
    with serving(command, project, scrubbed_env(), log) as base_url:
        printed = [
            line.strip()
            for line in log.read_text().splitlines()
            if line.startswith(("  curl ", "  for "))
        ]
        assert len(printed) == 3 and all(base_url in line for line in printed), log.read_text()
        answers, key = {}, ""
        for line in printed:
            done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
            if match := re.search(r"Bearer (sk_\S+)'", line):
                answers["key"], key = done.stdout, match[1]
            else:
                answers["loop" if "seq 1" in line else "plain"] = done.stdout
    assert set(answers) == {"plain", "loop", "key"}, printed
    reused = re.search(r"^Demo keys.*\((new, kept|reused from) ", log.read_text(), re.M)
    assert reused, log.read_text()
    return DevRun(reused[1] == "reused from", key, answers)


def test_dev_command_serves_without_redis_or_postgres_and_reuses_its_key(
    cookies, service_venv, tmp_path
):
    project = bake_ok(cookies, ANSWER_SETS["defaults"])
    venv = install(service_venv, project)

    first = dev_run(venv, project, tmp_path / "first.log")
    keys_file = project / ".dev-keys.json"
    written = keys_file.stat().st_mtime_ns
    second = dev_run(venv, project, tmp_path / "second.log")

    for done in (first, second):
        plain, loop, keyed = done.answers["plain"], done.answers["loop"], done.answers["key"]
        assert plain.startswith("HTTP/1.1 200"), plain
        assert re.search(r'^ratelimit-policy: "anonymous', plain, re.M | re.I), plain
        codes = loop.split()
        assert codes[0] == "200" and codes[-1] == "429" and set(codes) == {"200", "429"}, codes
        assert keyed.startswith("HTTP/1.1 200"), keyed
        assert re.search(r'^ratelimit-policy: "pro', keyed, re.M | re.I), keyed
        assert re.search(r"^x-ratelimit-limit: \d+", keyed, re.M | re.I), keyed

    assert (first.reused_keys, second.reused_keys) == (False, True)
    assert second.key == first.key, "the second run reuses the demo key"
    # Nothing to create the second time: the keys file is read, not written again. (Not timed:
    # both runs take well under a second, and a busy machine makes any timing comparison lie.)
    assert keys_file.stat().st_mtime_ns == written, "the second run rewrote .dev-keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert json.loads(keys_file.read_text())["pro"] == first.key
    assert list(project.glob("*.sqlite3")), "plans and keys live in an SQLite file in the folder"

    # A revoked demo key is replaced by the next run.
    console(venv, project, scrubbed_env(), "keys", "revoke", first.key.split("_")[1])
    third = dev_run(venv, project, tmp_path / "third.log")
    assert not third.reused_keys and third.key != first.key
    assert third.answers["key"].startswith("HTTP/1.1 200"), third.answers["key"]
