"""A bad setting stops the service before it does anything, with one line naming the variable,
its value (password masked) and what it accepts, and exit status 2; never a traceback. A valid
but unreachable Redis is said at start-up, and the service starts anyway."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

import {{ cookiecutter.package_name }} as package
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import free_port, wait_until

# Every test here starts the service's own process (a second of CPU each, more when busy).
pytestmark = pytest.mark.slow

PACKAGE = package.__name__
# A password that must never be printed.
PASSWORD = f"s3cret-{uuid.uuid4().hex}"

# Bad environments, and for each bad variable a fragment its line must show: the accepted
# forms, or the value.
BAD = {
    "database-url-garbage": {"DATABASE_URL": ("garbage://::", "postgresql://")},
    "strategy-leaky": {"RATELIMIT_STRATEGY": ("leaky", "'moving-window'")},
    "proxy-prefix-33": {"TRUSTED_PROXIES": ("10.0.0.0/33", "CIDR")},
    "redis-url-not-a-url": {"REDIS_URL": ("not a url", "redis+cluster://")},
    "sentinel-without-service": {
        "REDIS_URL": (f"redis+sentinel://:{PASSWORD}@127.0.0.1:26379", ":***@127.0.0.1:26379")
    },
    # The one limit grammar (plans/grammar.py): refused here, not by a traceback at start-up.
    "auth-failure-limit-zero-window": {"AUTH_FAILURE_LIMIT": ("10/0 minute", "above zero")},
    "auth-failure-limit-past-bounds": {
        "AUTH_FAILURE_LIMIT": ("10/9999999999 years", "out of bounds: a window is at most")
    },
    "database-port-and-strategy": {
        "DATABASE_URL": (f"postgresql://app:{PASSWORD}@db:port/app", "app:***@db:port"),
        "RATELIMIT_STRATEGY": ("leaky", "'gcra'"),
    },
}

ENTRY_POINTS = {
    "uvicorn": ["-m", "uvicorn", f"{PACKAGE}.main:app", "--port", "{port}", "--no-proxy-headers"],
    "cli": ["-m", PACKAGE, "plans", "list"],
}


def clean_environment(**env: str) -> dict[str, str]:
    """The test's environment without any of the service's settings, plus `env`."""
    names = {name.upper() for name in Settings.model_fields}
    return {**{k: v for k, v in os.environ.items() if k.upper() not in names}, **env}


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [arg.replace("{port}", str(free_port())) for arg in args]
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("case", BAD)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(case, entry_point, tmp_path):
    bad = BAD[case]
    env = clean_environment(**{name: value for name, (value, _) in bad.items()})
    # From an empty folder: no .env decides anything.
    done = run(ENTRY_POINTS[entry_point], tmp_path, env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == len(bad), done.stderr
    for name, (_, shown) in bad.items():
        (line,) = [line for line in lines if line.startswith(f"error: {name}=")]
        assert shown in line, line
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_dev_reports_every_bad_setting_it_reads(tmp_path):
    # `dev` ignores REDIS_URL and DATABASE_URL by design; the others still count.
    env = clean_environment(
        RATELIMIT_STRATEGY="leaky", TRUSTED_PROXIES="10.0.0.1,10.0.0.0/33", REDIS_URL="not a url"
    )
    done = run(["-m", PACKAGE, "dev", "--no-reload", "--port", "{port}"], tmp_path, env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert [line.partition("=")[0] for line in lines] == [
        "error: RATELIMIT_STRATEGY",
        "error: TRUSTED_PROXIES",
    ], done.stderr
    assert "'10.0.0.0/33'" in lines[1] and "'10.0.0.1'" not in lines[1].partition(": ")[2]


def test_an_unreachable_redis_is_one_warning_at_start_up(database_url, tmp_path):
    redis_port, port = free_port(), free_port()  # nothing listens on redis_port
    env = clean_environment(
        REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0", DATABASE_URL=database_url
    )
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"{PACKAGE}.main:app",
             "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers",
             "--log-level", "warning"],
            cwd=tmp_path, env=env, stderr=stderr,
        )  # fmt: skip

    def answers() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        # Start-up carries on: the outage policy covers requests until Redis answers.
        wait_until(answers, 30, "the service to start")
    finally:
        process.terminate()
        process.wait(timeout=10)
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    warnings = [
        r["message"] for r in records if r["level"] == "warning" and "Redis" in r["message"]
    ]
    assert len(warnings) == 1, text
    assert f"redis://:***@127.0.0.1:{redis_port}/0" in warnings[0]
    assert PASSWORD not in text


@pytest.mark.parametrize("limit", ["0/minute", "10/second;0/day"])
def test_a_failed_authentication_limit_of_zero_is_refused(limit):
    # Zero would refuse every failed authentication, a 429 for a first typo: never meant.
    with pytest.raises(ValueError, match="auth_failure_limit"):
        Settings(_env_file=None, auth_failure_limit=limit)
