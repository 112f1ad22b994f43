"""The ledger's rows, summed the same way whether a store grouped its records (SQL) or read them
whole (Redis). `usage_ledger`'s contract is on `base.KeyStore`."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable

from .base import LEDGER_GROUPS, TOKEN_KINDS, LedgerRow

__all__ = ["DAY_MS", "GROUP_FIELDS", "Part", "check_group", "rows_of"]

DAY_MS = 86_400_000
GROUP_FIELDS = {"app": "app_id", "provider": "provider", "model": "model"}
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


def check_group(group_by: str) -> None:
    if group_by not in LEDGER_GROUPS:
        raise ValueError(f"usage_ledger: group_by must be one of {', '.join(LEDGER_GROUPS)}")


def _key(group: str | int | None, group_by: str) -> str | None:
    if group_by == "day" and isinstance(group, int):
        return datetime.datetime.fromtimestamp(group * 86_400, datetime.UTC).date().isoformat()
    return None if group is None else str(group)


def rows_of(parts: Iterable[Part], group_by: str) -> list[LedgerRow]:
    requests: dict[str | None, int] = {}
    errors: dict[str | None, int] = {}
    tokens: dict[str | None, list[int]] = {}
    outcomes: dict[str | None, dict[str, int]] = {}
    for part in parts:
        key = _key(part.group, group_by)
        requests[key] = requests.get(key, 0) + part.requests
        errors[key] = errors.get(key, 0) + part.errors
        sums = tokens.setdefault(key, [0] * len(TOKEN_KINDS))
        for i, n in enumerate(part.tokens):
            sums[i] += n
        counts = outcomes.setdefault(key, {})
        counts[part.outcome] = counts.get(part.outcome, 0) + part.requests
    order = sorted(requests, key=lambda key: (key is None, key or ""))
    return [
        LedgerRow(
            key=key,
            requests=requests[key],
            errors=errors[key],
            tokens=dict(zip(TOKEN_KINDS, tokens[key], strict=True)),
            outcomes=outcomes[key],
        )
        for key in order
    ]
