"""Queries on plans and API keys. The request path reaches them only through cache.py."""

import unicodedata
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .keys import generate_key, hash_key
from .models import ApiKeyRow, PlanRow
from .plan import ANONYMOUS, Plan, check_priority, parse_limits, parse_route_limits


class NotFound(LookupError):
    pass


def to_plan(row: PlanRow) -> Plan:
    return Plan.from_strings(
        row.name, row.limits, row.route_limits, row.shadow_limits, priority=row.priority
    )


def key_plan(row: ApiKeyRow, plan: Plan) -> Plan:
    """`plan` as the key of `row` gets it: with the key's own limits, if it has any."""
    if row.limits is None and not row.route_limits:
        return plan
    limits = parse_limits(row.limits) if row.limits is not None else None
    return plan.with_key_limits(row.public_id, limits, parse_route_limits(row.route_limits or {}))


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


async def create_key(session: AsyncSession, plan_name: str, owner: str) -> tuple[str, ApiKeyRow]:
    """A new key for `owner` on `plan_name`. The key is returned once and never stored."""
    if plan_name == ANONYMOUS:
        raise ValueError("keys cannot be issued on the anonymous plan")
    plan = await get_plan(session, plan_name)
    if not plan.is_active:
        raise ValueError(
            f"plan {plan_name!r} is inactive: its keys would be refused (403); "
            f"activate it first (plans update {plan_name} --activate)"
        )
    printable(owner, "the owner")
    key, public_id = generate_key()
    row = ApiKeyRow(public_id=public_id, secret_hash=hash_key(key), plan=plan, owner=owner)
    session.add(row)
    await session.flush()
    return key, row


async def list_keys(session: AsyncSession, plan_name: str | None = None) -> list[ApiKeyRow]:
    query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
    if plan_name is not None:
        query = query.join(ApiKeyRow.plan).where(PlanRow.name == plan_name)
    return list(await session.scalars(query))


async def revoke_key(session: AsyncSession, public_id: str) -> ApiKeyRow:
    row = await find_key(session, public_id)
    if row is None:
        raise NotFound(f"no API key with id {public_id!r}")
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
    """Give a key its own limits (of every route, or per route), clear them, block or unblock it.
    Takes effect on every instance within PLAN_CACHE_TTL_SECONDS."""
    row = await find_key(session, public_id)
    if row is None:
        raise NotFound(f"no API key with id {public_id!r}")
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
        reason = blocked_reason.strip()
        if not reason or len(reason) > 200:
            raise ValueError("the reason for a block is shown to the client: 1 to 200 characters")
        printable(reason, "the reason for a block")
        row.blocked_reason = reason
    await session.flush()
    return row


async def revoke_keys_of(session: AsyncSession, owner: str) -> int:
    """Revoke every live key of `owner`; how many there were."""
    result = await session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.owner == owner, ApiKeyRow.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    revoked: int = result.rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
    return revoked
