"""usage records count cache reads, cache writes and reasoning tokens too

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS = ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def upgrade() -> None:
    # Older records did not count them: NULL, as for a provider that reported none.
    with op.batch_alter_table("usage") as batch:
        for name in _KINDS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        for name in reversed(_KINDS):
            batch.drop_column(name)
