"""Shared helpers for baking the template and checking what it produced."""

import fcntl
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
    # Not this run's pytest-xdist worker id: a baked suite started from a worker would name its
    # databases and keys after it, and its own workers set their own.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**inherited, **env},
    )


# pytest-xdist (--dist loadgroup) hands work out in collection order, a group as one unit: the
# longest first, so that no worker starts a ten-minute test while the other runs out of work.
LONGEST_FIRST = (
    "test_baked_suite.py",
    "test_e2e.py",
    "test_image.py",
    "::test_mypy_strict",
    "test_first_run.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        found = (i for i, part in enumerate(LONGEST_FIRST) if part in item.nodeid)
        return next(found, len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order


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
    them is the slow part; it never holds a baked project (`project_venv` installs each one in a
    venv of its own on top). pip
    installs constraints.txt (uv.lock's export, kept equal by test_bake), so the install works
    from pip's cache and this machine's package mirror, which uv does not read.
    """
    python = python_for(version)
    interpreter = run([python, "-c", "import sys; print(sys.version)"], cwd=bake_dir, timeout=60)
    digest = hashlib.sha256(
        (SERVICE_TEMPLATE / "uv.lock").read_bytes()
        + (SERVICE_TEMPLATE / "constraints.txt").read_bytes()
        + interpreter.stdout.strip().encode()
        + b"read-only"  # venvs of older runs had baked projects installed in them
    ).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = cache / "ratelimit-template" / f"service-venv-{digest}"
    path.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: pytest-xdist workers (and other runs on this machine) share the cache.
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(path, python, bake_dir)


def _build_locked(path: Path, python: str, bake_dir: Path) -> Path:
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


def project_venv(service_venv: Path, project: Path, dest: Path) -> Path:
    """A virtualenv of its own at `dest` with `project` installed (editable), on top of the
    cached `service_venv`'s dependencies.

    The cached venv itself stays read-only: tests running at the same time (pytest-xdist workers,
    another run on this machine) each install their own bake of a same-named package, and an
    editable install in a shared venv would point one test at another test's folder, which
    pytest-cookies deletes. A `.pth` file adds the cached site-packages; its console scripts are
    copied with this venv's interpreter in their first line.
    """
    base_python = service_venv / "bin" / "python"
    made = run([str(base_python), "-m", "venv", "--without-pip", str(dest)], cwd=project)
    assert made.returncode == 0, made.stdout + made.stderr
    (base_site,) = (service_venv / "lib").glob("python3.*/site-packages")
    (site,) = (dest / "lib").glob("python3.*/site-packages")
    adds = f"import site; site.addsitedir({str(base_site)!r})\n"
    (site / "_service_dependencies.pth").write_text(adds)
    shebang = f"#!{service_venv / 'bin' / 'python'}".encode()  # python3.X after it
    for script in (service_venv / "bin").iterdir():
        target = dest / "bin" / script.name
        if target.exists() or not script.is_file():
            continue
        first, newline, rest = script.read_bytes().partition(b"\n")
        if first.startswith(shebang) and newline:
            target.write_bytes(f"#!{dest / 'bin' / 'python'}\n".encode() + rest)
            target.chmod(0o755)
    python = str(dest / "bin" / "python")
    done = run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", "."], cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    return dest
