"""Finish a generated service: drop the parts the answers turned off, write a local .env.

Short verb-named steps called from main(), in the manner of cookiecutter-django's hooks.
"""

import secrets
import shutil
import sys
from pathlib import Path

PROJECT = Path.cwd()
CI_PROVIDER = "{{ cookiecutter.ci_provider }}"
# Placeholder used in .env.example for values that must be secret; never shipped as a default.
SECRET_PLACEHOLDER = "__generate_secret__"


def remove_ci_workflow() -> None:
    shutil.rmtree(PROJECT / ".github")


def write_env_file() -> None:
    """Copy .env.example to .env with every secret placeholder replaced by a fresh random value.

    An existing .env is the user's (re-baking with -f or --replay lands here): its secrets already
    live in a database volume and it may hold lines of their own, so it is never rewritten; a
    secret it lacks (one a newer template added, such as LOG_CLIENT_KEY) is appended to it.
    """
    env_file = PROJECT / ".env"
    example = [fill_secrets(line) for line in (PROJECT / ".env.example").read_text().splitlines()]
    if env_file.exists():
        append_missing_secrets(env_file, example)
        print("kept the existing .env; compare it with .env.example for new keys", file=sys.stderr)
        return
    env_file.write_text("\n".join(example) + "\n")
    env_file.chmod(0o600)


def fill_secrets(line: str) -> str:
    while SECRET_PLACEHOLDER in line:
        line = line.replace(SECRET_PLACEHOLDER, secrets.token_urlsafe(32), 1)
    return line


def append_missing_secrets(env_file: Path, example: list[str]) -> None:
    """Add to an existing .env each generated secret whose variable it does not set."""
    raw_example = (PROJECT / ".env.example").read_text().splitlines()
    present = {line.split("=", 1)[0].strip() for line in env_file.read_text().splitlines()}
    missing = [
        filled
        for raw, filled in zip(raw_example, example, strict=True)
        if SECRET_PLACEHOLDER in raw and raw.split("=", 1)[0].strip() not in present
    ]
    if missing:
        text = env_file.read_text()
        separator = "" if text.endswith("\n") or not text else "\n"
        with env_file.open("a") as env:
            env.write(separator + "".join(f"{line}\n" for line in missing))
        names = ", ".join(line.split("=", 1)[0] for line in missing)
        print(f"added a generated {names} to the existing .env", file=sys.stderr)


def print_next_steps() -> None:
    """The commands to run next, so nobody has to open the README to take the first step."""
    print(
        f"\nGenerated {PROJECT.name}/. Next:\n"
        f"  cd {PROJECT.name}\n"
        "  make dev     # serve on :8000 now, no Docker (in-memory limits, SQLite, demo keys)\n"
        "  make up      # or the whole stack with Docker: nginx on :8080, Redis, Postgres\n"
        "  make test    # its tests, against a local Redis and Postgres (see README.md)"
    )


def main() -> None:
    if CI_PROVIDER == "none":
        remove_ci_workflow()
    write_env_file()
    print_next_steps()


if __name__ == "__main__":
    main()
