"""usage records say how the exchange ended, and go with their user

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What an older record's status says of its ending: the relay's own 499, 504 and 502 marked a
# client that left, an upstream that timed out and one that failed. Anything else completed.
_OUTCOME_OF_STATUS = {499: "client_cancelled", 504: "upstream_timeout", 502: "upstream_error"}

_usage = sa.table(
    "usage", sa.column("user_id"), sa.column("status", sa.Integer()), sa.column("outcome")
)
_users = sa.table("users", sa.column("id"))


def upgrade() -> None:
    # Rows of users erased while their records were in flight would fail the new foreign key.
    op.execute(_usage.delete().where(~sa.exists().where(_users.c.id == _usage.c.user_id)))
    with op.batch_alter_table("usage") as batch:
        batch.add_column(
            sa.Column("outcome", sa.String(16), nullable=False, server_default="completed")
        )
        batch.create_foreign_key(
            op.f("fk_usage_user_id_users"), "users", ["user_id"], ["id"], ondelete="CASCADE"
        )
    op.execute(
        _usage.update()
        .where(_usage.c.status.in_(list(_OUTCOME_OF_STATUS)))
        .values(outcome=sa.case(_OUTCOME_OF_STATUS, value=_usage.c.status))
    )


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_constraint(op.f("fk_usage_user_id_users"), type_="foreignkey")
        batch.drop_column("outcome")
