"""Queries on plans and API keys. The request path reaches them only through cache.py."""

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .keys import generate_key, hash_key
from .models import ApiKeyRow, PlanRow
from .plan import ANONYMOUS, Plan, check_priority, parse_limits


class NotFound(LookupError):
    pass


def to_plan(row: PlanRow) -> Plan:
    return Plan.from_strings(row.name, row.limits, row.route_limits, row.priority)


def _check_route_limits(route_limits: dict[str, str]) -> None:
    for route, value in route_limits.items():
        if not route.startswith("/"):
            raise ValueError(f"route {route!r} must be a route template such as /v1/items")
        parse_limits(value)


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
    priority: int = 1,  # above anonymous (0), with the lowest seeded paying plan
) -> PlanRow:
    parse_limits(limits)
    _check_route_limits(route_limits or {})
    check_priority(priority)
    if await find_plan(session, name) is not None:
        raise ValueError(f"a plan named {name!r} already exists")
    row = PlanRow(
        name=name,
        limits=limits,
        route_limits=route_limits or {},
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
    priority: int | None = None,
) -> PlanRow:
    row = await get_plan(session, name)
    if limits is not None:
        parse_limits(limits)
        row.limits = limits
    if route_limits is not None:
        _check_route_limits(route_limits)
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


async def revoke_keys_of(session: AsyncSession, owner: str) -> int:
    """Revoke every live key of `owner`; how many there were."""
    result = await session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.owner == owner, ApiKeyRow.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    revoked: int = result.rowcount  # type: ignore[attr-defined]  # an UPDATE's CursorResult
    return revoked
