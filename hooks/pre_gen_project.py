"""Reject bad cookiecutter answers before anything is generated.

Each check prints one line naming the field and the accepted form, then exits non-zero, so
cookiecutter stops and no half-rendered project is left behind.
"""

import keyword
import re
import sys

ANSWERS = {
    "project_slug": "{{ cookiecutter.project_slug }}",
    "package_name": "{{ cookiecutter.package_name }}",
    "python_version": "{{ cookiecutter.python_version }}",
    "ratelimit_strategy": "{{ cookiecutter.ratelimit_strategy }}",
    "redis_outage_policy": "{{ cookiecutter.redis_outage_policy }}",
    "anonymous_limit": "{{ cookiecutter.anonymous_limit }}",
    "ci_provider": "{{ cookiecutter.ci_provider }}",
}

SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Import names the generated service depends on: a package with one of these names would shadow it.
SHADOWED_NAMES = {
    "alembic", "app", "asyncpg", "fastapi", "httpx", "limits", "pydantic", "pydantic_settings",
    "pytest", "redis", "slowapi", "sqlalchemy", "starlette", "test", "tests", "uvicorn",
}  # fmt: skip
# The grammar of the `limits` library (limits.util.parse_many), restated here because the hook
# runs in cookiecutter's own environment where `limits` may not be installed.
LIMIT_ITEM_RE = re.compile(
    r"^\s*(?P<amount>[0-9]+)\s*(?:/|\s+per\s+)\s*(?P<multiple>[0-9]+)?\s*"
    r"(?P<unit>second|minute|hour|day|month|year)s?\s*$"
)
CHOICES = {
    "python_version": ("3.11", "3.12", "3.13"),
    "ratelimit_strategy": ("moving-window", "sliding-window-counter", "fixed-window"),
    "redis_outage_policy": ("fail-open", "fail-closed"),
    "ci_provider": ("github", "none"),
}


def check_slug(value: str) -> str | None:
    if not SLUG_RE.match(value):
        return "must be lowercase letters and digits in words joined by '-', starting with a letter (e.g. orders-api)"
    return None


def check_package_name(value: str) -> str | None:
    if not PACKAGE_RE.match(value) or keyword.iskeyword(value):
        return "must be a lowercase Python identifier that is not a keyword (e.g. orders_api)"
    if value in SHADOWED_NAMES:
        return "would shadow a library the service imports; choose another name"
    return None


def check_limit(value: str) -> str | None:
    form = "must be one or more limits like '60/minute' or '10 per second;1000/day', each above zero"
    parts = [part for part in re.split(r"[,;|]", value)]
    if not value.strip() or any(not part.strip() for part in parts):
        return form
    for part in parts:
        match = LIMIT_ITEM_RE.match(part)
        if match is None:
            return form
        if int(match["amount"]) == 0 or match["multiple"] is not None and int(match["multiple"]) == 0:
            return form
    return None


def validate(answers: dict[str, str]) -> list[str]:
    errors = []
    for field, check in (
        ("project_slug", check_slug),
        ("package_name", check_package_name),
        ("anonymous_limit", check_limit),
    ):
        problem = check(answers[field])
        if problem:
            errors.append(f"{field}: {answers[field]!r} {problem}")
    for field, accepted in CHOICES.items():
        if answers[field] not in accepted:
            errors.append(f"{field}: {answers[field]!r} is not one of {', '.join(accepted)}")
    return errors


def main() -> None:
    errors = validate(ANSWERS)
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
