"""What a narrow token may do, and how one is minted no broader than the token that mints it.

A narrow token (`backends.ChildToken`) carries limits: the providers it may reach, the models it
may name (patterns as `ALLOWED_MODELS` reads them), the browser origins it may be used from,
and an expiry. The account's own token has none. A token minted with another inherits every
limit it does not set, and may set one only inside its parent's: the stored limits are always
the whole of what the token may do, so a request is checked against its own token alone.

Model patterns are compared conservatively: a pattern is inside a parent's when it is one of
them, a name one of them matches, or starts with the fixed start of a parent's `prefix*`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec

from backends import User
from relay.errors import BadRequest, Forbidden, Unauthorized
from relay.providers.allowlist import ModelPolicy
from relay.providers.table import PROVIDERS

__all__ = [
    "LIMITS",
    "Grant",
    "Limits",
    "check_live",
    "effective_expiry",
    "grant_of",
    "narrowed",
    "origin_of",
]

LIMITS: Final = ("providers", "models", "origins", "expires_at")
"""What a narrow token can be limited by, as a refusal's `limit` names it."""
_MAX_ENTRIES: Final = 64  # of each list; a token is for one page, not a catalogue
_ORIGIN: Final = re.compile(r"^https?://[^/?#@\s]+$")


class Limits(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """A narrow token's limits as stored (`ChildToken.limits`); None: not limited."""

    providers: list[str] | None = None
    models: list[str] | None = None
    origins: list[str] | None = None
    budgets: list[dict[str, Any]] | None = None
    """Spending caps on this token and each it was minted from (`relay.pricing.caps.Cap`, each
    naming its token): all of them apply."""


def _refused(limit: str, message: str) -> Forbidden:
    return Forbidden(message, code="token_limit", limit=limit)


class Grant:
    """What one token may do, parsed from its stored limits (once per distinct text)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.providers = frozenset(limits.providers) if limits.providers is not None else None
        self.models = ModelPolicy(limits.models) if limits.models is not None else None
        self.origins = frozenset(limits.origins) if limits.origins is not None else None

    @property
    def reads_model(self) -> bool:
        """A request must name a model this token's patterns allow: its body must be read."""
        return self.models is not None

    def may_use(self, provider: str, model: str | None = None) -> bool:
        """Whether this token may use `provider` (and `model` there, when given)."""
        if self.providers is not None and provider not in self.providers:
            return False
        return model is None or self.models is None or self.models.allows(model, provider)

    def check_origin(self, origin: str | None) -> None:
        if self.origins is None:
            return
        if origin is None or origin.lower() not in self.origins:
            named = "no Origin" if origin is None else f'Origin "{origin}"'
            raise _refused(
                "origins",
                f"This token may be used only from {', '.join(sorted(self.origins))}; the "
                f"request has {named}.",
            )

    def check_provider(self, provider: str) -> None:
        if self.providers is not None and provider not in self.providers:
            raise _refused(
                "providers",
                f'This token may not use provider "{provider}" (it may use '
                f"{', '.join(sorted(self.providers)) or 'none'}).",
            )

    def check_model(self, model: str | None, provider: str) -> None:
        if self.models is None:
            return
        if model is None or not self.models.allows(model, provider):
            named = "no model the relay can read" if model is None else f'model "{model}"'
            raise _refused(
                "models",
                f"This token may use only the models {', '.join(self.models.patterns)}; the "
                f"request names {named}.",
            )


_ANY: Final = Grant(Limits())


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> Grant:
    return Grant(msgspec.json.decode(text, type=Limits))


def grant_of(user: User) -> Grant:
    """What the token `user` was found by may do."""
    return _ANY if user.child is None else _parsed(user.child.limits)


def effective_expiry(user: User) -> int | None:
    """When the token `user` was found by stops working: the account's expiry, or the narrow
    token's when that comes first (it never comes later)."""
    child = user.child.expires_at if user.child is not None else None
    ends = [at for at in (user.expires_at, child) if at is not None]
    return min(ends) if ends else None


def check_live(user: User) -> None:
    """401 when the narrow token `user` was found by has expired."""
    child = user.child
    if (
        child is not None
        and child.expires_at is not None
        and child.expires_at <= time.time() * 1000
    ):
        raise Unauthorized("Invalid or expired token", code="invalid_token", limit="expires_at")


def origin_of(text: str) -> str:
    """`text` as an origin the browser sends (`scheme://host[:port]`, lower case); 400 if it
    is not one."""
    origin = text.strip().lower().rstrip("/")
    if not _ORIGIN.match(origin):
        raise BadRequest(
            f'"{text}" is not an origin (scheme://host[:port], e.g. https://app.example)',
            code="invalid_limits",
        )
    try:
        port = urlsplit(origin).port
    except ValueError:
        port = -1
    if port == -1:
        raise BadRequest(f'"{text}" is not an origin: its port is not one', code="invalid_limits")
    return origin


def _covers(parent: str, pattern: str) -> bool:
    if parent == pattern:
        return True
    if "*" not in pattern:
        return ModelPolicy([parent]).allows(pattern, "")
    head = parent[:-1]
    return parent.endswith("*") and "*" not in head and pattern.startswith(head)


def _within(name: str, asked: Sequence[str], allowed: Sequence[str] | None) -> list[str]:
    """`asked`, each entry inside `allowed` (None: anything); 403 naming the first outside."""
    if allowed is not None:
        inside = _covers if name == "models" else (lambda a, b: a == b)
        for entry in asked:
            if not any(inside(parent, entry) for parent in allowed):
                raise _refused(
                    name, f'A token cannot mint one broader than itself: {name} "{entry}" is '
                    f"outside its own ({', '.join(allowed) or 'none'})."
                )  # fmt: skip
    return list(dict.fromkeys(asked))


def narrowed(parent: Limits, asked: Limits) -> Limits:
    """The limits of a token minted with `parent`'s asking for `asked`: each one `asked` sets,
    checked to be inside the parent's (403 `token_limit` otherwise); the rest inherited."""
    for name in ("providers", "models", "origins"):
        entries = getattr(asked, name)
        if entries is not None and len(entries) > _MAX_ENTRIES:
            raise BadRequest(f"At most {_MAX_ENTRIES} {name}", code="invalid_limits")
    providers = parent.providers
    if asked.providers is not None:
        unknown = [p for p in asked.providers if p not in PROVIDERS]
        if unknown:
            raise BadRequest(f'Unsupported provider "{unknown[0]}"', code="invalid_limits")
        providers = _within("providers", asked.providers, parent.providers)
    models = parent.models
    if asked.models is not None:
        patterns = [m.strip().lower() for m in asked.models]
        if not all(0 < len(m) <= 256 for m in patterns):
            raise BadRequest("A model pattern is 1 to 256 characters", code="invalid_limits")
        models = _within("models", patterns, parent.models)
    origins = parent.origins
    if asked.origins is not None:
        origins = _within("origins", [origin_of(o) for o in asked.origins], parent.origins)
    # Budgets only add up: the parent's all apply to the child, with any of its own.
    budgets = [*(parent.budgets or ()), *(asked.budgets or ())] or None
    return Limits(providers, models, origins, budgets)
