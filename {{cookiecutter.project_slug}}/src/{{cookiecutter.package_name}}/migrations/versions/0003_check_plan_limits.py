"""The database refuses plan limits the service cannot read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

A CHECK constraint on `plans.limits` with the service's own grammar (plans/plan.py), so a row
written by plain SQL cannot carry `10/fortnight`. On Postgres it is added NOT VALID: rows
written before this migration are not re-checked here (the service treats a bad row as an
unavailable plan, and logs it), every write from now on is. SQLite has no regular expressions:
there the constraint only refuses an empty value, and the CLI's validation on write does the
rest. Per-route limits (a JSON object) are validated on write by the CLI only.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The grammar as it was at this revision (migration 0006 bounds it): a migration keeps
# doing what it did, whatever the code becomes.
LIMITS_PATTERN = (
    r"^\s*0*[1-9][0-9]*\s*(/|\s*per\s*)\s*(0*[1-9][0-9]*)?\s*(second|minute|hour|day|month|year)s?"
    r"\s*([,;|]\s*0*[1-9][0-9]*\s*(/|\s*per\s*)\s*(0*[1-9][0-9]*)?\s*"
    r"(second|minute|hour|day|month|year)s?\s*)*$"
)

CONSTRAINT = "ck_plans_limits_grammar"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        pattern = LIMITS_PATTERN.replace("'", "''")
        op.execute(
            f"ALTER TABLE plans ADD CONSTRAINT {CONSTRAINT} CHECK (limits ~* '{pattern}') NOT VALID"
        )
    else:
        with op.batch_alter_table("plans") as batch:
            batch.create_check_constraint(CONSTRAINT, "trim(limits) != ''")


def downgrade() -> None:
    # On Postgres the name is as written above; on SQLite the models' naming convention was
    # applied to it (ck_plans_ck_...), and is applied again here, so both find it.
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("plans") as batch:
        batch.drop_constraint(op.f(CONSTRAINT) if postgres else CONSTRAINT, type_="check")
