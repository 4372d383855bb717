"""Seed the plans chosen when the service was generated (see seed_plans.json).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import json
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written once by cookiecutter from its answers; later changes go through the CLI, not here.
SEED_PLANS: dict[str, str] = json.loads(
    (Path(__file__).resolve().parents[1] / "seed_plans.json").read_text()
)

plans = sa.table(
    "plans",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("limits", sa.String),
    sa.column("route_limits", sa.JSON),
    sa.column("is_active", sa.Boolean),
)


def upgrade() -> None:
    op.bulk_insert(
        plans,
        [
            {"name": name, "limits": limits, "route_limits": {}, "is_active": True}
            for name, limits in SEED_PLANS.items()
        ],
    )


def downgrade() -> None:
    # Plans that keys still use stay: removing them is revision 0001's downgrade, with the keys.
    in_use = sa.select(sa.table("api_keys", sa.column("plan_id")).c.plan_id)
    op.execute(plans.delete().where(plans.c.name.in_(list(SEED_PLANS)), plans.c.id.not_in(in_use)))
