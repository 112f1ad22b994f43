"""The ledger's rows, summed the same way whether a store grouped its records (SQL) or read them
whole (Redis). `usage_ledger`'s contract is on `base.KeyStore`."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

from .base import DAY_MS, LEDGER_GROUPS, TOKEN_KINDS, LedgerRow

__all__ = ["GROUP_FIELDS", "Part", "check_group", "rows_of"]

GROUP_FIELDS = {"app": "app_id", "provider": "provider", "model": "model", "token": "token_id"}
"""The usage record's field (and column) each group but the day is of."""


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """Records of one group and one outcome: a SQL group's sums, or one Redis record. The group
    of a day is its number of days since the epoch."""

    group: str | int | None
    outcome: str
    requests: int
    errors: int
    tokens: tuple[int, ...]
    """One sum per kind of `TOKEN_KINDS`, in its order."""
    cost_micros: int = 0
    unpriced: int = 0


def check_group(group_by: str) -> None:
    if group_by not in LEDGER_GROUPS:
        raise ValueError(f"usage_ledger: group_by must be one of {', '.join(LEDGER_GROUPS)}")


def _key(group: str | int | None, group_by: str) -> str | None:
    if group_by == "day" and isinstance(group, int):
        day = datetime.datetime.fromtimestamp(group * DAY_MS / 1000, datetime.UTC)
        return day.date().isoformat()
    return None if group is None else str(group)


@dataclasses.dataclass
class _Sum:
    requests: int = 0
    errors: int = 0
    tokens: list[int] = dataclasses.field(default_factory=lambda: [0] * len(TOKEN_KINDS))
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    cost_micros: int = 0
    unpriced: int = 0


def rows_of(parts: Iterable[Part], group_by: str) -> list[LedgerRow]:
    sums: dict[str | None, _Sum] = {}
    for part in parts:
        total = sums.setdefault(_key(part.group, group_by), _Sum())
        total.requests += part.requests
        total.errors += part.errors
        total.tokens = [a + b for a, b in zip(total.tokens, part.tokens, strict=True)]
        total.outcomes[part.outcome] = total.outcomes.get(part.outcome, 0) + part.requests
        total.cost_micros += part.cost_micros
        total.unpriced += part.unpriced
    return [
        LedgerRow(
            key,
            t.requests,
            t.errors,
            dict(zip(TOKEN_KINDS, t.tokens, strict=True)),
            t.outcomes,
            t.cost_micros,
            t.unpriced,
        )
        for key, t in sorted(sums.items(), key=lambda item: (item[0] is None, item[0] or ""))
    ]
