"""Command line for plans, accounts, API keys and migrations: `{{ cookiecutter.project_slug }} --help`.

Every command runs in one transaction: bad input prints one line, exits 2 and writes nothing.
"""

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncSession

from . import dev
from .database import create_engine, database_url, session_factory
from .plans import repository
from .plans.cache import DATABASE_ERRORS
from .plans.models import AccountRow, ApiKeyRow, PlanRow
from .settings import Settings, get_settings, settings_or_exit


def _route_limits(pairs: Sequence[str] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    routes = {}
    for pair in pairs:
        route, sep, limits = pair.partition("=")
        if not sep:
            raise ValueError(f"--route {pair!r} must look like /v1/items=10/minute")
        routes[route] = limits
    if routes:
        # A template the app does not have would be stored and never apply (a typo such as
        # /v1/item): refused, with the ones it has. The app is imported (built), not started;
        # only here, as every command would otherwise pay for importing the whole app.
        from .main import app
        from .ratelimit import limited_templates

        known = limited_templates(app)
        # (One not even shaped as a template gets the repository's own message.)
        unknown = sorted(route for route in routes if route.startswith("/") and route not in known)
        if unknown:
            raise ValueError(
                f"--route {unknown[0]!r} is not a route template of this service; "
                f"rate-limited routes: {', '.join(known)}"
            )
    return routes


def _shown(text: object) -> str:
    """Text from the database as a terminal may print it: control characters escaped (a row
    written by plain SQL may hold an ANSI escape or a newline), the rest as it is."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in str(text)
    )


def _describe_routes(route_limits: dict[str, str] | None) -> str:
    return "".join(f" {route}={limits}" for route, limits in sorted((route_limits or {}).items()))


def _describe_plan(row: PlanRow) -> str:
    shadow = f" shadow:{row.shadow_limits}" if row.shadow_limits else ""
    state = "" if row.is_active else " (inactive)"
    priority = f"\tpriority {row.priority}"
    limits = _shown(f"{row.limits}{_describe_routes(row.route_limits)}{shadow}")
    return f"{_shown(row.name)}\t{limits}{priority}{state}"


def _describe_own_limits(limits: str | None, route_limits: dict[str, str] | None, of: str) -> str:
    if limits is None and not route_limits:
        return ""
    return f"\tlimits {_shown(limits or of)}{_shown(_describe_routes(route_limits))}"


def _describe_account(row: AccountRow) -> str:
    own = _describe_own_limits(row.limits, row.route_limits, "(plan)")
    blocked = f"\tblocked: {_shown(row.blocked_reason)}" if row.blocked_reason else ""
    return f"{_shown(row.name)}\t{_shown(row.plan.name)}\t{row.created_at:%Y-%m-%d}{own}{blocked}"


def _describe_key(row: ApiKeyRow) -> str:
    own = _describe_own_limits(row.limits, row.route_limits, "(account)")
    blocked = f"\tblocked: {_shown(row.blocked_reason)}" if row.blocked_reason else ""
    revoked = f"\trevoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else ""
    created = f"{row.created_at:%Y-%m-%d}"
    account, plan = _shown(row.account.name), _shown(row.account.plan.name)
    owner = _shown(row.owner)
    return f"{row.public_id}\t{account}\t{plan}\t{owner}\t{created}{own}{blocked}{revoked}"


async def plans_list(session: AsyncSession, args: argparse.Namespace) -> None:
    for row in await repository.list_plans(session):
        print(_describe_plan(row))


async def plans_create(session: AsyncSession, args: argparse.Namespace) -> None:
    row = await repository.create_plan(
        session,
        args.name,
        args.limits,
        _route_limits(args.route),
        shadow_limits=args.shadow_limits,
        priority=args.priority,
    )
    print(f"created plan {_describe_plan(row)}")


async def plans_update(session: AsyncSession, args: argparse.Namespace) -> None:
    row = await repository.update_plan(
        session,
        args.name,
        args.limits,
        _route_limits(args.route),
        args.active,
        shadow_limits=args.shadow_limits,
        priority=args.priority,
    )
    print(f"updated plan {_describe_plan(row)}")


async def accounts_list(session: AsyncSession, args: argparse.Namespace) -> None:
    for row in await repository.list_accounts(session, args.plan):
        print(_describe_account(row))


async def accounts_show(session: AsyncSession, args: argparse.Namespace) -> None:
    row = await repository.get_account(session, args.name)
    print(_describe_account(row))
    for key in await repository.list_keys(session, account_name=row.name):
        print(f"  {_describe_key(key)}")


async def accounts_create(session: AsyncSession, args: argparse.Namespace) -> None:
    row = await repository.create_account(
        session, args.name, args.plan, args.limits, _route_limits(args.route)
    )
    print(f"created account {_describe_account(row)}")


def _account_updated(row: AccountRow) -> None:
    print(f"updated account {_describe_account(row)}")
    print("every instance applies it within PLAN_CACHE_TTL_SECONDS", file=sys.stderr)


async def accounts_update(session: AsyncSession, args: argparse.Namespace) -> None:
    if args.limits is None and args.route is None and not args.clear_limits and not args.rename:
        raise ValueError("nothing to change: give --limits, --route, --clear-limits or --rename")
    row = await repository.update_account(
        session,
        args.name,
        limits=args.limits,
        route_limits=_route_limits(args.route),
        clear_limits=args.clear_limits,
        new_name=args.rename,
    )
    _account_updated(row)


async def accounts_move(session: AsyncSession, args: argparse.Namespace) -> None:
    _account_updated(await repository.update_account(session, args.name, plan_name=args.plan))


async def accounts_block(session: AsyncSession, args: argparse.Namespace) -> None:
    _account_updated(
        await repository.update_account(session, args.name, blocked_reason=args.reason)
    )


async def accounts_unblock(session: AsyncSession, args: argparse.Namespace) -> None:
    _account_updated(await repository.update_account(session, args.name, unblock=True))


async def keys_create(session: AsyncSession, args: argparse.Namespace) -> None:
    key, row = await repository.create_key(session, args.account, args.owner)
    account = row.account
    print(
        f"created key {row.public_id} of account {_shown(account.name)!r} "
        f"(plan {_shown(account.plan.name)}), held by {_shown(row.owner)!r}",
        file=sys.stderr,
    )
    print("the key is shown only this once; store it now:", file=sys.stderr)
    print(key)


async def keys_list(session: AsyncSession, args: argparse.Namespace) -> None:
    for row in await repository.list_keys(session, args.plan, args.account):
        print(_describe_key(row))


async def keys_update(session: AsyncSession, args: argparse.Namespace) -> None:
    changes = (args.limits, args.route, args.clear_limits or None, args.block, args.unblock or None)
    if all(change is None for change in changes):
        raise ValueError(
            "nothing to change: give --limits, --route, --clear-limits, --block or --unblock"
        )
    row = await repository.update_key(
        session,
        args.public_id,
        limits=args.limits,
        route_limits=_route_limits(args.route),
        clear_limits=args.clear_limits,
        blocked_reason=args.block,
        unblock=args.unblock,
    )
    print(f"updated key {_describe_key(row)}")
    print("every instance applies it within PLAN_CACHE_TTL_SECONDS", file=sys.stderr)


async def keys_revoke(session: AsyncSession, args: argparse.Namespace) -> None:
    row = await repository.revoke_key(session, args.public_id)
    print(f"revoked key {row.public_id} ({_shown(row.owner)})")


# The load test's accounts are named so, so that `loadtest cleanup` revokes exactly their keys.
LOADTEST_ACCOUNT_PREFIX = "loadtest-"


async def loadtest_provision(session: AsyncSession, args: argparse.Namespace) -> None:
    """PLAN=ACCOUNTS or PLAN=ACCOUNTSxKEYS: that many accounts on the plan, each with that many
    keys (1 by default); prints {"plan": {"account": ["key", ...]}}."""
    counts = {}
    for spec in args.plans:
        plan, _, count = spec.partition("=")
        accounts, _, keys_each = count.partition("x")
        if not (accounts.isdigit() and int(accounts) >= 1) or not (
            keys_each == "" or (keys_each.isdigit() and 1 <= int(keys_each) <= 100)
        ):
            raise ValueError(f"{spec!r} must look like pro=2 (accounts) or pro=2x3 (3 keys each)")
        counts[plan] = (int(accounts), int(keys_each or 1))
    run = secrets.token_hex(3)  # accounts of earlier runs keep their names
    provisioned: dict[str, dict[str, list[str]]] = {}
    for plan, (accounts, keys_each) in counts.items():
        provisioned[plan] = {}
        for number in range(1, accounts + 1):
            name = f"{LOADTEST_ACCOUNT_PREFIX}{run}-{plan}-{number}"
            await repository.create_account(session, name, plan)
            provisioned[plan][name] = [
                (await repository.create_key(session, name))[0] for _ in range(keys_each)
            ]
    print(json.dumps(provisioned))


async def loadtest_cleanup(session: AsyncSession, args: argparse.Namespace) -> None:
    revoked = 0
    for account in await repository.list_accounts(session):
        if account.name.startswith(LOADTEST_ACCOUNT_PREFIX):
            revoked += await repository.revoke_keys_of(session, account.name)
    print(f"revoked {revoked} load-test keys")


Command = Callable[[AsyncSession, argparse.Namespace], Awaitable[None]]

PRIORITY_HELP = "under overload, lower priorities are shed first (anonymous: 0; default 1)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="{{ cookiecutter.project_slug }}", description=__doc__)
    groups = parser.add_subparsers(dest="group", required=True)

    db = groups.add_parser("db", help="database migrations").add_subparsers(required=True)
    db.add_parser("upgrade", help="apply every migration (alembic upgrade head)").set_defaults(
        handler=None
    )

    plans = groups.add_parser("plans", help="subscription plans").add_subparsers(required=True)
    plans.add_parser("list", help="list plans").set_defaults(handler=plans_list)
    create = plans.add_parser("create", help="create a plan")
    create.add_argument("name")
    create.add_argument("limits", help="e.g. '1000/minute;20000/day'")
    create.add_argument("--route", action="append", help="per-route limits: /v1/items=10/minute")
    create.add_argument(
        "--shadow-limits", help="limits counted and logged on every route, never refusing"
    )
    create.add_argument("--priority", type=int, default=1, help=PRIORITY_HELP)
    create.set_defaults(handler=plans_create)
    update = plans.add_parser("update", help="change a plan")
    update.add_argument("name")
    update.add_argument("--limits")
    update.add_argument("--route", action="append", help="replaces all per-route limits")
    update.add_argument(
        "--shadow-limits", help="limits counted and logged, never refusing ('' clears them)"
    )
    update.add_argument("--priority", type=int, help=PRIORITY_HELP)
    active = update.add_mutually_exclusive_group()
    active.add_argument("--activate", dest="active", action="store_const", const=True)
    active.add_argument("--deactivate", dest="active", action="store_const", const=False)
    update.set_defaults(handler=plans_update)

    accounts = groups.add_parser(
        "accounts", help="customer accounts: a plan, its keys, one budget"
    ).add_subparsers(required=True)
    list_accounts = accounts.add_parser("list", help="list accounts")
    list_accounts.add_argument("--plan")
    list_accounts.set_defaults(handler=accounts_list)
    show = accounts.add_parser("show", help="an account and its keys (never the keys themselves)")
    show.add_argument("name")
    show.set_defaults(handler=accounts_show)
    create_account = accounts.add_parser("create", help="create an account on a plan")
    create_account.add_argument("name")
    create_account.add_argument("--plan", required=True)
    create_account.add_argument(
        "--limits", help="its own limits of every route, in place of the plan's"
    )
    create_account.add_argument("--route", action="append", help="its own limits of one route")
    create_account.set_defaults(handler=accounts_create)
    update_account = accounts.add_parser("update", help="give an account its own limits, rename it")
    update_account.add_argument("name")
    update_account.add_argument(
        "--limits", help="its limits of every route, in place of the plan's"
    )
    update_account.add_argument(
        "--route", action="append", help="its limits of one route; replaces all its per-route ones"
    )
    update_account.add_argument(
        "--clear-limits", action="store_true", help="back to the plan's limits (before the rest)"
    )
    update_account.add_argument("--rename", metavar="NEW_NAME")
    update_account.set_defaults(handler=accounts_update)
    move = accounts.add_parser("move", help="move an account to another plan (its budget goes on)")
    move.add_argument("name")
    move.add_argument("plan")
    move.set_defaults(handler=accounts_move)
    block = accounts.add_parser("block", help="refuse every key of an account (403, the reason)")
    block.add_argument("name")
    block.add_argument("reason")
    block.set_defaults(handler=accounts_block)
    unblock = accounts.add_parser("unblock", help="serve an account's keys again")
    unblock.add_argument("name")
    unblock.set_defaults(handler=accounts_unblock)

    keys = groups.add_parser("keys", help="API keys").add_subparsers(required=True)
    create_key = keys.add_parser("create", help="issue a key of an account (printed once)")
    create_key.add_argument("--account", required=True)
    create_key.add_argument(
        "--owner", help="who or what holds the key: a person, a service (the account's name)"
    )
    create_key.set_defaults(handler=keys_create)
    list_keys = keys.add_parser("list", help="list keys (never the keys themselves)")
    list_keys.add_argument("--plan")
    list_keys.add_argument("--account")
    list_keys.set_defaults(handler=keys_list)
    update_key = keys.add_parser(
        "update", help="give a key its own limits, or block it, by its public id"
    )
    update_key.add_argument("public_id")
    update_key.add_argument(
        "--limits", help="the key's own limits of every route, on top of its account's: 100/minute"
    )
    update_key.add_argument(
        "--route",
        action="append",
        help="the key's limits of one route, /v1/items=10/minute; replaces all its per-route ones",
    )
    update_key.add_argument(
        "--clear-limits", action="store_true", help="none of its own (before the rest)"
    )
    blocking = update_key.add_mutually_exclusive_group()
    blocking.add_argument("--block", metavar="REASON", help="refuse the key (403, this reason)")
    blocking.add_argument("--unblock", action="store_true")
    update_key.set_defaults(handler=keys_update)
    revoke = keys.add_parser("revoke", help="revoke a key by its public id")
    revoke.add_argument("public_id")
    revoke.set_defaults(handler=keys_revoke)

    loadtest = groups.add_parser("loadtest", help="keys for loadtests/").add_subparsers(
        required=True
    )
    provision = loadtest.add_parser(
        "provision", help="create accounts and their keys, print them as JSON"
    )
    provision.add_argument("plans", nargs="+", metavar="PLAN=ACCOUNTS[xKEYS]")
    provision.set_defaults(handler=loadtest_provision)
    loadtest.add_parser("cleanup", help="revoke every load-test key").set_defaults(
        handler=loadtest_cleanup
    )
    dev.add_parser(groups)
    return parser


async def run(handler: Command, args: argparse.Namespace) -> None:
    engine = create_engine(get_settings())
    try:
        async with session_factory(engine)() as session, session.begin():
            await handler(session, args)
    finally:
        await engine.dispose()


def _database_problem(settings: Settings, exc: BaseException) -> str:
    """One line for a database the command cannot use: which (password masked), why, what to do."""
    try:
        where = make_url(settings.database_url or database_url(settings))
        shown = where.render_as_string(hide_password=True)
    except ArgumentError:
        shown = "DATABASE_URL (not a database URL)"
    driver_error = getattr(exc, "orig", None) or exc  # the driver's own error, not SQLAlchemy's
    reason = (str(driver_error).strip().splitlines() or [type(driver_error).__name__])[0]
    sqlstate = getattr(driver_error, "sqlstate", None) or ""
    if isinstance(exc, OSError | TimeoutError) or sqlstate.startswith(("08", "57P")):
        advice = "start Postgres there, or set DATABASE_URL to a running one"
    elif sqlstate.startswith(("28", "3D")):
        advice = "create the role and the database (the README shows how), or set DATABASE_URL"
    elif sqlstate == "42P01" or "no such table" in reason:
        advice = "run `{{ cookiecutter.project_slug }} db upgrade` first"
    else:
        advice = "check DATABASE_URL"
    return f"error: database {shown}: {reason}; {advice}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.group == "dev":
        return dev.main(args)
    settings_or_exit()
    try:
        if args.handler is None:
            from .migrations import upgrade_to_head  # Alembic: imported by this command alone

            upgrade = upgrade_to_head(database_url(get_settings()))
            if upgrade.applied:
                print(f"applied {', '.join(upgrade.applied)}")
            else:
                print(f"nothing to do: the database is at the latest revision, {upgrade.current}")
        else:
            asyncio.run(run(args.handler, args))
    except (ValueError, repository.NotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DATABASE_ERRORS as exc:
        print(_database_problem(get_settings(), exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
