"""Postgres: a spending reservation is one call to a function, one round trip

The function does what the SQL store did in a transaction of three round trips (BEGIN, the
upsert, COMMIT, the check in between): add every counter's amount in one statement, its rows
locked in name order; answer the index of the first charge that takes its counter past its
limit, having undone the whole (a subtransaction); else delete the user's counters whose period
has ended when one began. SQLite keeps its own path: its writer thread runs the transaction
whole, with no round trips to save.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESERVE = """
CREATE OR REPLACE FUNCTION relay_reserve(
    who text, counters text[], amounts bigint[], limits bigint[], ends bigint[], at_ms bigint
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    refused integer;
    began boolean;
BEGIN
    BEGIN
        WITH adding AS (
            SELECT c AS counter, sum(a)::bigint AS amount, max(e) AS expires_at
            FROM unnest(counters, amounts, ends) AS t(c, a, e)
            GROUP BY c
        ), added AS (
            INSERT INTO spend AS s (user_id, counter, amount, expires_at)
            SELECT who, counter, amount, expires_at FROM adding ORDER BY counter
            ON CONFLICT (user_id, counter) DO UPDATE SET
                amount = CASE WHEN s.expires_at <= at_ms THEN excluded.amount
                              ELSE s.amount + excluded.amount END,
                expires_at = CASE WHEN s.expires_at <= at_ms THEN excluded.expires_at
                                  ELSE s.expires_at END
            RETURNING s.counter, s.amount
        ), charged AS (
            SELECT t.i, t.l,
                   added.amount - adding.amount
                     + sum(t.a) OVER (PARTITION BY t.c ORDER BY t.i) AS running,
                   added.amount = adding.amount AS fresh
            FROM unnest(counters, amounts, limits) WITH ORDINALITY AS t(c, a, l, i)
            JOIN added ON added.counter = t.c
            JOIN adding ON adding.counter = t.c
        )
        SELECT min(i) FILTER (WHERE running > l) - 1, bool_or(fresh)
        INTO refused, began FROM charged;
        IF refused IS NOT NULL THEN
            RAISE EXCEPTION 'refused' USING ERRCODE = 'P0001';
        END IF;
    EXCEPTION WHEN raise_exception THEN
        RETURN refused;  -- the block's changes undone; its variables kept
    END;
    IF began THEN  -- a counter began (a new period), or stood at 0: the ended ones can go
        DELETE FROM spend WHERE user_id = who AND expires_at <= at_ms;
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RESERVE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        arguments = "text, text[], bigint[], bigint[], bigint[], bigint"
        op.execute(f"DROP FUNCTION IF EXISTS relay_reserve({arguments})")
