"""Narrow tokens: `POST /tokens` mints one, `GET /tokens` lists them, `DELETE /tokens/{id}`
revokes one and every token minted from it.

Any token may mint: the account's own, or a narrow one, whose child can only be narrower
(`relay.security.grants`). What a token lists and may revoke are the tokens minted from it, at
any depth (for the account's own token, all of the account's). A narrow token is shown once,
when minted; a listing names tokens by id.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from backends import ChildToken, StoreError, StoreUnavailable, User
from relay.api.bodies import read_json
from relay.api.limits import CapIn, cap_of, distinct
from relay.api.shapes import NAME_CHARS, answer, is_printable_name
from relay.errors import BadRequest, Forbidden, NotFound, RelayError, Unauthorized
from relay.pricing.caps import MOST_CAPS, Cap, shown
from relay.security.auth import authenticate, now_ms
from relay.security.grants import Limits, effective_expiry, grant_of, narrowed
from relay.security.tokens import new_token
from relay.services import Services

__all__ = [
    "MOST_TOKENS",
    "MintBody",
    "Minted",
    "Revoked",
    "TokenInfo",
    "TokenList",
    "ended",
    "list_tokens",
    "mint_token",
    "revoke_child",
]

MOST_TOKENS: Final = 100
"""Narrow tokens an account may hold at once (expired ones do not count)."""
_TOKEN_ID: Final = re.compile(r"[0-9a-f]{32}")
_YEAR_9999_ENDS: Final = 253_402_300_799_999  # epoch ms: as far as a store's dates go
_NO_STORE = {"cache-control": "no-store"}

Patterns = Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=64)]


class MintBody(msgspec.Struct, forbid_unknown_fields=True):
    """What the new token is limited to; a limit left out is the minting token's."""

    name: Annotated[
        str, Meta(max_length=NAME_CHARS, description="For the owner to recognise it.")
    ] = ""
    providers: Annotated[
        list[str] | None, Meta(description="Provider names; null or absent: the minter's.")
    ] = None
    models: Annotated[
        Patterns | None,
        Meta(description="Model patterns (`*` any run, case-insensitive, `provider/` allowed)."),
    ] = None
    origins: Annotated[
        list[str] | None,
        Meta(
            description="Browser origins (`https://app.example`); the request's `Origin` must "
            "be one."
        ),
    ] = None
    expires_at: (
        Annotated[int, Meta(gt=0, le=_YEAR_9999_ENDS, description="Epoch milliseconds.")] | None
    ) = None
    budget: (
        Annotated[
            list[CapIn],
            Meta(
                max_length=5,
                description="Spending caps on this token (with those minted from it), as "
                "`PUT /limits` takes them; the minter's budgets apply too.",
            ),
        ]
        | None
    ) = None
    expires_in: (
        Annotated[int, Meta(gt=0, le=10 * 365 * 86_400, description="Seconds from now.")] | None
    ) = None


class TokenInfo(msgspec.Struct):
    """A narrow token, never the token itself. A null limit means not limited."""

    id: str
    name: str
    parent_id: Annotated[str | None, Meta(description="The narrow token it was minted with.")]
    providers: list[str] | None
    models: list[str] | None
    origins: list[str] | None
    expires_at: int | None
    created_at: int
    last_used_at: Annotated[int | None, Meta(description="To within a minute.")]
    budget: Annotated[
        list[dict[str, Any]] | None,
        Meta(description="Its budgets and its minters', each naming the token it limits."),
    ]


class Minted(TokenInfo):
    token: Annotated[str, Meta(description="Send it as `x-relay-token`; it is shown once.")]


class TokenList(msgspec.Struct):
    tokens: list[TokenInfo]


class Revoked(msgspec.Struct):
    ok: bool
    revoked: Annotated[list[str], Meta(description="The ids revoked: the token and its own.")]


def _info(child: ChildToken, cls: type[TokenInfo] = TokenInfo, **more: str) -> TokenInfo:
    limits = msgspec.json.decode(child.limits, type=Limits)
    budgets = [shown(msgspec.convert(b, Cap)) for b in limits.budgets or ()] or None
    return cls(
        budget=budgets,
        id=child.id,
        name=child.name,
        parent_id=child.parent_id,
        providers=limits.providers,
        models=limits.models,
        origins=limits.origins,
        expires_at=child.expires_at,
        created_at=child.created_at,
        last_used_at=child.last_used_at,
        **more,
    )


def _expiry(asked: MintBody, user: User, now: int) -> int | None:
    if asked.expires_at is not None and asked.expires_in is not None:
        raise BadRequest("Give expires_at or expires_in, not both", code="invalid_limits")
    limit = effective_expiry(user)
    if asked.expires_in is not None:
        at: int | None = now + asked.expires_in * 1000
    else:
        at = asked.expires_at
    if at is None:
        return limit
    if at <= now:
        raise BadRequest("expires_at is in the past", code="invalid_limits")
    if limit is not None and at > limit:
        raise Forbidden(
            "A token cannot mint one broader than itself: it would outlive its minter "
            f"(which expires at {limit}).",
            code="token_limit",
            limit="expires_at",
        )
    return at


async def mint_token(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers, narrow=True)
    body = await read_json(request, services.settings.request_body_limit)
    try:
        asked = msgspec.convert(body, MintBody)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid token limits: {exc}", code="invalid_limits") from None
    if asked.name and not is_printable_name(asked.name):
        raise BadRequest("A token's name is printable characters", code="invalid_limits")
    now = now_ms()
    token_id = uuid.uuid4().hex
    budgets = [
        msgspec.to_builtins(msgspec.structs.replace(cap, token=token_id))
        for cap in distinct([cap_of(cap) for cap in asked.budget or ()])
    ]
    limits = narrowed(
        grant_of(user).limits,
        Limits(asked.providers, asked.models, asked.origins, budgets or None),
    )
    if len(limits.budgets or ()) > MOST_CAPS:
        raise BadRequest(f"At most {MOST_CAPS} budgets in a line of tokens", code="invalid_limits")
    child = ChildToken(
        id=token_id,
        user_id=user.id,
        parent_id=user.child.id if user.child is not None else None,
        name=asked.name,
        limits=msgspec.json.encode(limits).decode(),
        created_at=now,
        expires_at=_expiry(asked, user, now),
    )
    token = new_token()
    try:
        stored = await services.store.create_child_token(
            child, services.tokens.hash(token), now, MOST_TOKENS
        )
    except StoreUnavailable:
        raise
    except StoreError:
        # The minting token (or its account) was revoked since it was checked.
        raise Unauthorized("Invalid or expired token", code="invalid_token") from None
    if not stored:
        raise RelayError(
            f"This account already has {MOST_TOKENS} narrow tokens; revoke one first "
            "(DELETE /tokens/{id}).",
            code="too_many_tokens",
            status=409,
        )
    return answer(_info(child, Minted, token=token), status=201, headers=_NO_STORE)


def _descendants(children: Iterable[ChildToken], root: str | None) -> list[ChildToken]:
    """Those of `children` minted from `root` at any depth (None: the account's own token,
    every one); in the order given."""
    children = list(children)
    if root is None:
        return children
    inside = {root}
    grew = True
    while grew:
        grew = False
        for child in children:
            if child.id not in inside and child.parent_id in inside:
                inside.add(child.id)
                grew = True
    return [child for child in children if child.id in inside and child.id != root]


async def list_tokens(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers, narrow=True)
    now = now_ms()
    children = await services.store.child_tokens(user.id)
    live = (c for c in children if c.expires_at is None or c.expires_at > now)
    root = user.child.id if user.child is not None else None
    return answer(TokenList([_info(child) for child in _descendants(live, root)]))


def ended(services: Services, user: User, ids: list[str]) -> None:
    """The narrow tokens `ids` are gone: their exchanges here end now (the other instances'
    within CACHE_TTL)."""
    services.inflight.end_children(user.id, frozenset(ids))


async def revoke_child(request: Request) -> Response:
    services: Services = request.state.services
    user = await authenticate(services.store, services.tokens, request.headers, narrow=True)
    token_id = request.path_params["token_id"]
    missing = NotFound("No such token", code="token_not_found")
    if not _TOKEN_ID.fullmatch(token_id):  # as minted: nothing else is looked up
        raise missing
    if user.child is not None:
        # A narrow token revokes only what it minted (and itself).
        mine = {
            c.id for c in _descendants(await services.store.child_tokens(user.id), user.child.id)
        }
        if token_id not in mine | {user.child.id}:
            raise missing
    ids = await services.store.delete_child_token(user.id, token_id)
    if not ids:
        raise missing
    ended(services, user, ids)
    return answer(Revoked(True, ids))
