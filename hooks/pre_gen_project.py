"""Reject bad cookiecutter answers before anything is generated.

Each check prints one line naming the field and the accepted form, then exits non-zero, so
cookiecutter stops and no half-rendered project is left behind.
"""

import json
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
# A JSON object (name -> limits); tojson escapes quotes, so the raw string cannot be cut short.
PLANS = json.loads(r"""{{ cookiecutter.plans | tojson }}""")

SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
PLAN_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
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
    "ratelimit_strategy": ("moving-window", "sliding-window-counter", "fixed-window", "gcra"),
    "redis_outage_policy": ("fail-open", "fail-closed"),
    "ci_provider": ("github", "none"),
}


def check_slug(value: str) -> str | None:
    if not SLUG_RE.match(value):
        return (
            "must be lowercase letters and digits in words joined by '-', "
            "starting with a letter (e.g. orders-api)"
        )
    return None


def check_package_name(value: str) -> str | None:
    if not PACKAGE_RE.match(value) or keyword.iskeyword(value):
        return "must be a lowercase Python identifier that is not a keyword (e.g. orders_api)"
    if value in SHADOWED_NAMES:
        return "would shadow a library the service imports; choose another name"
    return None


def check_limit(value: str) -> str | None:
    form = "must be one or more limits like '60/minute' or '10 per second;1000/day', above zero"
    parts = re.split(r"[,;|]", value)
    if not value.strip() or any(not part.strip() for part in parts):
        return form
    for part in parts:
        match = LIMIT_ITEM_RE.match(part)
        if match is None:
            return form
        multiple = match["multiple"]
        if int(match["amount"]) == 0 or (multiple is not None and int(multiple) == 0):
            return form
    return None


def check_plans(plans: object) -> list[str]:
    if not isinstance(plans, dict):
        return ['plans: must be a JSON object of plan name -> limits, e.g. {"pro": "1000/minute"}']
    errors = []
    for name, limits in plans.items():
        if name == "anonymous" or not PLAN_NAME_RE.match(name):
            errors.append(
                f"plans: {name!r} must be a lowercase name (letters, digits, '-', '_') other "
                "than 'anonymous' (set anonymous_limit for that one)"
            )
        elif not isinstance(limits, str) or check_limit(limits):
            errors.append(f"plans: {name}: {limits!r} {check_limit(str(limits))}")
    return errors


def validate(answers: dict[str, str], plans: object) -> list[str]:
    errors = check_plans(plans)
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
    errors = validate(ANSWERS, PLANS)
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
