"""Accounts own the plan, the keys and one budget.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Before: each key had its plan (`api_keys.plan_id`) and counted its own budget. After: an account
(`accounts`: name, plan, own limits, block) owns keys (`api_keys.account_id`), and all of its keys
spend one budget; a key's own limits are counted for it alone, on top of the account's.

Today's data: one account per owner, plan and own limits of the key. An owner whose keys are on
one plan, with no limits of their own, becomes one account named as the owner, holding all of
them (from now on they share one budget: the point of accounts). Where one owner's keys differ,
each group becomes an account of its own, named `<owner> (<plan>)`, and `#2`, `#3` after that
when the name is still taken; so no key gets more or less than it was allowed before:
- keys of one owner on different plans: one account per plan, each keeping its plan;
- a key with its own limits (which replaced its plan's): an account whose own limits they are,
  with the other keys of that owner, plan and limits.
`api_keys.owner` stays, as the key's label. Revoked keys move too, so `keys list` still shows them.

Downgrade: each key gets its account's plan back, its account's own limits where it has none of
its own, and its account's block where it has none; the accounts are dropped.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from {{ cookiecutter.package_name }}.plans.grammar import LIMITS_PATTERN

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME_LENGTH = 200


def _create_accounts() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    checks = []
    if postgres:  # as 0006 has them on api_keys (SQLite: the CLI's validation on write)
        pattern = LIMITS_PATTERN.replace("'", "''")
        checks = [
            sa.CheckConstraint(
                f"limits IS NULL OR limits ~* '{pattern}'", name=op.f("ck_accounts_limits_grammar")
            ),
            sa.CheckConstraint("name !~ '[[:cntrl:]]'", name=op.f("ck_accounts_name_printable")),
            sa.CheckConstraint(
                "blocked_reason !~ '[[:cntrl:]]'", name=op.f("ck_accounts_blocked_reason_printable")
            ),
        ]
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=NAME_LENGTH), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("limits", sa.String(length=255), nullable=True),
        sa.Column("route_limits", sa.JSON(), nullable=True),
        sa.Column("blocked_reason", sa.String(length=200), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_accounts_plan_id_plans")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
        *checks,
    )
    op.create_index(op.f("ix_accounts_plan_id"), "accounts", ["plan_id"], unique=False)


def account_names(groups: list[tuple[str, str]]) -> list[str]:
    """A unique account name for each (owner, plan name) group, in order: the owner's name where
    the owner has one group, `<owner> (<plan>)` where it has more, then `#2`, `#3`... while
    taken. Names stay within the column's length (the owner's part is cut)."""
    groups_of: dict[str, int] = {}
    for owner, _plan in groups:
        groups_of[owner] = groups_of.get(owner, 0) + 1
    taken: set[str] = set()
    names = []
    for owner, plan in groups:
        suffix = "" if groups_of[owner] == 1 else f" ({plan})"
        number = 1
        while True:
            tail = suffix + (f" #{number}" if number > 1 else "")
            name = owner[: NAME_LENGTH - len(tail)] + tail
            if name not in taken:
                break
            number += 1
        taken.add(name)
        names.append(name)
    return names


def _move_keys_into_accounts() -> None:
    bind = op.get_bind()
    keys = sa.table(
        "api_keys",
        sa.column("id", sa.Integer()),
        sa.column("owner", sa.String()),
        sa.column("plan_id", sa.Integer()),
        sa.column("limits", sa.String()),
        sa.column("route_limits", sa.JSON()),
        sa.column("account_id", sa.Integer()),
    )
    plans = sa.table("plans", sa.column("id", sa.Integer()), sa.column("name", sa.String()))
    accounts = sa.table(
        "accounts",
        sa.column("id", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("plan_id", sa.Integer()),
        sa.column("limits", sa.String()),
        sa.column("route_limits", sa.JSON()),
    )
    rows = bind.execute(
        sa.select(
            keys.c.id,
            keys.c.owner,
            keys.c.plan_id,
            plans.c.name,
            keys.c.limits,
            keys.c.route_limits,
        )
        .join(plans, plans.c.id == keys.c.plan_id)
        .order_by(keys.c.id)
    ).all()
    # (owner, plan id, limits, route limits as text) -> key ids, in the order keys were made
    groups: dict[tuple[str, int, str | None, str], list[int]] = {}
    plan_names: dict[int, str] = {}
    route_limits: dict[str, object] = {}
    for key_id, owner, plan_id, plan_name, limits, routes in rows:
        own_routes = routes or None
        group = (owner, plan_id, limits, repr(sorted(own_routes.items())) if own_routes else "")
        groups.setdefault(group, []).append(key_id)
        plan_names[plan_id] = plan_name
        route_limits[group[3]] = own_routes
    # Per owner and plan first: `<owner> (<plan>)`; keys with other own limits get `#2`...
    labels = [(owner, plan_names[plan_id]) for owner, plan_id, _, _ in groups]
    for (group, key_ids), name in zip(groups.items(), account_names(labels), strict=True):
        owner, plan_id, limits, routes_text = group
        account_id = bind.execute(
            sa.insert(accounts)
            .values(
                name=name,
                plan_id=plan_id,
                limits=limits,
                route_limits=route_limits[routes_text] or sa.null(),
            )
            .returning(accounts.c.id)
        ).scalar_one()
        bind.execute(
            sa.update(keys)
            .where(keys.c.id.in_(key_ids))
            .values(account_id=account_id, limits=None, route_limits=sa.null())
        )


def upgrade() -> None:
    _create_accounts()
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("account_id", sa.Integer(), nullable=True))
    _move_keys_into_accounts()
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("account_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(
            op.f("fk_api_keys_account_id_accounts"), "accounts", ["account_id"], ["id"]
        )
        batch.create_index(op.f("ix_api_keys_account_id"), ["account_id"], unique=False)
        batch.drop_index(op.f("ix_api_keys_plan_id"))
        batch.drop_constraint(op.f("fk_api_keys_plan_id_plans"), type_="foreignkey")
        batch.drop_column("plan_id")


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("plan_id", sa.Integer(), nullable=True))
    keys = sa.table(
        "api_keys",
        sa.column("id", sa.Integer()),
        sa.column("account_id", sa.Integer()),
        sa.column("plan_id", sa.Integer()),
        sa.column("limits", sa.String()),
        sa.column("route_limits", sa.JSON()),
        sa.column("blocked_reason", sa.String()),
    )
    accounts = sa.table(
        "accounts",
        sa.column("id", sa.Integer()),
        sa.column("plan_id", sa.Integer()),
        sa.column("limits", sa.String()),
        sa.column("route_limits", sa.JSON()),
        sa.column("blocked_reason", sa.String()),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(
            keys.c.id,
            keys.c.limits,
            keys.c.route_limits,
            keys.c.blocked_reason,
            accounts.c.plan_id,
            accounts.c.limits,
            accounts.c.route_limits,
            accounts.c.blocked_reason,
        ).join(accounts, accounts.c.id == keys.c.account_id)
    ).all()
    for key_id, limits, routes, blocked, plan_id, own_limits, own_routes, own_block in rows:
        values: dict[str, object] = {"plan_id": plan_id}
        if limits is None and not routes and (own_limits is not None or own_routes):
            # A key's own limits replaced its plan's before this revision: the account's are
            # what its keys were allowed, where a key has none of its own.
            values.update(limits=own_limits, route_limits=own_routes or sa.null())
        if blocked is None and own_block is not None:
            values["blocked_reason"] = own_block
        bind.execute(sa.update(keys).where(keys.c.id == key_id).values(**values))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("plan_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(op.f("fk_api_keys_plan_id_plans"), "plans", ["plan_id"], ["id"])
        batch.create_index(op.f("ix_api_keys_plan_id"), ["plan_id"], unique=False)
        batch.drop_index(op.f("ix_api_keys_account_id"))
        batch.drop_constraint(op.f("fk_api_keys_account_id_accounts"), type_="foreignkey")
        batch.drop_column("account_id")
    op.drop_index(op.f("ix_accounts_plan_id"), table_name="accounts")
    op.drop_table("accounts")
