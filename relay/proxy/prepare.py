"""The two relay routes, `/relay/{provider}/{path}` and `POST /relay`: a request prepared.

Everything a relayed request needs checked and decided before anything is sent happens here,
in order: the caller (token, per-token limit), the provider and the path it may reach, the
model (read from the body when `POST /relay` routes by it or `ALLOWED_MODELS` applies, and the
body then held within the process's budget), the upstream (a client-named one checked against
SSRF), and the caller's key, decrypted last. What comes out is an `Exchange`
(`relay.proxy.exchange`), which sends and streams; nothing of the preparation outlives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from backends import User
from relay.api.bodies import ClientGone, declared_length, read_whole
from relay.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    RelayError,
)
from relay.providers.allowlist import ModelPolicy
from relay.providers.headers import KEY_HINT_HEADER, PROVIDER_HEADER
from relay.providers.routing import Routed, route_model
from relay.providers.table import (
    PROVIDERS,
    Provider,
    forwarded_request_headers,
    unsupported_provider,
)
from relay.providers.verify import key_hint
from relay.proxy.exchange import Exchange, Outgoing, Request
from relay.proxy.jsonedit import Body, Repeated, TooDeep, cut, find_members, replace_value
from relay.proxy.modelname import model_of
from relay.proxy.paths import encode_path, normalize_path
from relay.proxy.spending import capped, reserve
from relay.proxy.ssrf import Upstream, UpstreamPolicy
from relay.security.auth import authenticate_digest
from relay.security.crypto import DecryptionError
from relay.security.grants import grant_of
from relay.server.ratelimit import Deferred
from relay.services import Services
from relay.telemetry.access import ACCESS, Access, short_user

__all__ = ["ModelRelay", "ProviderRelay", "Router", "caller", "stored_key"]

Router = Callable[[object, bool], Routed]
"""A model name (and whether the request streams) to where it goes."""

logger = logging.getLogger("relay.proxy")

_PROVIDER_HEADER: Final = PROVIDER_HEADER.encode()
_KEY_HINT_HEADER: Final = KEY_HINT_HEADER.encode()


TOO_LARGE_TO_READ: Final = (
    "Request body too large for this relay to read its model (RELAY_PARSE_LIMIT_BYTES)"
)


def _forbidden_path(path: str, provider: str) -> Forbidden:
    return Forbidden(
        f'Path "{path}" is not permitted for provider "{provider}". '
        "Only inference endpoints are allowed.",
        code="path_not_permitted",
    )


def _upstream_path(raw_path: bytes) -> str:
    """The still-encoded part of `/relay/{provider}/...` after the provider segment."""
    parts = raw_path.decode("latin-1").split("/", 3)
    return "/" + parts[3] if len(parts) > 3 else "/"


class _Relay:
    """What both relay routes share: the caller, the upstream, the key, the exchange."""

    def __init__(self, policy: UpstreamPolicy, models: ModelPolicy) -> None:
        self._policy = policy
        self._models = models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["state"]["services"]
        headers = Headers(scope=scope)
        user, token, hit = await caller(services, headers, deferring=scope["method"] == "POST")
        request = Request(services, scope, receive, send, headers, user, token, hit, capped(user))
        # Everything the request needed to be checked and prepared ends with `_prepare`'s
        # frame; an open stream keeps only its exchange (and no plaintext key in a frame).
        try:
            exchange = await self._prepare(request)
        except Exception:
            if hit is not None:  # refused before its reservation: the limit counts it still
                await hit.count()
            raise
        if exchange is None:  # the client left while its body was being read
            if hit is not None:
                with contextlib.suppress(RelayError):  # nobody is left to tell
                    await hit.count()
            return
        await exchange.run()

    async def _prepare(self, request: Request) -> Exchange | None:
        raise NotImplementedError

    async def _holding(
        self, services: Services, held: int, making: Awaitable[Exchange]
    ) -> Exchange:
        """The exchange `making` makes, holding `held` bytes of the process's body budget until
        it has sent them (given back at once if it is never made)."""
        try:
            exchange = await making
        except BaseException:
            services.bodies.give(held)
            raise
        exchange.held = held
        return exchange

    async def _exchange(
        self,
        request: Request,
        provider: Provider,
        path: str,
        query: bytes,
        body: Body | None,
        model: str | None,
    ) -> Exchange:
        """The exchange that sends the request to `provider` at `path` and relays the answer.
        `body` is the request body when it was already read; otherwise the client's stream is
        forwarded. `model` is the model the request names, when the relay read it."""
        services, scope = request.services, request.scope
        access: Access | None = scope.get(ACCESS)
        if access is not None:
            access.provider, access.app_id = provider.name, request.user.app_id
            access.user = short_user(request.user.id)
        # The key first: a caller without one makes the relay look up no name.
        record, key = await stored_key(services, request.user, provider)
        target = await self._target(request, provider)
        if access is not None and target.pin is not None:
            access.client_upstream = True
        url = target.base_url + encode_path(path) + _query(provider, path, query)
        defaults = services.settings.default_headers_for(provider.name)
        outgoing = forwarded_request_headers(provider, _first_values(scope), key, defaults)
        if provider.request_id_header and access is not None:
            outgoing.append((provider.request_id_header.encode(), access.id.encode()))
        length = request.headers.get("content-length")
        if body is None and length is not None and scope["method"] == "POST":
            outgoing.append((b"content-length", length.encode()))
        shown = (
            (_PROVIDER_HEADER, provider.name.encode()),
            (_KEY_HINT_HEADER, key_hint(key).encode()),
        )

        sending = Outgoing(scope["method"], url, outgoing, body)
        # Last: nothing may fail between a reservation and the exchange that settles it.
        reserved, hit = None, request.hit
        if scope["method"] == "POST":
            reserved = await reserve(services, request, provider, model, body)
        if hit is not None:  # counted with the reservation, or now: no cap covered it
            await hit.count()
        exchange = Exchange(request, provider, shown, record, model, sending, target.pin)
        exchange.reserved = reserved
        return exchange

    async def _target(self, request: Request, provider: Provider) -> _Target:
        settings = request.services.settings
        if provider.base_url:
            return _Target(settings.base_url_for(provider.name, provider.base_url))
        # openai-compatible: the client names the upstream, unless the operator pinned one.
        override = settings.base_url_overrides.get(provider.name)
        if override:
            return _Target(override)
        upstream = await self._policy.resolve(
            request.headers.get("x-relay-base-url"),
            owner=request.token,
            lookup_timeout=settings.dns_timeout,
        )
        return _Target(f"{upstream.scheme}://{upstream.host_header}", upstream)


class ProviderRelay(_Relay):
    """`/relay/{provider}/{path}`: the provider's own API, path and all."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Refused before the caller is looked at: no token is needed to tell.
        if scope["method"] not in ("GET", "POST"):
            raise MethodNotAllowed("Method not allowed", headers={"allow": "POST"})
        if scope["path_params"]["provider"] not in PROVIDERS:
            raise unsupported_provider()
        await super().__call__(scope, receive, send)

    async def _prepare(self, request: Request) -> Exchange | None:
        services, scope, user = request.services, request.scope, request.user
        headers, method = request.headers, scope["method"]
        provider = PROVIDERS[scope["path_params"]["provider"]]
        grant = grant_of(user)
        grant.check_provider(provider.name)

        raw = _upstream_path(scope.get("raw_path") or scope["path"].encode())
        path = normalize_path(raw)
        listing = path is not None and method == "GET" and provider.allows_listing(path)
        if path is None or not (listing or provider.allows(path)):
            raise _forbidden_path(raw if path is None else path, provider.name)
        if method == "GET":
            if not (listing or provider.allows_read(path)):
                raise MethodNotAllowed("Method not allowed", headers={"allow": "POST"})
            # Forwarding a length the relay does not send would let the provider read the
            # next request on its connection as this one's body.
            if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
                raise BadRequest("A GET request cannot have a body", code="body_not_allowed")
        settings = services.settings
        body = model = None
        held = 0
        reads = self._models.enabled or grant.reads_model or request.caps is not None
        if reads and method == "POST":
            # Only a model allowlist (the relay's or the token's) or the owner's spending caps
            # make the relay read a body it otherwise only streams.
            limit = settings.parse_limit
            declared = declared_length(headers, limit, TOO_LARGE_TO_READ)
            try:
                body = await read_whole(
                    request.receive, declared, limit, services.bodies, TOO_LARGE_TO_READ
                )
            except ClientGone:
                return None
            held = len(body)
            try:
                content_type = headers.get("content-type", "")
                model = model_of(provider, path, scope["query_string"], content_type, body)
                if self._models.enabled:
                    self._models.check(model, provider.name)
                grant.check_model(model, provider.name)
            except BaseException:
                services.bodies.give(held)
                raise
        else:
            declared_length(headers, settings.request_body_limit)
        making = self._exchange(request, provider, path, scope["query_string"], body, model)
        return await (self._holding(services, held, making) if held else making)


class ModelRelay(_Relay):
    """`POST /relay` (and `POST /relay/v1/chat/completions`): one endpoint for every model; the
    body's `model` picks the provider, `route` the provider's path (its native API, or its
    OpenAI-compatible endpoint)."""

    def __init__(
        self, policy: UpstreamPolicy, models: ModelPolicy, route: Router = route_model
    ) -> None:
        super().__init__(policy, models)
        self._router = route

    async def _prepare(self, request: Request) -> Exchange | None:
        services = request.services
        limit = services.settings.parse_limit
        declared = declared_length(request.headers, limit, TOO_LARGE_TO_READ)
        try:
            raw = await read_whole(
                request.receive, declared, limit, services.bodies, TOO_LARGE_TO_READ
            )
        except ClientGone:
            return None
        held = len(raw)
        try:
            provider, routed = self._route(raw)
            grant = grant_of(request.user)
            grant.check_provider(provider.name)
            grant.check_model(routed.model, provider.name)
        except BaseException:
            services.bodies.give(held)
            raise
        making = self._exchange(request, provider, routed.path, b"", raw, routed.model)
        return await self._holding(services, held, making)

    def _route(self, raw: bytearray) -> tuple[Provider, Routed]:
        """The provider and the route for the model `raw` names; `raw` is made the body to
        send (edited in place)."""
        try:
            found = find_members(raw, ("model", "stream"))
        except Repeated:
            raise BadRequest(
                "model and stream may each be given once", code="invalid_json"
            ) from None
        except TooDeep:
            raise BadRequest("The JSON body nests too deeply", code="invalid_json") from None
        except ValueError:
            raise BadRequest("Request body must be a JSON object", code="invalid_json") from None
        model, stream = found.get("model"), found.get("stream")
        named = model.value(str) if model is not None else None
        routed = self._router(named, stream is not None and stream.value(bool) is True)
        provider = PROVIDERS[routed.provider]
        if not provider.allows(routed.path):
            raise _forbidden_path(routed.path, provider.name)
        self._models.check(routed.model, provider.name)
        if routed.in_path:  # Google's native API
            cut(raw, list(found.values()))
        elif model is not None and routed.model != named:
            replace_value(raw, model, routed.model)
        return provider, routed


@dataclasses.dataclass(frozen=True)
class _Target:
    base_url: str
    pin: Upstream | None = None
    """An upstream the client named: connections to its host go to the address checked."""


def _first_values(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _query(provider: Provider, path: str, query_string: bytes) -> str:
    """The query sent upstream: the client's, less what the provider must never be sent, plus
    what its streaming actions need."""
    query = query_string.decode("latin-1")
    if query and provider.withheld_query:
        query = "&".join(part for part in query.split("&") if not provider.withholds(part))
    for suffix, name, value in provider.sse_query:
        if path.endswith(suffix) and not any(
            part.split("=", 1)[0] == name for part in query.split("&")
        ):
            query = f"{query}&{name}={value}" if query else f"{name}={value}"
    return "?" + query if query else ""


async def caller(
    services: Services, headers: Headers, *, deferring: bool = False
) -> tuple[User, str, Deferred | None]:
    """The caller, their token's digest, and, `deferring`, the hit of the per-token limit when
    it is left to count with a reservation (a capped caller, the key store on the limits'
    Redis); a narrow token used from an origin it may not be."""
    user, token_digest = await authenticate_digest(services.store, services.tokens, headers)
    hit = None
    if deferring and capped(user) is not None:
        hit = services.limiter.defer("relay", token_digest)
    if hit is None:
        await services.limiter.check("relay", token_digest)
    child = user.child
    if child is not None:
        try:
            grant_of(user).check_origin(headers.get("origin"))
        except RelayError:
            if hit is not None:
                await hit.count()
            raise
        store = services.store
        services.token_use.note(
            child.id, lambda at: store.touch_child_token(child.user_id, child.id, at)
        )
    return user, token_digest, hit


async def stored_key(services: Services, user: User, provider: Provider) -> tuple[bytes, str]:
    """The stored record and the key it seals."""
    record = await services.store.get_key(user.id, provider.name)
    if record is None:
        name = provider.name
        raise BadRequest(
            f'No API key stored for provider "{name}". POST /keys/{name} first.', code="no_key"
        )
    try:
        return record, services.cipher.decrypt(record, user_id=user.id, provider=provider.name)
    except DecryptionError:
        logger.error(
            "stored key could not be decrypted",
            extra={"user_id": user.id, "provider": provider.name},
        )
        raise RelayError(
            f'The stored key for provider "{provider.name}" could not be decrypted. '
            f"Store it again with POST /keys/{provider.name}.",
            code="key_unreadable",
            status=500,
        ) from None
