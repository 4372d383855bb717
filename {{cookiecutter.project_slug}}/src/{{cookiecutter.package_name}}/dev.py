"""`{{ cookiecutter.project_slug }} dev`: the service on this machine, with nothing installed.

No Docker, no Redis, no Postgres: whatever `.env` or the environment say, limits are counted in
memory (per process) and plans and keys live in an SQLite file in the working directory. The
command migrates that file, makes one demo key per seeded plan (kept in `.dev-keys.json` and
reused by the next run), prints three requests to try, and starts uvicorn with reload.
"""

import argparse
import asyncio
import json
import os
from importlib.resources import files
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from .database import create_engine, database_url, is_embedded, session_factory
from .plans import repository
from .plans.keys import digest_matches, parse_key
from .plans.plan import ANONYMOUS
from .settings import Settings, get_settings, settings_or_exit

# The demo keys, by plan. Secrets, though only for a local database: readable by the owner only.
KEYS_FILE = Path(".dev-keys.json")
DEMO_OWNER = "dev demo"
# The route the printed requests call.
ROUTE = "/v1/items"
# Shown as the key to try first when it is seeded: the usual paid plan.
PREFERRED_PLAN = "pro"
SHOW_HEADERS = "grep -i -E '^(HTTP|ratelimit|x-ratelimit|retry-after)'"
# curl -w: the status code. Not in an f-string, whose doubled braces cookiecutter would render.
WRITE_STATUS = "'%{http_code} '"


def add_parser(groups: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = groups.add_parser(
        "dev",
        help="run locally without Docker, Redis or Postgres (in-memory limits, SQLite)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (8000)")
    parser.add_argument(
        "--no-reload", dest="reload", action="store_false", help="do not restart on code changes"
    )
    parser.set_defaults(handler=None)


def embedded_settings() -> Settings:
    """The settings with REDIS_URL and DATABASE_URL emptied: the embedded default.

    Set in the environment, which outranks `.env` and is inherited by uvicorn's worker process.
    """
    os.environ["REDIS_URL"] = ""
    os.environ["DATABASE_URL"] = ""
    get_settings.cache_clear()
    settings = settings_or_exit()
    assert is_embedded(settings) and not settings.redis_url
    return settings


def seeded_plans() -> list[str]:
    """The plans the first migrations seed (cookiecutter's answers), anonymous excepted."""
    seeds = json.loads((files(__package__) / "migrations" / "seed_plans.json").read_text())
    return [name for name in seeds if name != ANONYMOUS]


def read_keys() -> dict[str, str]:
    try:
        saved = json.loads(KEYS_FILE.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):
        return {}
    return {plan: key for plan, key in saved.items() if isinstance(key, str)}


def write_keys(keys: dict[str, str]) -> None:
    fd = os.open(KEYS_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(keys, file, indent=2)
        file.write("\n")
    KEYS_FILE.chmod(0o600)  # a file left by an older run keeps its mode through O_CREAT


async def is_live(session: AsyncSession, key: str, plan: str) -> bool:
    """Whether `key` is still a valid key of `plan` in this database (not revoked, not lost)."""
    parsed = parse_key(key)
    if parsed is None:
        return False
    row = await repository.find_key(session, parsed.public_id)
    return (
        row is not None
        and row.revoked_at is None
        and digest_matches(parsed, row.secret_hash)
        and row.account.plan.name == plan
    )


async def demo_keys(settings: Settings) -> tuple[dict[str, str], bool, int]:
    """One live key per active seeded plan (reused from KEYS_FILE when still valid), whether any
    is new, and how many anonymous requests to ROUTE reach a 429."""
    saved = read_keys()
    keys: dict[str, str] = {}
    engine = create_engine(settings)
    try:
        async with session_factory(engine)() as session, session.begin():
            for plan in seeded_plans():
                row = await repository.find_plan(session, plan)
                if row is None or not row.is_active:
                    continue
                key = saved.get(plan)
                if key is None or not await is_live(session, key, plan):
                    # One demo account per plan, kept across runs: its keys share its budget.
                    account = f"{DEMO_OWNER} ({plan})"
                    found = await repository.find_account(session, account)
                    if found is None:
                        await repository.create_account(session, account, plan)
                    elif found.plan.name != plan:  # moved by hand: put it back
                        await repository.update_account(session, account, plan_name=plan)
                    key, _ = await repository.create_key(session, account)
                keys[plan] = key
            anonymous = await repository.get_plan(session, ANONYMOUS)
    finally:
        await engine.dispose()
    changed = keys != saved
    if changed:
        write_keys(keys)
    limits = repository.to_plan(anonymous).limits_for(ROUTE)
    return keys, changed, min(limit.amount for limit in limits) + 1


def show_key(keys: dict[str, str]) -> str | None:
    """The plan whose key the third request uses: pro if seeded, else the first that is not free."""
    if PREFERRED_PLAN in keys:
        return PREFERRED_PLAN
    return next((plan for plan in keys if plan != "free"), next(iter(keys), None))


def banner(
    settings: Settings, keys: dict[str, str], changed: bool, to_refusal: int, port: int
) -> str:
    url = f"http://127.0.0.1:{port}{ROUTE}"
    lines = [
        "",
        "*** Embedded mode: limits are counted IN MEMORY, PER PROCESS (Redis is not used), and",
        f"*** plans and keys live in {database_url(settings).rpartition('///')[2]}. REDIS_URL and",
        "*** DATABASE_URL from .env or the environment are ignored by `dev`.",
        "",
        f"Demo keys, one per seeded plan ({'new, kept' if changed else 'reused from'}"
        f" {KEYS_FILE}):",
        *(f"  {plan:<12} {key}" for plan, key in keys.items()),
        "",
        "Try it:",
        f"  curl -si {url} | {SHOW_HEADERS}",
        f"  for i in $(seq 1 {to_refusal}); do curl -s -o /dev/null -w {WRITE_STATUS} {url};"
        " done; echo",
    ]
    plan = show_key(keys)
    if plan is not None:
        lines.append(
            f"  curl -si {url} -H 'Authorization: Bearer {keys[plan]}' | {SHOW_HEADERS}"
            f"  # plan {plan}"
        )
    return "\n".join([*lines, ""])


def main(args: argparse.Namespace) -> int:
    from .migrations import upgrade_to_head  # Alembic: not imported by the CLI's other commands

    settings = embedded_settings()
    upgrade_to_head(database_url(settings))
    keys, changed, to_refusal = asyncio.run(demo_keys(settings))
    print(banner(settings, keys, changed, to_refusal, args.port), flush=True)

    import uvicorn  # here, so that the other commands do not pay for importing it

    uvicorn.run(
        f"{__package__}.main:app",
        host="127.0.0.1",
        port=args.port,
        reload=args.reload,
        # Only the service's code: not .venv, the SQLite file or the keys file.
        reload_dirs=[str(Path(__file__).parent)] if args.reload else None,
        # As the README's uvicorn line: the service applies TRUSTED_PROXIES itself.
        proxy_headers=False,
    )
    return 0
