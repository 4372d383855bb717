"""Answers: names people type become a slug, bad answers stop generation with one line naming the
field, the questions come in the README's order, and re-baking keeps the user's .env."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter import prompt
from cookiecutter.generate import generate_context
from cookiecutter.main import cookiecutter

from .conftest import SERVICE_TEMPLATE, TEMPLATE, bake_ok

BAD_ANSWERS = [  # field, answer, the start of its one-line message
    ("project_name", 'The "Best" API', """project_name: 'The "Best" API' must not contain"""),
    ("author_name", "Jane \\ Doe", "author_name: 'Jane \\\\ Doe' must not contain"),
    ("project_slug", "My Service", "project_slug: 'My Service' must be lowercase"),
    ("project_slug", "9lives", "project_slug: '9lives' must be lowercase"),
    ("package_name", "my-service", "package_name: 'my-service' must be a lowercase"),
    ("package_name", "class", "package_name: 'class' must be a lowercase"),
    ("package_name", "redis", "package_name: 'redis' would shadow a library"),
    ("anonymous_limit", "10/fortnight", "anonymous_limit: '10/fortnight' must be one or more"),
    ("anonymous_limit", "0/minute", "anonymous_limit: '0/minute' must be one or more"),
    ("anonymous_limit", "10/0 minute", "anonymous_limit: '10/0 minute' must be one or more"),
    ("anonymous_limit", "", "anonymous_limit: '' must be one or more"),
    ("anonymous_limit", "60/minute;", "anonymous_limit: '60/minute;' must be one or more"),
    ("anonymous_limit", "10/9999999999 years",
     "anonymous_limit: '10/9999999999 years' is out of bounds: a window"),
    ("anonymous_limit", "99999999999999999999999/minute",
     "anonymous_limit: '99999999999999999999999/minute' is out of bounds"),
    ("anonymous_limit", "10/11 years", "anonymous_limit: '10/11 years' is out of bounds: a window"),
]  # fmt: skip


@pytest.mark.parametrize(
    "field,value,message", BAD_ANSWERS, ids=[f"{f}={v!r}" for f, v, _ in BAD_ANSWERS]
)
def test_bad_answer_fails_the_hook_naming_the_field(cookies, capfd, field, value, message):
    # A valid package name, so that a bad slug is not also reported through the derived name.
    answers = {"package_name": "orders_api", field: value}
    result = cookies.bake(extra_context=answers)
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "FailedHookException"
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in err
    assert result.project_path is None or not result.project_path.exists()


CHOICES = [
    ("ratelimit_strategy", "token-bucket"),
    ("redis_outage_policy", "fail-sometimes"),
    ("python_version", "3.9"),
    ("ci_provider", "jenkins"),
]


@pytest.mark.parametrize("field,value", CHOICES, ids=[f"{f}={v}" for f, v in CHOICES])
def test_answer_outside_the_choices_is_refused_naming_the_field(cookies, field, value):
    result = cookies.bake(extra_context={field: value})
    assert result.exit_code != 0
    assert field in str(result.exception) and value in str(result.exception)


BAD_PLANS = [
    ({"pro": "10/fortnight"}, "plans: pro: '10/fortnight' must be one or more"),
    ({"anonymous": "10/minute"}, "plans: 'anonymous' must be a lowercase name"),
    ({"Pro Plan": "10/minute"}, "plans: 'Pro Plan' must be a lowercase name"),
    ({"pro": "0/minute"}, "plans: pro: '0/minute' must be one or more"),
]


@pytest.mark.parametrize(
    "plans,message", BAD_PLANS, ids=[m.split(" must")[0] for _, m in BAD_PLANS]
)
def test_bad_plan_seed_fails_the_hook_naming_the_plan(cookies, capfd, plans, message):
    result = cookies.bake(extra_context={"plans": plans})
    assert type(result.exception).__name__ == "FailedHookException"
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0]


def _constants(path: Path, names: tuple[str, ...]) -> dict[str, object]:
    """The literal values assigned to `names` at the top level of a Python file (not run)."""
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in names
        ):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    return found


def test_the_hook_bounds_limits_as_the_service_does():
    # The hook cannot import the service's grammar: it keeps a copy of its bounds, held equal here.
    names = ("MAX_AMOUNT", "MAX_MULTIPLES", "MAX_WINDOW_TEXT")
    grammar = SERVICE_TEMPLATE / "src" / "{{cookiecutter.package_name}}" / "plans" / "grammar.py"
    service = _constants(grammar, names)
    assert set(service) == set(names)
    assert _constants(TEMPLATE / "hooks" / "pre_gen_project.py", names) == service


LIMITS_AT_THE_BOUNDS = ["1000000000/10 years", "5/311040000 seconds", "1/120 months"]


@pytest.mark.parametrize(
    "value", ["60/minute", "10 per second;1000/day", "5/2 hours, 100/day", *LIMITS_AT_THE_BOUNDS]
)
def test_good_limits_are_accepted(cookies, value):
    bake_ok(cookies, {"anonymous_limit": value})


def test_a_name_people_type_becomes_the_slug_and_the_package(cookies):
    project = bake_ok(cookies, {"project_name": "Über API v2"})
    assert project.name == "uber-api-v2"
    assert (project / "src" / "uber_api_v2" / "__init__.py").is_file()


BAD_SLUGS = [  # an explicit slug, the start of its one line; the package is derived from it
    ("9lives", "project_slug: '9lives' must be lowercase"),
    ('my"svc', "project_slug: 'my\"svc' must be lowercase"),
]


@pytest.mark.parametrize("slug,message", BAD_SLUGS, ids=[slug for slug, _ in BAD_SLUGS])
def test_the_cli_shows_a_bad_slug_as_one_line_on_stderr(tmp_path, slug, message):
    # cookiecutter's CLI would log its own traceback on stdout when a hook fails (cookiecutter
    # 2.7, hooks.run_hook_from_repo_dir); local_extensions.py drops it.
    config = tmp_path / "config.yaml"  # the replay of these answers is written here
    config.write_text(f"replay_dir: {tmp_path / 'replay'}\ncookiecutters_dir: {tmp_path}\n")
    output = tmp_path / "out"
    command = ["cookiecutter", "--no-input", "--config-file", str(config), "-o", str(output)]
    done = subprocess.run(
        [sys.executable, "-m", *command, str(TEMPLATE), f"project_slug={slug}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"ERROR: {message}")
    assert "Traceback" not in done.stdout, done.stdout
    assert len(done.stdout.splitlines()) <= 2, done.stdout  # cookiecutter's "Stopping ..."
    assert not output.exists() or list(output.iterdir()) == []


def readme_questions() -> list[str]:
    """The question names of the README's table, in its order."""
    lines = (TEMPLATE / "README.md").read_text().split("The questions", 1)[1].splitlines()
    rows = [line for line in lines[1:] if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]


def test_questions_are_asked_in_the_readme_order(monkeypatch):
    # Piped answers (`printf '...' | cookiecutter .`) land on the right questions only if the
    # README lists them in the order cookiecutter asks: dict questions (plans) after all others.
    asked = []

    def record(name, default, *args, **kwargs):
        asked.append(name)
        return default[0] if isinstance(default, list) else default

    for reader in ("read_user_variable", "read_user_choice", "read_user_dict", "read_user_yes_no"):
        monkeypatch.setattr(prompt, reader, record)
    prompt.prompt_for_config(generate_context(str(TEMPLATE / "cookiecutter.json")))
    assert asked == readme_questions()


def bake(output_dir, **kwargs) -> str:
    # A replay reads every answer from the replay file: cookiecutter refuses no_input with it.
    no_input = not kwargs.get("replay")
    return cookiecutter(str(TEMPLATE), no_input=no_input, output_dir=str(output_dir), **kwargs)


@pytest.mark.parametrize("rebake", ["replay", "new-answers"])
def test_baking_again_keeps_the_users_env_file(tmp_path, capfd, rebake):
    config = tmp_path / "config.yaml"  # replays are written here, not in the user's home
    config.write_text(f"replay_dir: {tmp_path / 'replay'}\ncookiecutters_dir: {tmp_path}\n")
    output = tmp_path / "out"
    project = bake(output, config_file=str(config))
    env_file = Path(project) / ".env"
    with env_file.open("a") as env:
        env.write("MY_OWN_SETTING=kept\n")
    before = env_file.read_bytes()
    capfd.readouterr()
    if rebake == "replay":
        again = bake(output, config_file=str(config), replay=True, overwrite_if_exists=True)
    else:
        again = bake(
            output,
            config_file=str(config),
            overwrite_if_exists=True,
            extra_context={"anonymous_limit": "10/second"},
        )
    assert again == project
    assert env_file.read_bytes() == before
    notes = [line for line in capfd.readouterr().err.splitlines() if ".env" in line]
    assert notes == ["kept the existing .env; compare it with .env.example for new keys"]


def test_baking_again_adds_a_log_client_key_to_an_env_file_without_one(tmp_path, capfd):
    # A .env from a template older than LOG_CLIENT_KEY: its lines stay, the new secret is added.
    project = Path(bake(tmp_path))
    env_file = project / ".env"
    old_lines = [line for line in env_file.read_text().splitlines() if "LOG_CLIENT_KEY" not in line]
    env_file.write_text("\n".join(old_lines))  # and no final newline
    capfd.readouterr()
    bake(tmp_path, overwrite_if_exists=True)
    lines = env_file.read_text().splitlines()
    assert lines[: len(old_lines)] == old_lines
    added = lines[len(old_lines) :]
    assert len(added) == 1 and re.fullmatch(r"LOG_CLIENT_KEY=[\w-]{40,}", added[0])
    assert "added a generated LOG_CLIENT_KEY to the existing .env" in capfd.readouterr().err
    bake(tmp_path, overwrite_if_exists=True)  # now present: left alone
    assert env_file.read_text().splitlines() == lines


def test_generation_ends_with_the_commands_to_run_next(tmp_path):
    generated = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", str(TEMPLATE), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stderr
    lines = [line.split("#")[0].strip() for line in generated.stdout.strip().splitlines()[-4:]]
    assert lines == ["cd rate-limited-service", "make dev", "make up", "make test"]
