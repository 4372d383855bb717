"""Plans get a priority: under overload the lowest priorities are shed first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

`anonymous` is 0, the lowest; the other seeded plans follow in seed_plans.json's order (free 1,
pro 2, enterprise 3 with the default answers), so every paying plan ranks above the ones before
it. A plan created before this migration by the CLI gets 1, as `plans create` gives one now.
The CHECK keeps a negative priority, which would shed its plan at any lag, out of the table.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = "ck_plans_priority_not_negative"
ANONYMOUS = "anonymous"
SEEDED: list[str] = list(
    json.loads((Path(__file__).resolve().parents[1] / "seed_plans.json").read_text())
)

plans = sa.table("plans", sa.column("name", sa.String), sa.column("priority", sa.Integer))


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.create_check_constraint(op.f(CONSTRAINT), "priority >= 0")  # as written
    op.execute(plans.update().where(plans.c.name != ANONYMOUS).values(priority=1))
    ranked = [name for name in SEEDED if name != ANONYMOUS]
    for priority, name in enumerate(ranked, start=1):
        op.execute(plans.update().where(plans.c.name == name).values(priority=priority))


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.drop_constraint(op.f(CONSTRAINT), type_="check")
        batch.drop_column("priority")
