"""Shared helpers for baking the template and checking what it produced."""

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
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


THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _patch_level(path: Path) -> tuple[int, ...]:
    """3.12.10 after 3.12.9: pyenv's version folders compared as numbers, not as text."""
    return tuple(int(part) if part.isdigit() else -1 for part in path.name.split("."))


def python_for(version: str) -> str:
    """An interpreter of Python `version` (a bake runs on the version it names): this one, else
    the newest pyenv `versions/<version>.*`, else `python<version>` on the PATH."""
    if version == THIS_PYTHON:
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    installed = sorted(pyenv.glob(f"{version}.*"), key=_patch_level, reverse=True)
    candidates = [path / "bin" / f"python{version}" for path in installed]
    found = next((str(c) for c in candidates if c.exists()), None) or shutil.which(
        f"python{version}"
    )
    if found is None:
        pytest.fail(f"no Python {version} interpreter: install python{version}", pytrace=False)
    return found


def build_service_venv(version: str, bake_dir: Path) -> Path:
    """A virtualenv of Python `version` with the baked service's dependencies.

    Kept across runs under ~/.cache, keyed by the lock and the interpreter, because installing
    them is the slow part; each baked project is then installed into it with --no-deps. pip
    installs constraints.txt (uv.lock's export, kept equal by test_bake), so the install works
    from pip's cache and this machine's package mirror, which uv does not read.
    """
    python = python_for(version)
    interpreter = run([python, "-c", "import sys; print(sys.version)"], cwd=bake_dir, timeout=60)
    digest = hashlib.sha256(
        (SERVICE_TEMPLATE / "uv.lock").read_bytes()
        + (SERVICE_TEMPLATE / "constraints.txt").read_bytes()
        + interpreter.stdout.strip().encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = cache / "ratelimit-template" / f"service-venv-{digest}"
    marker = path / ".complete"
    if marker.exists():
        return path
    created = run([python, "-m", "venv", "--clear", str(path)], cwd=bake_dir, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    # Install the dependencies of a default bake (names do not change dependencies).
    from cookiecutter.main import cookiecutter

    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(bake_dir)))
    pip = str(path / "bin" / "pip")
    install = [pip, "install", "-q", "-c", "constraints.txt", ".[dev,loadtest]"]
    done = run(install, cwd=project, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run([pip, "uninstall", "-q", "-y", project.name], cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    marker.touch()
    return path


@pytest.fixture(scope="session")
def service_venvs(tmp_path_factory) -> Callable[[str], Path]:
    """`service_venvs("3.12")`: the cached service virtualenv of that Python version."""
    built: dict[str, Path] = {}

    def venv_for(version: str) -> Path:
        if version not in built:
            built[version] = build_service_venv(version, tmp_path_factory.mktemp("venv-bake"))
        return built[version]

    return venv_for


@pytest.fixture(scope="session")
def service_venv(service_venvs) -> Path:
    """The service virtualenv of this interpreter's Python, shared by every baked suite."""
    return service_venvs(THIS_PYTHON)
