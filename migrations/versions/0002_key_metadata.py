"""non-secret key metadata: hint, status, verified and last-used times

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.add_column(sa.Column("hint", sa.String(32), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("status", sa.String(16), nullable=False, server_default="unverified")
        )
        batch.add_column(sa.Column("verified_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("keys") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("verified_at")
        batch.drop_column("status")
        batch.drop_column("hint")
