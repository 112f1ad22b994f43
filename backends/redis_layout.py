"""How the Redis key store lays out its data in a shared server, every key under one namespace.

Layout, for namespace `ns` (every name built by `redis_key`):

    ns:token:<token digest>   user record (hash: v, id, app_id, created_at, expires_at?,
                              revoked_at?, caps?): found by its token in one HGETALL
    ns:user:<user id>         the user's token digest, to reach the record above by id
    ns:keys:<user id>         hash: provider -> key entry
    ns:keyinfo:<user id>      hash: "<provider>:<field>" -> value, for each of `INFO_FIELDS`
    ns:usage:<user id>        list of usage records (JSON, "v": 1; "outcome" and the token
                              kinds beyond input and output only in those written since
                              they exist), the newest 10 000 kept
    ns:token:<narrow digest>  a narrow token (hash: v, owner: its account's token digest, user,
                              child_id, child: its entry); found with its account's record
                              and last use by one script
    ns:children:<user id>     hash: narrow token id -> its entry (JSON, "v": 1, with its digest),
                              "<id>:used" -> when it was last used
    ns:spend:<user id>        hash: spending counter -> amount (`KeyStore.reserve`)
    ns:spendexp:<user id>     hash: spending counter -> when its period ends (epoch ms)
    ns:app:<app id>           set of the app's user ids
    ns:limits:<limit key>     the rate limits' counters (`relay.server.redislimits`)

A key entry is `0x01 | created_at (8 bytes) | updated_at (8 bytes) | record` (`ENTRY`). The store
needs no migrations: the version byte and `"v"` field let a later format be read beside this one.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import struct
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .base import (
    DAY_MS,
    TOKEN_KINDS,
    UNVERIFIED,
    ChildToken,
    KeyInfo,
    KeyMeta,
    StoreError,
    UsageStats,
    User,
)
from .ledger import GROUP_FIELDS, Part

__all__ = [
    "ENTRY",
    "INFO_FIELDS",
    "RECORD_VERSION",
    "child_entry",
    "child_fields",
    "child_from_entry",
    "info_field",
    "info_fields",
    "key_info",
    "ledger_part",
    "meta_fields",
    "redis_key",
    "text",
    "usage_stats_of",
    "user_fields",
    "user_from_hash",
    "user_from_lookup",
]

RECORD_VERSION: Final = 1
ENTRY: Final = struct.Struct(">BQQ")
# The ending of a record written before outcomes were stored, as the SQL migration 0004 reads it.
_OUTCOME_OF_STATUS: Final = {
    499: "client_cancelled",
    504: "upstream_timeout",
    502: "upstream_error",
}

# KeyInfo's fields kept in the key info hash; the provider and the two times are the entry's.
INFO_FIELDS: Final = tuple(
    field.name
    for field in dataclasses.fields(KeyInfo)
    if field.name not in ("provider", "created_at", "updated_at")
)
# A field missing from the hash reads as a key stored without metadata has it.
_INFO_DEFAULTS: Final[Mapping[str, object]] = {
    **dict.fromkeys(INFO_FIELDS),
    **dataclasses.asdict(UNVERIFIED),
}
_INFO_NUMBERS: Final = frozenset(
    name for name, kind in typing.get_type_hints(KeyInfo).items() if kind == int | None
)


def redis_key(namespace: str, *parts: str) -> str:
    """`namespace:part:...`: the name of every key in the shared Redis (`redis_key(ns, "token",
    "")` is the prefix of all token keys)."""
    return ":".join((namespace, *parts))


def info_field(provider: str, name: str) -> str:
    """The key info hash's field for `provider`'s `name` (one of `INFO_FIELDS`)."""
    return f"{provider}:{name}"


def info_fields(provider: str) -> list[str]:
    """Every field the key info hash may hold for `provider`."""
    return [info_field(provider, name) for name in INFO_FIELDS]


def meta_fields(provider: str, meta: KeyMeta) -> list[str | int]:
    """The key info hash's field/values for `provider`'s key stored with `meta` (None left out)."""
    return [
        item
        for name, value in dataclasses.asdict(meta).items()
        if value is not None
        for item in (info_field(provider, name), value)
    ]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def key_info(provider: str, entry: bytes, fields: Mapping[str, str]) -> KeyInfo:
    """The `KeyInfo` of `provider`'s key entry, with the key info hash's `fields`."""
    _, created_at, updated_at = ENTRY.unpack_from(entry)
    info: dict[str, Any] = {}
    for name in INFO_FIELDS:
        value = fields.get(info_field(provider, name))
        if value is None:
            info[name] = _INFO_DEFAULTS[name]
        else:
            info[name] = int(value) if name in _INFO_NUMBERS else value
    return KeyInfo(provider=provider, created_at=created_at, updated_at=updated_at, **info)


def user_fields(user: User) -> list[str | int]:
    """The field/values of `user`'s record hash (absent times left out)."""
    fields: list[str | int] = [
        "v",
        RECORD_VERSION,
        "id",
        user.id,
        "app_id",
        user.app_id,
        "created_at",
        user.created_at,
    ]
    if user.expires_at is not None:
        fields += ["expires_at", user.expires_at]
    if user.revoked_at is not None:
        fields += ["revoked_at", user.revoked_at]
    if user.caps is not None:
        fields += ["caps", user.caps]
    return fields


def user_from_hash(data: dict[str, str]) -> User:
    if data.get("v") != str(RECORD_VERSION):
        raise StoreError("user record of unknown format version")

    def optional_int(name: str) -> int | None:
        value = data.get(name)
        return None if value is None else int(value)

    return User(
        id=data["id"],
        app_id=data["app_id"],
        created_at=int(data["created_at"]),
        expires_at=optional_int("expires_at"),
        revoked_at=optional_int("revoked_at"),
        caps=data.get("caps"),
    )


def child_entry(child: ChildToken, token_hash: str) -> str:
    """The entry of a narrow token in its account's children hash (its last use kept apart)."""
    fields = dataclasses.asdict(child)
    del fields["last_used_at"]
    return json.dumps({"v": RECORD_VERSION, **fields, "digest": token_hash})


def child_fields(child: ChildToken, owner_digest: str, entry: str) -> list[str]:
    """The field/values of a narrow token's own key (`entry` as `child_entry` made it)."""
    return ["v", str(RECORD_VERSION), "owner", owner_digest, "user", child.user_id,
            "child_id", child.id, "child", entry]  # fmt: skip


def child_from_entry(entry: str, used: str | None) -> ChildToken:
    fields = json.loads(entry)
    if fields.pop("v", None) != RECORD_VERSION:
        raise StoreError("narrow token of unknown format version")
    del fields["digest"]
    return ChildToken(**fields, last_used_at=int(used) if used else None)


def user_from_lookup(found: Sequence[Any]) -> User | None:
    """The user `USERS_FOR_TOKENS` found for one digest: the hash it read, then for a narrow
    token its account's hash and last use; None for no token or an account gone."""
    own = _as_hash(found[0])
    if not own:
        return None
    if "owner" not in own:
        return user_from_hash(own)
    account = _as_hash(found[1])
    if not account:
        return None
    child = child_from_entry(own["child"], text(found[2]))
    return dataclasses.replace(user_from_hash(account), child=child)


def _as_hash(flat: Sequence[bytes | str]) -> dict[str, str]:
    return {text(k): text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def ledger_part(record: dict[str, Any], group_by: str) -> Part:
    """One stored usage record as its ledger group's part."""
    # A record written before a field existed lacks it (a token's: the account's own).
    day = group_by == "day"
    group = record["created_at"] // DAY_MS if day else record.get(GROUP_FIELDS[group_by])
    return Part(
        group,
        _outcome_of(record),
        1,
        int(record["status"] >= 400),
        tuple(record.get(f"{kind}_tokens") or 0 for kind in TOKEN_KINDS),
        record.get("cost_micros") or 0,
        int(_unpriced(record)),
    )


def _unpriced(record: dict[str, Any]) -> bool:
    # `UsageStats.unpriced`'s, of a record as stored (one written before costs lacks the field).
    return record.get("cost_micros") is None and bool(
        record.get("input_tokens") or record.get("output_tokens")
    )


def _outcome_of(record: dict[str, Any]) -> str:
    # Records written before outcomes existed read as the SQL migration backfilled them.
    outcome = record.get("outcome")
    return str(outcome or _OUTCOME_OF_STATUS.get(record["status"], "completed"))


def usage_stats_of(records: Sequence[dict[str, Any]], now: int) -> UsageStats:
    """The totals `usage_stats` reports, from usage records as stored."""
    errors = [r for r in records if r["status"] >= 400]
    providers: dict[str, dict[str, int]] = {}
    models: collections.Counter[str] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    for r in records:
        counts = providers.setdefault(r["provider"], {"total": 0, "errors": 0})
        counts["total"] += 1
        counts["errors"] += r["status"] >= 400
        if r["model"] is not None:
            models[r["model"]] += 1
        outcomes[_outcome_of(r)] += 1
    return UsageStats(
        total=len(records),
        last_7d=sum(r["created_at"] >= now - 7 * DAY_MS for r in records),
        last_30d=sum(r["created_at"] >= now - 30 * DAY_MS for r in records),
        error_count=len(errors),
        providers=providers,
        top_models=sorted(models.items(), key=lambda item: (-item[1], item[0]))[:10],
        last_request=max((r["created_at"] for r in records), default=None),
        outcomes=dict(outcomes),
        cost_micros=sum(r.get("cost_micros") or 0 for r in records),
        unpriced=sum(_unpriced(r) for r in records),
        # Records written before a kind was counted lack it.
        **{
            f"{kind}_tokens": sum(r.get(f"{kind}_tokens") or 0 for r in records)
            for kind in TOKEN_KINDS
        },
    )
