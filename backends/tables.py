"""The SQL schema, shared by the SQL key store and the alembic migrations (`target_metadata`)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["keys", "metadata", "spend", "tokens", "usage", "users"]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("app_id", String(128), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("revoked_at", BigInteger, nullable=True),
    Column("caps", Text, nullable=True),
)

keys = Table(
    "keys",
    metadata,
    Column(
        "user_id",
        String(64),
        ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("provider", String(64), primary_key=True),
    Column("record", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("hint", String(32), nullable=False, server_default=""),
    Column("status", String(16), nullable=False, server_default="unverified"),
    Column("verified_at", BigInteger, nullable=True),
    Column("last_used_at", BigInteger, nullable=True),
)

# Narrow tokens. A child cascades with its parent: in Postgres the key's lock is also what makes a
# child minted while its parent is deleted either fail or go with it.
tokens = Table(
    "tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("parent_id", String(64), ForeignKey("tokens.id", ondelete="CASCADE"), nullable=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False),
    Column("limits", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("last_used_at", BigInteger, nullable=True),
)

# What a user's spending caps have counted, per cap and period.
spend = Table(
    "spend",
    metadata,
    Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("counter", String(160), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

usage = Table(
    "usage",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    # Cascades with the user; record_usage's filter and this key together make erasure final.
    Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("app_id", String(128), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(256), nullable=True),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("outcome", String(16), nullable=False, server_default="completed"),
    Column("cache_read_tokens", BigInteger, nullable=True),
    Column("cache_write_tokens", BigInteger, nullable=True),
    Column("reasoning_tokens", BigInteger, nullable=True),
    Column("cost_micros", BigInteger, nullable=True),
    Column("price_version", String(32), nullable=True),
    # No foreign key: the records of a revoked narrow token stay the account's.
    Column("token_id", String(64), nullable=True),
)

Index("ix_users_app_id", users.c.app_id)
Index("ix_tokens_user_id", tokens.c.user_id)
Index("ix_tokens_parent_id", tokens.c.parent_id)  # the cascade from a parent
Index("ix_usage_user_id_created_at", usage.c.user_id, usage.c.created_at)
Index("ix_usage_app_id_created_at", usage.c.app_id, usage.c.created_at)
Index("ix_usage_created_at", usage.c.created_at)  # pruning by age
