"""The `plans`, `accounts` and `api_keys` tables. Alembic migrations (migrations/) create them.

A plan is a product (free, pro); an account is a customer subscribed to one plan, spending one
budget whichever of its keys it calls with; a key is only how the account proves who it is.
"""

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, MetaData, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    # Named constraints, so that migrations can drop and alter them on every database.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class PlanRow(Base):
    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Limits of every route for callers on this plan, in `limits` syntax: "1000/minute;20000/day".
    limits: Mapped[str] = mapped_column(String(255))
    # Per-route replacements of `limits`, by route template: {"/v1/items": "10/minute"}.
    route_limits: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # Limits counted on every route beside `limits` but never refusing (a rollout), or None.
    shadow_limits: Mapped[str | None] = mapped_column(String(255))
    # Under overload the lowest priorities are shed first (ratelimit/http/shedding.py);
    # anonymous is 0.
    priority: Mapped[int] = mapped_column(server_default="0")
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"), index=True)
    # The account's own limits, in place of its plan's (plans/plan.py, Plan.with_account_limits):
    # of every route, in `limits` syntax, and per route template. None: the plan's.
    limits: Mapped[str | None] = mapped_column(String(255))
    route_limits: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # Set: every key of the account is refused with 403 and this reason, none revoked.
    blocked_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    plan: Mapped[PlanRow] = relationship(lazy="joined")


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The non-secret part of the key, used to find it (and shown in logs and limiter keys).
    public_id: Mapped[str] = mapped_column(String(16), unique=True)
    # SHA-256 of the whole key: the key itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # Who or what holds the key inside its account (a person, a service): a label.
    owner: Mapped[str] = mapped_column(String(200))
    # This key's own limits, counted for this key alone on top of its account's (plans/plan.py,
    # Plan.with_key_limits): of every route, and per route template. None: none of its own.
    limits: Mapped[str | None] = mapped_column(String(255))
    route_limits: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # Set: the key is refused with 403 and this reason, without being revoked.
    blocked_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # Joined: one query finds a key, its account and the account's plan (plans/cache.py).
    account: Mapped[AccountRow] = relationship(lazy="joined")
