"""Per-key limits and blocks, and shadow limits on plans.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

`api_keys.limits` / `api_keys.route_limits` give one key its own limits in place of its plan's;
`api_keys.blocked_reason` refuses a key (403, with that reason) without revoking it;
`plans.shadow_limits` are counted and logged but never refuse (a limit being rolled out).
Both limit columns carry the CHECK constraint of `plans.limits` (migration 0003): the same
grammar, refused by the database whoever writes. All new columns are empty for existing rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The grammar as it was at this revision (migration 0006 bounds it): a migration keeps
# doing what it did, whatever the code becomes.
LIMITS_PATTERN = (
    r"^\s*0*[1-9][0-9]*\s*(/|\s*per\s*)\s*(0*[1-9][0-9]*)?\s*(second|minute|hour|day|month|year)s?"
    r"\s*([,;|]\s*0*[1-9][0-9]*\s*(/|\s*per\s*)\s*(0*[1-9][0-9]*)?\s*"
    r"(second|minute|hour|day|month|year)s?\s*)*$"
)

# (table, column, constraint) of the limit columns this revision adds
LIMIT_COLUMNS = [
    ("api_keys", "limits", "ck_api_keys_limits_grammar"),
    ("plans", "shadow_limits", "ck_plans_shadow_limits_grammar"),
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    pattern = LIMITS_PATTERN.replace("'", "''")
    for table, column, constraint in LIMIT_COLUMNS:
        # SQLite has no regular expressions: there the CLI's validation on write does the rest.
        check = f"{column} ~* '{pattern}'" if postgres else f"trim({column}) != ''"
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(column, sa.String(255), nullable=True))
            # op.f(): the name as written, not run through the models' naming convention again
            batch.create_check_constraint(op.f(constraint), f"{column} IS NULL OR {check}")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("route_limits", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("blocked_reason", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("blocked_reason")
        batch.drop_column("route_limits")
    for table, column, constraint in LIMIT_COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(constraint), type_="check")
            batch.drop_column(column)
