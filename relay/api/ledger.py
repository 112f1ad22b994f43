"""`GET /usage` and `GET /usage.csv`: the caller's own usage records, summed by day, app,
provider or model over a span they choose (the key owner's ledger)."""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Mapping
from typing import Annotated, Final

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from backends import DAY_MS, LEDGER_GROUPS, OUTCOMES, TOKEN_KINDS, LedgerRow
from relay.api.shapes import Count, answer
from relay.api.stats import NO_STORE, Cost, Tokens, cost_of
from relay.errors import BadRequest
from relay.security.auth import authenticate, now_ms
from relay.services import Services

__all__ = ["Ledger", "LedgerEntry", "ledger_csv", "ledger_json", "span_of"]

DEFAULT_SPAN_DAYS: Final = 30
MAX_SPAN_DAYS: Final = 400
# A cell a spreadsheet would run as a formula (a model or app name is anyone's text).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


class LedgerEntry(msgspec.Struct):
    key: Annotated[
        str | None,
        Meta(
            description="The day (`YYYY-MM-DD`, UTC), app, provider or model; null: records "
            "of no known model."
        ),
    ]
    requests: Count
    errors: Count
    tokens: Tokens
    cost: Cost
    outcomes: dict[str, Count]


class Ledger(msgspec.Struct, kw_only=True):
    start: Annotated[int, Meta(description="Epoch ms, included.")] = msgspec.field(name="from")
    end: Annotated[int, Meta(description="Epoch ms, excluded.")] = msgspec.field(name="to")
    group_by: Annotated[str, Meta(extra_json_schema={"enum": list(LEDGER_GROUPS)})]
    rows: list[LedgerEntry]
    total: LedgerEntry


def _instant(name: str, value: str, *, end: bool) -> int:
    """Epoch ms, a date (`to`: the end of that day) or an ISO 8601 time (UTC unless it says)."""
    if value.isascii() and value.isdigit() and len(value) <= 15:
        return int(value)
    try:
        if len(value) == 10:
            day = datetime.date.fromisoformat(value)
            moment = datetime.datetime.combine(day, datetime.time(), datetime.UTC)
            return int(moment.timestamp() * 1000) + (DAY_MS if end else 0)
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"{name} must be epoch milliseconds, a date (YYYY-MM-DD) or an ISO 8601 time",
            code="invalid_query",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


def span_of(query: Mapping[str, str], now: int) -> tuple[int, int, str]:
    """(from, to, group_by) of a ledger request, checked."""
    group_by = query.get("group_by", "day")
    if group_by not in LEDGER_GROUPS:
        raise BadRequest(
            f"group_by must be one of: {', '.join(LEDGER_GROUPS)}", code="invalid_query"
        )
    # By default up to now, this millisecond included: a request that ended in it is counted.
    end = _instant("to", query["to"], end=True) if "to" in query else now + 1
    start = (
        _instant("from", query["from"], end=False)
        if "from" in query
        else end - DEFAULT_SPAN_DAYS * DAY_MS
    )
    if start >= end:
        raise BadRequest("from must be before to", code="invalid_query")
    if end - start > MAX_SPAN_DAYS * DAY_MS:
        raise BadRequest(f"A span may cover {MAX_SPAN_DAYS} days at most", code="invalid_query")
    return start, end, group_by


def _entry(row: LedgerRow) -> LedgerEntry:
    return LedgerEntry(
        key=row.key,
        requests=row.requests,
        errors=row.errors,
        tokens=Tokens(**row.tokens),
        cost=cost_of(row.cost_micros, row.unpriced),
        outcomes={outcome: row.outcomes.get(outcome, 0) for outcome in OUTCOMES},
    )


def _total(rows: list[LedgerRow]) -> LedgerEntry:
    outcomes = {o: sum(r.outcomes.get(o, 0) for r in rows) for o in OUTCOMES}
    return LedgerEntry(
        key=None,
        requests=sum(r.requests for r in rows),
        errors=sum(r.errors for r in rows),
        tokens=Tokens(**{kind: sum(r.tokens[kind] for r in rows) for kind in TOKEN_KINDS}),
        cost=cost_of(sum(r.cost_micros for r in rows), sum(r.unpriced for r in rows)),
        outcomes=outcomes,
    )


async def _ledger(request: Request) -> tuple[int, int, str, list[LedgerRow]]:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers)
    start, end, group_by = span_of(request.query_params, now_ms())
    await services.usage.flush()  # the caller's latest request is counted
    return start, end, group_by, await services.store.usage_ledger(user.id, start, end, group_by)


async def ledger_json(request: Request) -> Response:
    start, end, group_by, rows = await _ledger(request)
    ledger = Ledger(
        start=start,
        end=end,
        group_by=group_by,
        rows=[_entry(row) for row in rows],
        total=_total(rows),
    )
    return answer(ledger, headers=NO_STORE)


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


async def ledger_csv(request: Request) -> Response:
    start, end, group_by, rows = await _ledger(request)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        [
            group_by,
            "requests",
            "errors",
            *(f"{k}_tokens" for k in TOKEN_KINDS),
            "cost_usd",
            "unpriced",
            *OUTCOMES,
        ]
    )
    for row in rows:
        writer.writerow(
            [
                _cell(row.key or ""),
                row.requests,
                row.errors,
                *(row.tokens[kind] for kind in TOKEN_KINDS),
                cost_of(row.cost_micros, row.unpriced).usd,
                row.unpriced,
                *(row.outcomes.get(outcome, 0) for outcome in OUTCOMES),
            ]
        )
    disposition = f'attachment; filename="usage-by-{group_by}-{start}-{end}.csv"'
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={**NO_STORE, "content-disposition": disposition},
    )
