"""The in-process cache of plans and API keys that every request reads.

In steady state a request makes no database query: a key's grant (its hash, its account, the
account's plan and their status) is read once, in one query, and served from memory for
PLAN_CACHE_TTL_SECONDS, so a revoked key, a changed plan or an account moved to another plan
takes effect within that time, without a restart. Concurrent misses for one key share a
single query. While the database is unreachable, entries already cached keep serving (even
past their TTL) and only callers never seen get `Unavailable` (503). Public ids of no key are
cached apart, so guessing cannot evict real keys.

A plan row whose limits cannot be read (written by plain SQL before migration 0003, say) is
never a 500: its callers keep the last good version of the plan this process read, or get 503
when there is none; it is logged and counted once per plan per TTL, and read again each TTL.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..observability.metrics import PLAN_CACHE, PLAN_ERRORS, PLAN_INACTIVE, labelled
from ..outages import Outage, Unavailable
from . import repository
from .models import PlanRow
from .plan import ANONYMOUS, Plan

logger = logging.getLogger(__name__)

# Failures that mean "the database is unreachable", as opposed to a bug.
DATABASE_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class KeyGrant:
    secret_hash: str
    # None when the key is revoked or its plan deactivated: such keys are refused. Its account's
    # plan, with the account's own limits in place of the plan's and the key's own on top.
    plan: Plan | None
    # Why the key (or its whole account) is blocked (403), or None.
    blocked: str | None = None
    # The name of the key's plan when an operator deactivated it (403 "plan inactive", not the
    # 401 of a wrong key: the caller holds a real key), or None.
    inactive_plan: str | None = None
    # Who is counted: "account:<id>", one budget for every key of the account.
    identity: str = ""
    # The account's name, told to its own callers (GET /v1/rate-limit).
    account: str | None = None


class MisconfiguredPlan(Exception):
    """A plan row whose limits the service cannot read (written by plain SQL, say)."""

    def __init__(self, name: str, value: object) -> None:
        super().__init__(f"plan {name!r} has limits the service cannot read: {value!r}")
        self.name = name


@dataclass(frozen=True, slots=True)
class _Misconfigured:
    """Cached in place of a plan (or a key's grant) whose plan cannot be read."""

    name: str


@dataclass(slots=True)
class _Entry:
    value: Any  # KeyGrant | Plan | _Misconfigured | None
    fetched_at: float


class _TTLCache:
    """A bounded map of values with their fetch time; the least recently read is evicted."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_entries = max_entries

    def get(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is not None:
            self._entries.move_to_end(name)
        return entry

    def put(self, name: str, value: Any, now: float) -> None:
        self._entries[name] = _Entry(value, now)
        self._entries.move_to_end(name)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def pop(self, name: str) -> None:
        self._entries.pop(name, None)

    def clear(self) -> None:
        self._entries.clear()


class PlanCache:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ttl: float,
        retry_interval: float = 2.0,
        max_entries: int = 100_000,
    ) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._outage = Outage("Plans are temporarily unavailable.", retry_interval)
        self._keys = _TTLCache(max_entries)  # public id -> KeyGrant (revoked keys too)
        self._keys_max = max_entries
        # Public ids no key has, apart: a flood of guessed ids must not evict the real keys,
        # which are what a database outage is ridden out on.
        self._unknown_keys = _TTLCache(max_entries)
        self._plans = _TTLCache(max_entries)  # name -> Plan, or None: no such active plan
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}
        # One Plan object per plan (and per key with limits of its own) while it is unchanged,
        # however many keys share it: the limits worked out per route and plan (the rate
        # limiter's rules) are kept by identity.
        self._plan_objects: dict[tuple[str, str | None], Plan] = {}
        # Misconfigured plan -> when it was last reported: once per plan per TTL.
        self._reported: dict[str, float] = {}

    async def key(self, public_id: str) -> KeyGrant | None:
        """The grant of the key with this public id; None when no such key exists."""
        unknown = self._unknown_keys.get(public_id)
        if unknown is not None:
            now = time.monotonic()
            if now - unknown.fetched_at < self._ttl or self._outage.skips(now):
                labelled(PLAN_CACHE, "hit").inc()
                return None
        grant: KeyGrant | None = await self._read(
            self._keys, "key", public_id, self._fetch_key, unknown=self._unknown_keys
        )
        return grant

    async def plan(self, name: str) -> Plan | None:
        """The active plan of this name; None when there is none."""
        plan: Plan | None = await self._read(self._plans, "plan", name, self._fetch_plan)
        return plan

    async def preload(self) -> None:
        """Read every plan now, so that first requests do not wait for the database. A plan
        that cannot be read is reported and left out: its callers get 503, the others go on."""
        async with self._sessions() as session:
            rows = await repository.list_plans(session)
        now = time.monotonic()
        for row in rows:
            self._check_active(row)
            try:
                self._plans.put(row.name, self._plan(row) if row.is_active else None, now)
            except MisconfiguredPlan as exc:
                self._report(exc, now)

    def clear(self) -> None:
        self._keys.clear()
        self._unknown_keys.clear()
        self._plans.clear()

    async def _fetch_key(self, public_id: str) -> KeyGrant | None:
        async with self._sessions() as session:
            row = await repository.find_key(session, public_id)
        if row is None:
            return None
        if row.revoked_at is not None:
            return KeyGrant(row.secret_hash, None)
        account = row.account
        if not account.plan.is_active:
            return KeyGrant(row.secret_hash, None, inactive_plan=account.plan.name)
        plan = self._plan(account.plan)
        try:
            plan = self._interned(repository.key_plan(row, plan))
        except ValueError as exc:  # written by plain SQL, past the CHECK (SQLite has none)
            own = (
                f"account {account.name!r}: limits={account.limits!r}, "
                f"route_limits={account.route_limits!r}; key {row.public_id}: "
                f"limits={row.limits!r}, route_limits={row.route_limits!r}"
            )
            raise MisconfiguredPlan(plan.name, own) from exc
        # The account's block first: it is the one the customer has to settle.
        blocked = account.blocked_reason or row.blocked_reason
        return KeyGrant(
            row.secret_hash, plan, blocked, identity=f"account:{account.id}", account=account.name
        )

    async def _fetch_plan(self, name: str) -> Plan | None:
        async with self._sessions() as session:
            row = await repository.find_plan(session, name)
        if row is not None:
            self._check_active(row)
        return self._plan(row) if row is not None and row.is_active else None

    def _check_active(self, row: PlanRow) -> None:
        """Log and count an inactive anonymous plan: read once per TTL, so reported as often.
        The CLI refuses to deactivate it; plain SQL can, and every anonymous caller gets 503."""
        if row.name == ANONYMOUS and not row.is_active:
            labelled(PLAN_INACTIVE, row.name).inc()
            logger.error(
                "the %r plan is inactive: every caller without an API key gets 503; "
                "set plans.is_active back to true",
                row.name,
            )

    def _plan(self, row: PlanRow) -> Plan:
        try:
            plan = repository.to_plan(row)
        except ValueError as exc:
            raise MisconfiguredPlan(row.name, row.limits) from exc
        return self._interned(plan)

    def _interned(self, plan: Plan) -> Plan:
        """The Plan object already in use for an equal plan, else `plan`, kept from now on."""
        name = (plan.name, plan.owner)
        known = self._plan_objects.get(name)
        if known == plan:
            return known
        if len(self._plan_objects) > self._keys_max:  # keys with limits of their own come and go
            self._plan_objects.clear()
        self._plan_objects[name] = plan
        return plan

    def _report(self, exc: MisconfiguredPlan, now: float) -> None:
        """Log and count a misconfigured plan, once per plan per TTL."""
        last = self._reported.get(exc.name)
        if last is None or now - last >= self._ttl:
            self._reported[exc.name] = now
            labelled(PLAN_ERRORS, exc.name).inc()
            logger.error("%s; its callers are served its last good limits, or 503", exc)

    def _answer(self, value: Any) -> Any:
        if type(value) is _Misconfigured:
            detail = f"The {value.name!r} plan is misconfigured; the operator is told."
            raise Unavailable(detail, retry_after=max(1, round(self._ttl)))
        return value

    async def _read(
        self,
        cache: _TTLCache,
        kind: str,
        name: str,
        fetch: Callable[[str], Awaitable[Any]],
        unknown: _TTLCache | None = None,
    ) -> Any:
        """`name` from `cache`, read again once its TTL has passed. Where `unknown` is given,
        a name the database does not know is kept there instead."""
        now = time.monotonic()
        entry = cache.get(name)
        if entry is not None and now - entry.fetched_at < self._ttl:
            labelled(PLAN_CACHE, "hit").inc()
            return self._answer(entry.value)
        outage = self._outage
        if outage.skips(now):
            if entry is None:
                raise outage.unavailable(now)
            labelled(PLAN_CACHE, "stale").inc()
            return self._answer(entry.value)  # stale, while the database is known to be down
        labelled(PLAN_CACHE, "miss").inc()
        try:
            value = await self._single_flight((kind, name), lambda: fetch(name))
        except DATABASE_ERRORS as exc:
            if outage.failed():
                logger.warning("Plans database unreachable (%s): serving cached plans", exc)
            if entry is None:
                raise outage.unavailable(now) from exc
            labelled(PLAN_CACHE, "stale").inc()
            return self._answer(entry.value)
        except MisconfiguredPlan as exc:
            self._report(exc, now)
            # The last good version, if any, until the row is mended; checked again each TTL.
            if entry is not None and type(entry.value) is not _Misconfigured:
                value = entry.value
            else:
                value = _Misconfigured(exc.name)
        if outage.answered():
            logger.warning("Plans database is back")
        if value is None and unknown is not None:
            cache.pop(name)
            unknown.put(name, None, time.monotonic())
        else:
            cache.put(name, value, time.monotonic())
        return self._answer(value)

    async def _single_flight(
        self, flight: tuple[str, str], fetch: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run `fetch` once for concurrent callers asking for the same thing."""
        pending = self._inflight.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            value = await fetch()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._inflight[flight]
