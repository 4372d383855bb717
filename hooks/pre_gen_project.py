"""Reject bad cookiecutter answers before anything is generated.

Each check prints one line naming the field and the accepted form, then exits non-zero, so
cookiecutter stops and no half-rendered project is left behind.
"""

import json
import keyword
import re
import sys

# JSON rendered by tojson, which escapes quotes: an answer with a quote in it cannot cut the raw
# string short, so it gets its one-line error instead of a SyntaxError in this script.
ANSWERS: dict[str, str] = json.loads(
    r"""{{ {
        "project_name": cookiecutter.project_name,
        "description": cookiecutter.description,
        "author_name": cookiecutter.author_name,
        "author_email": cookiecutter.author_email,
        "project_slug": cookiecutter.project_slug,
        "package_name": cookiecutter.package_name,
        "python_version": cookiecutter.python_version,
        "ratelimit_strategy": cookiecutter.ratelimit_strategy,
        "redis_outage_policy": cookiecutter.redis_outage_policy,
        "anonymous_limit": cookiecutter.anonymous_limit,
        "ci_provider": cookiecutter.ci_provider,
    } | tojson }}"""
)
# A JSON object (name -> limits).
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
# The bounds of the service's limit grammar, copied from its plans/grammar.py (which this hook
# cannot import); a template test keeps the two equal.
MAX_AMOUNT = 1_000_000_000
MAX_MULTIPLES = {
    "second": 311_040_000,
    "minute": 5_184_000,
    "hour": 86_400,
    "day": 3_600,
    "month": 120,
    "year": 10,
}
MAX_WINDOW_TEXT = "10 years"
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


# Free text written into Python and TOML string literals of the service as it is.
TEXT_FIELDS = ("project_name", "description", "author_name", "author_email")


def check_text(value: str) -> str | None:
    if any(char in value for char in '"\\\n\r'):
        return "must not contain double quotes, backslashes or line breaks"
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
        amount, multiple = int(match["amount"]), int(match["multiple"] or 1)
        if amount == 0 or multiple == 0:
            return form
        if amount > MAX_AMOUNT:
            return f"is out of bounds: a limit allows at most {MAX_AMOUNT} hits per window"
        if multiple > MAX_MULTIPLES[match["unit"]]:
            return f"is out of bounds: a window is at most {MAX_WINDOW_TEXT}"
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
    slug, package = answers["project_slug"], answers["package_name"]
    # A package name derived from a bad slug is fixed by fixing the slug: one line, not two.
    derived_from_bad_slug = package == slug.replace("-", "_") and check_slug(slug) is not None
    for field, check in (
        *((field, check_text) for field in TEXT_FIELDS),
        ("project_slug", check_slug),
        ("package_name", check_package_name),
        ("anonymous_limit", check_limit),
    ):
        if field == "package_name" and derived_from_bad_slug:
            continue
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
