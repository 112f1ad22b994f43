"""spending caps: the owner's caps kept with the user, and what each has counted

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("caps", sa.Text(), nullable=True))
    op.create_table(
        "spend",
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("counter", sa.String(160), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_spend_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "counter", name="pk_spend"),
    )


def downgrade() -> None:
    op.drop_table("spend")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("caps")
