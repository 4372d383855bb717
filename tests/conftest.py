"""Shared helpers for baking the template and checking what it produced."""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[1]
SERVICE_TEMPLATE = TEMPLATE / "{{cookiecutter.project_slug}}"

# Answer sets baked by the tests, by readable id. Python 3.11 sets can also run their suite here.
ANSWER_SETS: dict[str, dict[str, str]] = {
    "defaults": {},
    "fail-closed-fixed-window": {
        "project_name": "Orders API",
        "ratelimit_strategy": "fixed-window",
        "redis_outage_policy": "fail-closed",
        "anonymous_limit": "30 per minute;1000/day",
    },
    "sliding-window-py312-no-ci": {
        "project_slug": "billing-gateway",
        "package_name": "billing",
        "python_version": "3.12",
        "ratelimit_strategy": "sliding-window-counter",
        "ci_provider": "none",
    },
    "py313-gcra-custom-plans": {
        "project_name": "Search",
        "python_version": "3.13",
        "ratelimit_strategy": "gcra",
        "anonymous_limit": "5/second",
        "plans": {"basic": "20/minute", "premium": "200/minute;10000/day"},
    },
}


def bake_ok(cookies, answers: dict[str, str]) -> Path:
    result = cookies.bake(extra_context=answers)
    assert result.exit_code == 0, result.exception
    assert result.exception is None
    return Path(result.project_path)


def run(
    command: list[str], cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="session")
def service_venv(tmp_path_factory) -> Path:
    """One virtualenv with the baked service's dependencies, shared by every baked suite.

    Kept across runs under ~/.cache, keyed by the dependency files, because installing them is
    the slow part; each baked project is then installed into it with --no-deps.
    """
    digest = hashlib.sha256(
        (SERVICE_TEMPLATE / "pyproject.toml").read_bytes()
        + (SERVICE_TEMPLATE / "constraints.txt").read_bytes()
        + sys.version.encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = cache / "ratelimit-template" / f"service-venv-{digest}"
    marker = path / ".complete"
    if not marker.exists():
        venv.create(path, with_pip=True, clear=True)
        # Install the dependencies of a default bake (names do not change dependencies).
        from cookiecutter.main import cookiecutter

        bake_dir = tmp_path_factory.mktemp("venv-bake")
        project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(bake_dir)))
        done = run(
            [
                str(path / "bin" / "pip"),
                "install",
                "-q",
                "-c",
                "constraints.txt",
                ".[dev,loadtest]",
            ],
            cwd=project,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        done = run([str(path / "bin" / "pip"), "uninstall", "-q", "-y", project.name], cwd=project)
        assert done.returncode == 0, done.stdout + done.stderr
        marker.touch()
    return path
