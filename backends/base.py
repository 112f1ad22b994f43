"""The `KeyStore` contract, written once.

A key store keeps users (found by the digest of their relay token) and, per user and provider,
one opaque record: the encrypted provider key. It never sees a token, a plaintext key, HTTP or a
provider table; it stores and returns bytes and strings exactly as given.

Every method may raise `StoreUnavailable` when the server behind the store cannot be reached
(the relay answers 503 and retries on the next request; no method leaves a partial write behind)
and `StoreError` for anything else the driver reports. Driver exceptions never escape a store.
A networked store gives each call one deadline, `StoreOptions.connect_timeout`, for everything it
waits on; past it the call raises `StoreUnavailable`, and a call that timed out is never retried.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple

__all__ = [
    "DAY_MS",
    "KEY_STATUSES",
    "LEDGER_GROUPS",
    "OUTCOMES",
    "TOKEN_KINDS",
    "UNVERIFIED",
    "Charge",
    "ChildToken",
    "KeyInfo",
    "KeyMeta",
    "KeyStore",
    "LedgerRow",
    "Outcome",
    "StoreError",
    "StoreOptions",
    "StoreUnavailable",
    "UsageRecord",
    "UsageStats",
    "User",
]

DAY_MS = 86_400_000
"""A day in the epoch milliseconds every time here is given in."""

KEY_STATUSES = ("ok", "unverified", "invalid", "no_credit")

TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")
"""The tokens a usage record counts, each as the provider reported it (its `<kind>_tokens`
field here and in `UsageStats`): OpenAI's input includes its cache reads and its output its
reasoning; Anthropic's input leaves out cache reads and writes; Gemini's output leaves out its
thoughts (`reasoning`). docs/api.md, "Usage records", has the table."""


class Outcome(enum.StrEnum):
    """How a relayed exchange ended (a usage record's `outcome`; stored as its value)."""

    COMPLETED = "completed"
    """The answer was relayed whole, whatever its status (a provider's error answer, or the
    relay's own refusal once the request was under way)."""
    CLIENT_CANCELLED = "client_cancelled"
    UPSTREAM_ERROR = "upstream_error"
    """The provider could not be reached, or its answer broke off."""
    UPSTREAM_TIMEOUT = "upstream_timeout"
    """No answer's head in time."""
    IDLE_TIMEOUT = "idle_timeout"
    """The answer went silent for too long."""
    SLOW_CLIENT = "slow_client"
    """The client took nothing for too long."""
    DRAINED = "drained"
    """Still open when the relay's drain window closed."""
    REVOKED = "revoked"
    """The token was revoked (or its account erased) while the exchange ran."""


OUTCOMES = tuple(outcome.value for outcome in Outcome)


class StoreError(Exception):
    """The store failed; the message names the operation, never a URL, password or value."""


class StoreUnavailable(StoreError):
    """The store's server could not be reached or did not answer in time: it is down or frozen
    (`backends.breaker` opens on this error, never on another)."""


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """Connection settings every networked store honours (SQLite ignores the pool ones)."""

    pool_size: int = 10
    pool_timeout: float = 5.0
    """Seconds to wait for a free pooled connection."""
    connect_timeout: float = 5.0
    """Seconds one call may take in all: waiting for a pooled connection, connecting, every
    answer (a networked store's deadline; SQLite's waits are its own busy timeout)."""
    namespace: str = "byok-relay"
    """Prefix of every key in a shared key-value server (Redis)."""
    statement_cache: bool = True
    """False: no prepared statement is kept (Postgres behind a transaction pooler)."""


@dataclasses.dataclass(frozen=True)
class ChildToken:
    """A narrow token: a second token of an account, minted by its owner (or by another narrow
    token of theirs), that the relay lets do less than the account's own."""

    id: str
    user_id: str
    parent_id: str | None
    """The narrow token it was minted with; None: the account's own token."""
    name: str
    limits: str
    """What the token may do, as the relay wrote it (JSON text); stored and returned as given."""
    created_at: int
    expires_at: int | None = None
    last_used_at: int | None = None


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    app_id: str
    created_at: int
    """Epoch milliseconds."""
    expires_at: int | None = None
    """Epoch milliseconds after which the account's token is refused; None: never."""
    revoked_at: int | None = None
    """Epoch milliseconds at which the account's token was revoked; None: it was not."""
    child: ChildToken | None = None
    """The narrow token the user was found by; None: the account's own token."""
    caps: str | None = None
    """The spending caps the owner set (`set_caps`), as the relay wrote them; None: none."""


class Charge(NamedTuple):
    """One amount reserved against one counter of a user's (a cap in one period). A tuple:
    a capped request makes several."""

    counter: str
    """Names the cap and its period; at most 160 characters."""
    amount: int
    """At least 0."""
    limit: int
    """The counter may reach it, never pass it."""
    expires_at: int
    """Epoch ms at which the counter's period ends; it is kept until then, never after."""


@dataclasses.dataclass(frozen=True)
class KeyMeta:
    """What is known about a key besides its record; nothing secret (`hint` is a few
    characters a person recognises their key by)."""

    hint: str = ""
    status: str = "unverified"
    """One of `KEY_STATUSES`."""
    verified_at: int | None = None


UNVERIFIED = KeyMeta()
"""The metadata of a key stored without any (no hint, never verified)."""


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    provider: str
    hint: str
    status: str
    created_at: int
    updated_at: int
    verified_at: int | None
    last_used_at: int | None


@dataclasses.dataclass(frozen=True)
class UsageRecord:
    """One relayed request: who, where, how it went. No content, no key."""

    user_id: str
    app_id: str
    provider: str
    model: str | None
    status: int
    """The provider's HTTP status, or the relay's own (502, 504) when it never answered."""
    latency_ms: int
    streamed: bool
    input_tokens: int | None
    output_tokens: int | None
    created_at: int
    outcome: str = Outcome.COMPLETED
    """How the exchange ended, one of `OUTCOMES`; the record of an exchange cut short carries the
    tokens counted until then."""
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_micros: int | None = None
    """What the request cost, estimated in micro-dollars (millionths of a US dollar) from the
    price table `price_version`; None when that table had no price for its model."""
    price_version: str | None = None
    token_id: str | None = None
    """The narrow token the request was made with; None: the account's own token."""


@dataclasses.dataclass(frozen=True)
class UsageStats:
    total: int
    last_7d: int
    last_30d: int
    error_count: int
    """Requests answered with a status of 400 or more."""
    providers: dict[str, dict[str, int]]
    """provider -> {"total": n, "errors": n}"""
    top_models: list[tuple[str, int]]
    """The ten most used models, most used first."""
    last_request: int | None
    input_tokens: int
    output_tokens: int
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    """outcome -> number of records, for the outcomes that occur."""
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micros: int = 0
    """The estimated cost of the records priced."""
    unpriced: int = 0
    """Records that counted input or output tokens but have no cost: their model had no price
    (or they were made before costs were kept)."""


LEDGER_GROUPS = ("day", "app", "provider", "model", "token")
"""What `usage_ledger` groups a user's records by: the UTC day they were made, their app, their
provider, their model, the narrow token they were made with."""


@dataclasses.dataclass(frozen=True)
class LedgerRow:
    """The usage records of one group."""

    key: str | None
    """The day (`YYYY-MM-DD`, UTC), app, provider, model or narrow token id; None for records of
    no known model, or made with the account's own token."""
    requests: int
    errors: int
    """Requests answered with a status of 400 or more."""
    tokens: dict[str, int]
    """Each of `TOKEN_KINDS` -> its sum."""
    outcomes: dict[str, int]
    """outcome -> number of records, for the outcomes that occur."""
    cost_micros: int = 0
    """The estimated cost of the records priced."""
    unpriced: int = 0
    """Records with tokens but no price."""


class KeyStore(abc.ABC):
    @abc.abstractmethod
    async def create_user(self, user: User, token_hash: str) -> None:
        """Store a new user reachable by `token_hash`.

        `user.id` and `token_hash` are fresh random values; a collision on either raises
        `StoreError` and stores nothing.
        """

    @abc.abstractmethod
    async def user_for_token(self, token_hash: str) -> User | None:
        """The user whose token digest is `token_hash`, or None when there is none; found by a
        narrow token, the user with that token as its `child`.

        Revoked and expired users are returned as stored; judging them is the caller's job.
        One round trip to the server.
        """

    @abc.abstractmethod
    async def users_for_tokens(self, token_hashes: Sequence[str]) -> dict[str, User]:
        """The users of those token digests that exist, keyed by digest, as `user_for_token`
        returns them; a digest with no user is absent, and no digests give `{}` without asking
        the server.

        One round trip per few hundred digests: the relay calls this every second or so with
        the tokens of all its open streams, to end those whose token is gone or revoked.
        """

    @abc.abstractmethod
    async def revoke_token(self, user_id: str, at: int) -> None:
        """Mark the account's own token revoked at `at` (epoch ms); its narrow tokens are
        found with it, revoked too. Revoking again keeps the first time; a missing user is a
        no-op. Takes effect for every reader as soon as it returns."""

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> None:
        """Erase the user, every key record, narrow token, counter and usage record of theirs,
        atomically. A missing user is a no-op."""

    @abc.abstractmethod
    async def create_child_token(
        self, child: ChildToken, token_hash: str, now: int, most: int
    ) -> bool:
        """Store a narrow token of `child.user_id`, reachable by `token_hash`.

        First the account's narrow tokens expired by `now` (epoch ms) are deleted; then, when
        `most` are left, nothing is stored and the answer is False. A missing user, a
        `parent_id` that is not one of the account's narrow tokens, or a digest or id already
        in use raises `StoreError` and stores nothing. A parent deleted meanwhile either
        refuses the child or takes it with it: no narrow token outlives the one it came from.
        """

    @abc.abstractmethod
    async def child_tokens(self, user_id: str) -> list[ChildToken]:
        """Every narrow token of the user (expired ones until the next `create_child_token`),
        oldest first; `[]` for a missing user."""

    @abc.abstractmethod
    async def delete_child_token(self, user_id: str, token_id: str) -> list[str]:
        """Delete the user's narrow token `token_id` and every one minted from it, at any
        depth, atomically; the ids deleted, `[]` when the user has no such token. Takes effect
        for every reader as soon as it returns."""

    @abc.abstractmethod
    async def touch_child_token(self, user_id: str, token_id: str, at: int) -> None:
        """Record that the narrow token was used at `at` (epoch ms); a missing one is a no-op.
        Callers throttle this, as `touch_key`."""

    @abc.abstractmethod
    async def set_caps(self, user_id: str, caps: str | None) -> None:
        """Store `caps` (None: clear them) with the user, as given: `user_for_token` returns
        them on the user from then on. A missing user is a no-op."""

    @abc.abstractmethod
    async def reserve(self, user_id: str, charges: Sequence[Charge], now: int) -> int | None:
        """Add every charge's amount to its counter, atomically, unless one would pass its
        limit: then nothing is added and the answer is that charge's index (the first such).
        None: all were added. A counter starts at 0, and one whose `expires_at` has passed by
        `now` (epoch ms) is gone. However many callers reserve at once, on however many
        instances, no counter ever passes its limit. A missing user raises `StoreError`."""

    @abc.abstractmethod
    async def settle(self, user_id: str, changes: Sequence[tuple[str, int]]) -> None:
        """Add each amount (negative ones too) to its counter, where the counter still exists;
        a counter never goes below 0. How a reservation is put right once the real amount is
        known; it may take a counter past its limit (the reservation was an estimate)."""

    @abc.abstractmethod
    async def spent(self, user_id: str, counters: Sequence[str], now: int) -> dict[str, int]:
        """The amounts of those counters that exist and have not expired by `now`."""

    @abc.abstractmethod
    async def put_key(
        self, user_id: str, provider: str, record: bytes, at: int, meta: KeyMeta = UNVERIFIED
    ) -> bool:
        """Store `record` and its `meta` as the user's key for `provider`, replacing any earlier
        one atomically (its `last_used_at` starts again at None).

        Returns True when a record was replaced, False when none existed. Concurrent writers
        to the same (user, provider) never interleave: the last write wins whole.
        `at` (epoch ms) becomes `updated_at`, and `created_at` for a new record.
        A missing user raises `StoreError`.
        """

    @abc.abstractmethod
    async def get_key(self, user_id: str, provider: str) -> bytes | None:
        """The record stored for (user, provider), or None. One round trip to the server."""

    @abc.abstractmethod
    async def list_keys(self, user_id: str) -> list[KeyInfo]:
        """What is known about each of the user's keys, sorted by provider; `[]` for a missing
        user. Never a record."""

    @abc.abstractmethod
    async def set_key_status(
        self, user_id: str, provider: str, record: bytes, status: str, verified_at: int | None
    ) -> bool:
        """Set the key's status (and `verified_at`, when given) only if its record is still
        exactly `record`: a key replaced meanwhile keeps its own status. False when it was
        replaced or deleted."""

    @abc.abstractmethod
    async def touch_key(self, user_id: str, provider: str, at: int) -> None:
        """Record that the key was used at `at` (epoch ms); a missing key is a no-op. Callers
        throttle this: it is not meant to be written on every request."""

    @abc.abstractmethod
    async def delete_key(self, user_id: str, provider: str) -> bool:
        """Delete the (user, provider) record. True if one existed; deleting again is a no-op."""

    @abc.abstractmethod
    async def record_usage(self, records: Sequence[UsageRecord]) -> None:
        """Store usage records (a batch: the relay writes them off the request path).

        A record whose user does not exist (never did, or was erased by `delete_user`) is not
        stored and is no error; the rest of the batch is. Once `delete_user` has returned, no
        record of that user is ever stored, whatever was in flight while it ran.
        """

    @abc.abstractmethod
    async def usage_stats(
        self, now: int, *, user_id: str | None = None, app_id: str | None = None
    ) -> UsageStats:
        """Totals over the usage records of one user, or of one app (exactly one of the two);
        `last_7d` and `last_30d` count back from `now` (epoch ms). Records of deleted users are
        gone (`delete_user` erases them)."""

    @abc.abstractmethod
    async def usage_ledger(
        self, user_id: str, start: int, end: int, group_by: str
    ) -> list[LedgerRow]:
        """The user's own usage records made in `[start, end)` (epoch ms), summed per group of
        `group_by` (one of `LEDGER_GROUPS`; anything else raises `ValueError`), sorted by key,
        None last. `[]` for a missing user or an empty span. One round trip."""

    @abc.abstractmethod
    async def prune_usage(self, before: int) -> int:
        """Delete the usage records of every user made before `before` (epoch ms), in batches
        that never hold a lock for long; how many were deleted. Every instance may call this at
        once. Records are kept in the order they were written, so one written after a newer one
        (instances' batches interleave by seconds) may outlive it until the next call."""

    @abc.abstractmethod
    async def count_users(self, app_id: str) -> int:
        """How many users registered under `app_id` (revoked or expired ones included)."""

    @abc.abstractmethod
    def iter_keys(self, batch: int = 500) -> AsyncIterator[tuple[str, str, bytes]]:
        """Every stored (user id, provider, record), in no particular order, about `batch` at a
        time from the server.

        Records written while the iteration runs may or may not appear. For maintenance
        (re-encryption under a new secret), never for the request path.
        """

    @abc.abstractmethod
    async def replace_key(self, user_id: str, provider: str, old: bytes, new: bytes) -> bool:
        """Replace the record with `new` only if it is still exactly `old` (compare-and-set).

        False, changing nothing, when the record was replaced or deleted meanwhile: a user's own
        write always wins over maintenance. `updated_at` is left as it was.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the store answers a trivial query; raise `StoreUnavailable` otherwise."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""
