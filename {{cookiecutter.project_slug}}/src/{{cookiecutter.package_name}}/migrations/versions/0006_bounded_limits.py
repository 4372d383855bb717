"""The database refuses limits past the grammar's bounds, and control characters in free text.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

The CHECK constraints of migrations 0003 and 0005 on `plans.limits`, `plans.shadow_limits` and
`api_keys.limits` take the bounded grammar (plans/grammar.py): `10/9999999999 years` would
break every script call of its key, `99999999999999999999999/minute` overflow the counters and
headers. `api_keys.owner` and `api_keys.blocked_reason` (printed by `keys list`, the reason
sent to clients) refuse control characters, so no row can carry a terminal escape. Added NOT
VALID, as in 0003: rows written before are not re-checked (the service treats a plan or key it
cannot read as unavailable, and logs it); every write from now on is. Postgres only: SQLite has
no regular expressions, and there the CLI's validation on write is the check.
"""

from collections.abc import Sequence

from alembic import op

from {{ cookiecutter.package_name }}.plans.grammar import LIMITS_PATTERN

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The grammar of 0003 and 0005, restored on the way down.
UNBOUNDED_PATTERN = (
    r"^\s*0*[1-9][0-9]*\s*(/|\s*per\s*)\s*(0*[1-9][0-9]*)?\s*(second|minute|hour|day|month|year)s?"
    r"\s*([,;|]\s*0*[1-9][0-9]*\s*(/|\s*per\s*)\s*(0*[1-9][0-9]*)?\s*"
    r"(second|minute|hour|day|month|year)s?\s*)*$"
)
# (table, column, constraint, whether the column may be NULL)
LIMIT_COLUMNS = [
    ("plans", "limits", "ck_plans_limits_grammar", False),
    ("plans", "shadow_limits", "ck_plans_shadow_limits_grammar", True),
    ("api_keys", "limits", "ck_api_keys_limits_grammar", True),
]
# (table, column, constraint): free text with no control characters
TEXT_COLUMNS = [
    ("api_keys", "owner", "ck_api_keys_owner_printable"),
    ("api_keys", "blocked_reason", "ck_api_keys_blocked_reason_printable"),
]


def _limit_checks(pattern: str) -> None:
    quoted = pattern.replace("'", "''")
    for table, column, constraint, nullable in LIMIT_COLUMNS:
        check = f"{column} ~* '{quoted}'"
        if nullable:
            check = f"{column} IS NULL OR {check}"
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({check}) NOT VALID")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _limit_checks(LIMITS_PATTERN)
    for table, column, constraint in TEXT_COLUMNS:
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {constraint} "
            f"CHECK ({column} !~ '[[:cntrl:]]') NOT VALID"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, _column, constraint in TEXT_COLUMNS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
    _limit_checks(UNBOUNDED_PATTERN)
