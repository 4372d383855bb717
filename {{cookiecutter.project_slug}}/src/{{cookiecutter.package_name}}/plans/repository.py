"""Queries on plans, accounts and API keys. The request path reaches them only through cache.py."""

import unicodedata
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .keys import generate_key, hash_key
from .models import AccountRow, ApiKeyRow, PlanRow
from .plan import ANONYMOUS, Plan, check_priority, parse_limits, parse_route_limits


class NotFound(LookupError):
    pass


def to_plan(row: PlanRow) -> Plan:
    return Plan.from_strings(
        row.name, row.limits, row.route_limits, row.shadow_limits, priority=row.priority
    )


def key_plan(row: ApiKeyRow, plan: Plan) -> Plan:
    """`plan` as the key of `row` gets it: with its account's own limits in place of the plan's,
    and the key's own on top, where they have any. ValueError for limits that cannot be read."""
    account = row.account
    if account.limits is not None or account.route_limits:
        limits = parse_limits(account.limits) if account.limits is not None else None
        routes = parse_route_limits(account.route_limits or {})
        plan = plan.with_account_limits(account.id, limits, routes)
    if row.limits is not None or row.route_limits:
        limits = parse_limits(row.limits) if row.limits is not None else None
        routes = parse_route_limits(row.route_limits or {})
        plan = plan.with_key_limits(row.public_id, limits, routes)
    return plan


def printable(value: str, what: str) -> str:
    """`value` when it has no control or format characters; ValueError naming `what` otherwise.

    Free text the CLI stores is printed again (`keys list`) and, for a block's reason, sent to
    clients: a newline or an ANSI escape in it would rewrite an operator's terminal or a log.
    """
    bad = sorted({char for char in value if unicodedata.category(char) in ("Cc", "Cf")})
    if bad:
        shown = ", ".join(f"U+{ord(char):04X}" for char in bad)
        raise ValueError(f"{what} must not contain control characters ({shown})")
    return value


def _shadow_limits(value: str) -> str | None:
    """A plan's shadow limits as stored: "" clears them."""
    if not value.strip():
        return None
    parse_limits(value)
    return value


async def find_key(session: AsyncSession, public_id: str) -> ApiKeyRow | None:
    return await session.scalar(select(ApiKeyRow).where(ApiKeyRow.public_id == public_id))


async def get_key(session: AsyncSession, public_id: str) -> ApiKeyRow:
    row = await find_key(session, public_id)
    if row is None:
        raise NotFound(f"no API key with id {public_id!r}")
    return row


async def find_plan(session: AsyncSession, name: str) -> PlanRow | None:
    return await session.scalar(select(PlanRow).where(PlanRow.name == name))


async def get_plan(session: AsyncSession, name: str) -> PlanRow:
    row = await find_plan(session, name)
    if row is None:
        raise NotFound(f"no plan named {name!r}")
    return row


async def list_plans(session: AsyncSession) -> list[PlanRow]:
    return list(await session.scalars(select(PlanRow).order_by(PlanRow.name)))


async def create_plan(
    session: AsyncSession,
    name: str,
    limits: str,
    route_limits: dict[str, str] | None = None,
    shadow_limits: str | None = None,
    priority: int = 1,  # above anonymous (0), with the lowest seeded paying plan
) -> PlanRow:
    parse_limits(limits)
    parse_route_limits(route_limits or {})
    shadow = _shadow_limits(shadow_limits or "")
    check_priority(priority)
    printable(name, "a plan's name")
    if await find_plan(session, name) is not None:
        raise ValueError(f"a plan named {name!r} already exists")
    row = PlanRow(
        name=name,
        limits=limits,
        route_limits=route_limits or {},
        shadow_limits=shadow,
        priority=priority,
        is_active=True,
    )
    session.add(row)
    await session.flush()
    return row


async def update_plan(
    session: AsyncSession,
    name: str,
    limits: str | None = None,
    route_limits: dict[str, str] | None = None,
    is_active: bool | None = None,
    shadow_limits: str | None = None,
    priority: int | None = None,
) -> PlanRow:
    """Change what is given; `shadow_limits=""` clears the plan's shadow limits."""
    row = await get_plan(session, name)
    if shadow_limits is not None:
        row.shadow_limits = _shadow_limits(shadow_limits)
    if limits is not None:
        parse_limits(limits)
        row.limits = limits
    if route_limits is not None:
        parse_route_limits(route_limits)
        row.route_limits = route_limits
    if priority is not None:
        row.priority = check_priority(priority)
    if is_active is not None:
        if name == ANONYMOUS and not is_active:
            raise ValueError("the anonymous plan cannot be deactivated; lower its limits instead")
        row.is_active = is_active
    await session.flush()
    return row


def _account_name(name: str) -> str:
    """An account's name: 1 to 200 printable characters, not blank."""
    if not name.strip() or len(name) > 200:
        raise ValueError("an account's name must be 1 to 200 characters, not blank")
    return printable(name, "an account's name")


def _reason(reason: str) -> str:
    """A block's reason, as stored: it is shown to the client."""
    reason = reason.strip()
    if not reason or len(reason) > 200:
        raise ValueError("the reason for a block is shown to the client: 1 to 200 characters")
    return printable(reason, "the reason for a block")


async def _subscribable_plan(session: AsyncSession, plan_name: str) -> PlanRow:
    """The plan of this name, refused where its keys could not be served."""
    if plan_name == ANONYMOUS:
        raise ValueError("accounts cannot be on the anonymous plan")
    return _active(await get_plan(session, plan_name))


def _active(plan: PlanRow) -> PlanRow:
    """`plan`, refused when inactive: a key on it would only get 403s."""
    if not plan.is_active:
        raise ValueError(
            f"plan {plan.name!r} is inactive: its keys would be refused (403); "
            f"activate it first (plans update {plan.name} --activate)"
        )
    return plan


async def find_account(session: AsyncSession, name: str) -> AccountRow | None:
    return await session.scalar(select(AccountRow).where(AccountRow.name == name))


async def get_account(session: AsyncSession, name: str) -> AccountRow:
    row = await find_account(session, name)
    if row is None:
        raise NotFound(f"no account named {name!r}")
    return row


async def list_accounts(session: AsyncSession, plan_name: str | None = None) -> list[AccountRow]:
    query = select(AccountRow).order_by(AccountRow.name)
    if plan_name is not None:
        query = query.join(AccountRow.plan).where(PlanRow.name == plan_name)
    return list(await session.scalars(query))


async def create_account(
    session: AsyncSession,
    name: str,
    plan_name: str,
    limits: str | None = None,
    route_limits: dict[str, str] | None = None,
) -> AccountRow:
    """A new account subscribed to `plan_name`, optionally with limits of its own in place of
    the plan's."""
    _account_name(name)
    if limits is not None:
        parse_limits(limits)
    parse_route_limits(route_limits or {})
    plan = await _subscribable_plan(session, plan_name)
    if await find_account(session, name) is not None:
        raise ValueError(f"an account named {name!r} already exists")
    row = AccountRow(name=name, plan=plan, limits=limits, route_limits=route_limits or None)
    session.add(row)
    await session.flush()
    return row


def _set_own_limits_and_block(
    row: AccountRow | ApiKeyRow,
    limits: str | None,
    route_limits: dict[str, str] | None,
    *,
    clear_limits: bool,
    blocked_reason: str | None,
    unblock: bool,
) -> None:
    """What accounts and keys both hold: their own limits (cleared first, then set) and a block."""
    if clear_limits:
        row.limits, row.route_limits = None, None
    if limits is not None:
        parse_limits(limits)
        row.limits = limits
    if route_limits is not None:
        parse_route_limits(route_limits)
        row.route_limits = route_limits or None
    if unblock:
        row.blocked_reason = None
    if blocked_reason is not None:
        row.blocked_reason = _reason(blocked_reason)


async def update_account(
    session: AsyncSession,
    name: str,
    plan_name: str | None = None,
    limits: str | None = None,
    route_limits: dict[str, str] | None = None,
    clear_limits: bool = False,
    blocked_reason: str | None = None,
    unblock: bool = False,
    new_name: str | None = None,
) -> AccountRow:
    """Move an account to another plan, give it its own limits (or clear them), block, unblock
    or rename it. Every instance applies it within PLAN_CACHE_TTL_SECONDS; the account's
    budget (its counters) goes on."""
    row = await get_account(session, name)
    if plan_name is not None:
        row.plan = await _subscribable_plan(session, plan_name)
    _set_own_limits_and_block(
        row,
        limits,
        route_limits,
        clear_limits=clear_limits,
        blocked_reason=blocked_reason,
        unblock=unblock,
    )
    if new_name is not None and new_name != name:
        _account_name(new_name)
        if await find_account(session, new_name) is not None:
            raise ValueError(f"an account named {new_name!r} already exists")
        row.name = new_name
    await session.flush()
    return row


async def create_key(
    session: AsyncSession, account_name: str, owner: str | None = None
) -> tuple[str, ApiKeyRow]:
    """A new key of `account_name`, held by `owner` (a person or a service; the account's name
    by default). The key is returned once and never stored."""
    account = await get_account(session, account_name)
    _active(account.plan)
    owner = account.name if owner is None else owner
    if not owner.strip() or len(owner) > 200:
        raise ValueError("the owner must be 1 to 200 characters, not blank")
    printable(owner, "the owner")
    key, public_id = generate_key()
    row = ApiKeyRow(public_id=public_id, secret_hash=hash_key(key), account=account, owner=owner)
    session.add(row)
    await session.flush()
    return key, row


async def list_keys(
    session: AsyncSession, plan_name: str | None = None, account_name: str | None = None
) -> list[ApiKeyRow]:
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
    if plan_name is not None or account_name is not None:
        query = query.join(ApiKeyRow.account)
    if plan_name is not None:
        query = query.join(AccountRow.plan).where(PlanRow.name == plan_name)
    if account_name is not None:
        query = query.where(AccountRow.name == account_name)
    return list(await session.scalars(query))


async def revoke_key(session: AsyncSession, public_id: str) -> ApiKeyRow:
    row = await get_key(session, public_id)
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.flush()
    return row


async def update_key(
    session: AsyncSession,
    public_id: str,
    limits: str | None = None,
    route_limits: dict[str, str] | None = None,
    clear_limits: bool = False,
    blocked_reason: str | None = None,
    unblock: bool = False,
) -> ApiKeyRow:
    """Give a key its own limits (of every route, or per route; counted for the key alone, on top
    of its account's), clear them, block or unblock it.
    Takes effect on every instance within PLAN_CACHE_TTL_SECONDS."""
    row = await get_key(session, public_id)
    _set_own_limits_and_block(
        row,
        limits,
        route_limits,
        clear_limits=clear_limits,
        blocked_reason=blocked_reason,
        unblock=unblock,
    )
    await session.flush()
    return row


async def revoke_keys_of(session: AsyncSession, account_name: str) -> int:
    """Revoke every live key of the account `account_name`; how many there were."""
    account = await find_account(session, account_name)
    if account is None:
        return 0
    result = await session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.account_id == account.id, ApiKeyRow.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    revoked: int = result.rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
    return revoked
