"""Every answer set bakes into a clean project: rendered, linted, and shaped by its answers."""

import json
import re
import shutil
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from . import nginx
from .conftest import ANSWER_SETS, TEMPLATE, bake_ok, run


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
                password = re.search(r"^POSTGRES_PASSWORD=(.+)$", text, re.M | re.I)
                assert password and len(password[1]) >= 40


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
