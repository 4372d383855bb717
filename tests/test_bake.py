"""Every answer set bakes into a clean project: rendered, linted, and shaped by its answers."""

import json
import os
import re
import shutil
import stat
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from . import nginx
from .conftest import ANSWER_SETS, TEMPLATE, bake_ok, python_for, run


def tool(name: str) -> str:
    """A command installed beside this interpreter (the template's venv), else on the PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name) or name


UNRENDERED = re.compile(r"\{\{-?\s*cookiecutter\.|\{%-?|\{#")


@pytest.fixture(params=list(ANSWER_SETS), ids=list(ANSWER_SETS))
def baked(request, cookies) -> tuple[dict[str, str], Path]:
    answers = ANSWER_SETS[request.param]
    return answers, bake_ok(cookies, answers)


def test_no_template_syntax_is_left_unrendered(baked):
    _, project = baked
    leftovers = [
        f"{path.relative_to(project)}: {line.strip()}"
        for path in project.rglob("*")
        if path.is_file()
        for line in path.read_text(errors="replace").splitlines()
        if UNRENDERED.search(line)
    ]
    leftovers += [str(p) for p in project.rglob("*") if "{{" in p.name or "}}" in p.name]
    assert leftovers == []


def test_ruff_check_and_format_pass(baked):
    _, project = baked
    ruff = [sys.executable, "-m", "ruff"]
    lint = run([*ruff, "check", "--no-cache", "."], cwd=project)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run([*ruff, "format", "--no-cache", "--check", "."], cwd=project)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.xdist_group("mypy")  # one at a time: they share a cache
def test_mypy_strict_passes_on_its_own_python(baked, service_venvs):
    # In the service's own virtualenv (its dependencies' types), with its pyproject's config:
    # `strict = true` on src/, as its CI and pre-commit run it. The cache beside the venv keeps
    # what the dependencies' types cost (most of a cold run); the bake's own files are checked
    # anew, mypy comparing their contents.
    answers, project = baked
    venv = service_venvs(answers.get("python_version", "3.11"))
    cache = venv.parent / f"{venv.name}-mypy-cache"
    typed = run(
        [str(venv / "bin" / "python"), "-m", "mypy", "--cache-dir", str(cache)],
        cwd=project,
        timeout=600,
    )
    assert typed.returncode == 0, typed.stdout[-4000:] + typed.stderr[-2000:]
    assert "Success: no issues found" in typed.stdout


def test_answers_shape_the_project(baked):
    answers, project = baked
    python = answers.get("python_version", "3.11")
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={python}"
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{python.replace('.', '')}"
    package = answers.get("package_name") or project.name.replace("-", "_")
    assert (project / "src" / package / "main.py").is_file()

    env = (project / ".env").read_text()
    strategy = answers.get("ratelimit_strategy", "moving-window")
    policy = answers.get("redis_outage_policy", "fail-open")
    assert f"RATELIMIT_STRATEGY={strategy}\n" in env
    assert f"RATELIMIT_OUTAGE_POLICY={policy}\n" in env
    seeded = json.loads((project / "src" / package / "migrations" / "seed_plans.json").read_text())
    default_plans = json.loads((TEMPLATE / "cookiecutter.json").read_text())["plans"]
    # cookiecutter merges a dict given as extra context into the default dict.
    assert seeded == {
        "anonymous": answers.get("anonymous_limit", "60/minute"),
        **default_plans,
        **answers.get("plans", {}),
    }
    assert stat.S_IMODE((project / ".env").stat().st_mode) == 0o600

    workflow = project / ".github" / "workflows" / "ci.yml"
    assert workflow.exists() == (answers.get("ci_provider", "github") == "github")
    if workflow.exists():
        assert f'python-version: "{python}"' in workflow.read_text()


def test_no_placeholder_secrets(baked):
    _, project = baked
    for path in project.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace").lower()
            assert "changethis" not in text, path
            if path.name == ".env":
                assert "__generate_secret__" not in text
                for secret in ("POSTGRES_PASSWORD", "LOG_CLIENT_KEY"):
                    value = re.search(rf"^{secret}=(.+)$", text, re.M | re.I)
                    assert value and len(value[1]) >= 40, secret


def assert_valid(project: Path, schema: str, file: str) -> None:
    """check-jsonschema with one of its bundled schemas (no network needed)."""
    checked = run([tool("check-jsonschema"), "--builtin-schema", schema, file], cwd=project)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_file_matches_the_compose_spec(baked):
    _, project = baked
    assert_valid(project, "vendor.compose-spec", "compose.yaml")


def test_ci_workflow_matches_the_github_workflow_schema(baked):
    answers, project = baked
    if answers.get("ci_provider") == "none":
        assert not (project / ".github").exists()
        return
    assert_valid(project, "vendor.github-workflows", ".github/workflows/ci.yml")
    assert_valid(project, "custom.github-workflows-require-timeout", ".github/workflows/ci.yml")
    assert_valid(project, "vendor.dependabot", ".github/dependabot.yml")


def test_zizmor_finds_nothing_in_the_ci_setup(baked):
    answers, project = baked
    if answers.get("ci_provider") == "none":
        return
    # --offline: the audits that need no GitHub API, so the verdict does not depend on the network.
    audited = run([tool("zizmor"), "--offline", "--no-progress", ".github"], cwd=project)
    assert audited.returncode == 0, audited.stdout + audited.stderr


def test_ci_checks_the_lock_and_runs_the_compose_stack(baked):
    answers, project = baked
    if answers.get("ci_provider") == "none":
        return
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    assert workflow["permissions"] == {"contents": "read"}
    assert "${{ github.ref }}" in workflow["concurrency"]["group"]
    steps = {name: job["steps"] for name, job in workflow["jobs"].items()}
    commands = {name: "\n".join(s.get("run", "") for s in job) for name, job in steps.items()}
    assert "uv lock --check" in commands["test"] and "make constraints" in commands["test"]
    assert "uv sync --locked" in commands["test"]
    assert "pre-commit run --all-files" in commands["test"]  # the hooks themselves, not a copy
    assert re.search(r"pytest --cov\b", commands["test"])
    # CI's Redis and Postgres are compose.yaml's images, the ones Dependabot bumps.
    services = workflow["jobs"]["test"]["services"]
    assert {name: s["image"] for name, s in services.items()} == {
        name: f"${{{{ needs.images.outputs.{name} }}}}" for name in ("redis", "postgres")
    }
    assert "yq '.services.redis.image' compose.yaml" in commands["images"]
    dependabot = yaml.safe_load((project / ".github" / "dependabot.yml").read_text())
    assert {"uv", "docker", "docker-compose", "github-actions"} == {
        u["package-ecosystem"] for u in dependabot["updates"]
    }
    setup_uv = next(s for s in steps["test"] if s.get("uses", "").startswith("astral-sh/setup-uv@"))
    assert setup_uv["with"]["enable-cache"] is True
    assert setup_uv["with"]["cache-dependency-glob"] == "uv.lock"
    for step in (s for job in steps.values() for s in job):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False
    compose = commands["compose"]
    assert "docker compose build" in compose
    assert re.search(r"docker compose up .*--wait", compose)
    assert "/health/live" in compose and '"$code" = 429' in compose and "retry-after" in compose
    assert "--profile loadtest run --rm locust" in compose


def test_lock_is_current_for_the_answers(baked, tmp_path):
    """uv.lock fits this bake's pyproject.toml (its name and Python vary by answer set) and
    constraints.txt is its export: `make lock-check`, as CI runs it, offline and with no cache."""
    answers, project = baked
    checked = run(
        ["make", "lock-check"],
        cwd=project,
        PATH=f"{Path(tool('uv')).parent}:{os.environ['PATH']}",
        UV_OFFLINE="1",
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        UV_PYTHON=python_for(answers.get("python_version", "3.11")),
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_pre_commit_config_is_valid_and_runs_the_checks(baked):
    _, project = baked
    validated = run([tool("pre-commit"), "validate-config", ".pre-commit-config.yaml"], cwd=project)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}
    assert {
        "ruff-check",
        "ruff-format",
        "mypy",
        "hadolint",
        "check-compose-spec",
        "check-github-workflows",
        "uv-lock",
    } <= hooks


def test_pre_commit_runs_its_local_hooks_clean(baked, tmp_path):
    # The repos of the config that need no GitHub clone (this machine reaches the package
    # registries only): the constraints export and hadolint (its binary from PyPI); mypy is
    # skipped here, run by its own test above. The remote hooks (ruff, uv-lock, the schemas,
    # zizmor) run as the template's other tests run those tools.
    _, project = baked
    config = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    local = tmp_path / "local-hooks.yaml"
    local.write_text(
        yaml.safe_dump({"repos": [r for r in config["repos"] if r["repo"] == "local"]})
    )
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):
        assert run(command, cwd=project).returncode == 0
    ran = run(
        [tool("pre-commit"), "run", "--all-files", "-c", str(local)],
        cwd=project,
        PATH=f"{Path(tool('uv')).parent}:{os.environ['PATH']}",  # make constraints runs uv
        SKIP="mypy",
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert "constraints.txt follows uv.lock" in ran.stdout and "hadolint" in ran.stdout


def dockerfile_instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_image_installs_the_locked_dependencies_before_the_code(baked):
    """A code change must not reinstall every dependency: the dependency layer comes from the
    lock alone, before src/ is copied, with uv's cache mounted."""
    _, project = baked
    instructions = dockerfile_instructions(project / "Dockerfile")
    deps = next(
        i
        for i, line in enumerate(instructions)
        if line.startswith("RUN") and "uv sync --locked" in line and "--no-install-project" in line
    )
    code = next(i for i, line in enumerate(instructions) if re.match(r"COPY (\S+ )*src\b", line))
    assert deps < code
    assert "--mount=type=cache" in instructions[deps]
    assert not any(re.match(r"COPY (\S+ )*\.(/)? ", line) for line in instructions[:deps])
    assert any(
        line.startswith("RUN") and "uv sync --locked" in line for line in instructions[code:]
    )


def test_timeouts_are_ordered_from_nginx_to_the_app_to_the_orchestrator(cookies):
    """nginx closes idle upstream connections before uvicorn does (else a request sent as the
    app closes is a 502); uvicorn's graceful shutdown covers nginx's longest wait and ends
    before compose's SIGKILL; the app runs under an init. The image test runs them for real."""
    project = bake_ok(cookies, {})
    env = {}
    for line in dockerfile_instructions(project / "Dockerfile"):
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    template = (project / nginx.TEMPLATE).read_text()
    upstream = re.search(r"upstream app \{(.*?)\n\}", template, re.DOTALL)[1]
    nginx_idle = int(re.search(r"keepalive_timeout (\d+)s;", upstream)[1])
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", template)[1])
    assert int(env["UVICORN_TIMEOUT_KEEP_ALIVE"]) > nginx_idle
    graceful = int(env["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
    assert graceful >= read_timeout
    app = yaml.safe_load((project / "compose.yaml").read_text())["services"]["app"]
    assert app["init"] is True
    assert int(app["stop_grace_period"].removesuffix("s")) > graceful
    healthcheck = next(line for line in dockerfile_instructions(project / "Dockerfile")
                       if line.startswith("HEALTHCHECK"))  # fmt: skip
    assert "UVICORN_PORT" in healthcheck and "8000" not in healthcheck


def test_dockerfile_passes_hadolint(baked):
    _, project = baked
    linted = run([tool("hadolint"), "Dockerfile"], cwd=project)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_nginx_config_passes_nginx_t(baked, tmp_path):
    _, project = baked
    values = {
        "NGINX_PORT": "8080",
        "NGINX_UPSTREAM_SERVERS": "server 127.0.0.1:8001; server 127.0.0.1:8002;",
        "NGINX_RATE_PER_IP": "50r/s",
        "NGINX_BURST_PER_IP": "100",
        "NGINX_CONNECTIONS_PER_IP": "50",
    }
    config = nginx.write_config(tmp_path, project, values)
    rendered = (tmp_path / "conf.d" / "default.conf").read_text()
    assert not re.search(r"\$\{NGINX_[A-Z_]+\}", rendered)
    checked = nginx.check_config(config)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr


def make_commands(project: Path, target: str, **env: str) -> list[str]:
    """The commands `make <target>` would run in a fresh folder (no .venv yet), without running."""
    planned = run(["make", "-n", target], cwd=project, **env)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    return [line for line in planned.stdout.splitlines() if not line.startswith("echo ")]


@pytest.mark.parametrize("uv", ["with-uv", "pip-only"])
def test_make_dev_installs_only_what_serving_needs(baked, uv):
    _, project = baked
    path = f"{Path(tool('uv')).parent}:/usr/bin:/bin" if uv == "with-uv" else "/usr/bin:/bin"
    commands = make_commands(project, "dev", PATH=path)
    installs = [c for c in commands if "uv sync" in c or "pip install" in c]
    assert len(installs) == 1, commands
    assert "--all-extras" not in installs[0] and "[dev" not in installs[0], installs[0]
    assert commands[-1].startswith(f".venv/bin/{project.name} dev")


@pytest.mark.parametrize("target", ["test", "test-fast", "lint", "migrate"])
def test_make_targets_need_no_activated_virtualenv(baked, target):
    """Each tool runs from .venv/bin, installed first when missing: a fresh folder's `make
    lint` once died on `ruff: not found` and `hadolint: No such file or directory`."""
    _, project = baked
    commands = make_commands(project, target, PATH="/usr/bin:/bin")
    tools = [c.split()[0] for c in commands if not c.startswith(("test -x ", "touch "))]
    assert tools and all(t.startswith(".venv/bin/") for t in tools), commands
    if target == "lint":
        assert not any(c.startswith("hadolint") for c in commands)  # never a bare hadolint


def test_make_up_says_what_is_missing_without_docker_compose(baked):
    _, project = baked
    started = run(["make", "up", "COMPOSE=no-such-docker compose"], cwd=project)
    assert started.returncode != 0
    assert "make up needs Docker with the compose plugin" in started.stdout + started.stderr
    assert "unknown flag" not in started.stdout + started.stderr


def test_interpreters_are_found_by_version_not_by_one_machines_path(tmp_path, monkeypatch):
    for name in ("3.12.9", "3.12.10", "3.13.0"):
        binary = tmp_path / "versions" / name / "bin" / f"python{name[:4]}"
        binary.parent.mkdir(parents=True)
        binary.touch(mode=0o755)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    assert python_for("3.12") == str(tmp_path / "versions/3.12.10/bin/python3.12")  # the newest
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path / "versions/3.13.0/bin"))
    assert python_for("3.13") == str(tmp_path / "versions/3.13.0/bin/python3.13")
