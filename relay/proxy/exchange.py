"""One relayed exchange: the request sent, the provider's answer streamed back byte for byte.

Nothing buffers: the request body streams to the provider as the client sends it (or goes out
whole when the relay had to read it), and the provider's bytes stream back as they arrive,
undecoded and unre-chunked. Once an exchange has run for `WATCH_AFTER`, a watcher listens for
the client leaving and cancels the upstream request at once, whether the provider is still
thinking (before headers) or mid-stream.

Errors before the response starts are raised as `RelayError`s (the app's handlers answer them);
after it has started, an SSE stream ends with an `event: error` frame and any other body is cut
short, so the client can tell that it is incomplete. Every exchange in progress is known to
`relay.proxy.inflight`, which ends it when its token is revoked or the relay drains; each leaves
one usage record saying how it ended.

Longer than most modules because the exchange is one state machine (sending, waiting for the
head, streaming, ending from outside, recording): its states read and write the same slots, so
it stays one class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Final

import httpx
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from backends import Outcome, UsageRecord, User
from relay.api.bodies import ClientGone
from relay.errors import (
    PayloadTooLarge,
    RelayError,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
)
from relay.pricing.caps import Caps, Reserved
from relay.pricing.table import Tokens
from relay.providers.headers import response_headers
from relay.providers.table import Provider
from relay.proxy.failures import upstream_failure
from relay.proxy.idle import IdleDeadline
from relay.proxy.jsonedit import Body
from relay.proxy.ssrf import Upstream
from relay.security.auth import now_ms
from relay.server.edge import EDGE, Edge
from relay.server.ratelimit import Deferred
from relay.services import Services
from relay.telemetry.access import ACCESS, Access
from relay.upstream.client import upstream_request, upstream_url
from relay.upstream.transport import PINNED_ADDRESS, ResponseBody
from relay.usage.meter import NO_USAGE, Usage, UsageMeter

__all__ = ["Exchange", "Outgoing", "Request"]

logger = logging.getLogger("relay.proxy")


STREAM_ERROR_FRAME: Final = b'event: error\ndata: {"error":"Stream interrupted by provider"}\n\n'
CLIENT_CLOSED: Final = 499  # recorded when the client left before the provider answered
WATCH_AFTER: Final = 0.02  # seconds into an exchange before the client is watched for leaving


CLIENT_ENDINGS: Final = frozenset({Outcome.CLIENT_CANCELLED, Outcome.SLOW_CLIENT})
"""Endings that leave nobody to tell."""


def _restarting() -> RelayError:
    return ServiceUnavailable(
        "The relay is restarting: send the request again",
        code="relay_restarting",
        headers={"retry-after": "1"},
    )


def _revoked() -> RelayError:
    return Unauthorized("Invalid or expired token", code="invalid_token")


# How an exchange ended from outside tells its client: before the answer started, and in an
# event stream once it has.
ENDING_ERRORS: Final = {Outcome.DRAINED: _restarting, Outcome.REVOKED: _revoked}
ENDING_FRAMES: Final = {
    outcome: b"event: error\ndata: " + make().body() + b"\n\n"
    for outcome, make in ENDING_ERRORS.items()
}
ENDED_LOG: Final = {
    Outcome.CLIENT_CANCELLED: "client left; upstream request cancelled",
    Outcome.SLOW_CLIENT: "client took nothing for too long; upstream request cancelled",
    Outcome.DRAINED: "relay draining; exchange ended",
    Outcome.REVOKED: "token revoked or account erased; exchange ended",
}


@dataclasses.dataclass(frozen=True)
class Request:
    services: Services
    scope: Scope
    receive: Receive
    send: Send
    headers: Headers
    user: User
    token: str
    """The digest of the caller's token."""
    hit: Deferred | None = None
    """The caller's per-token rate-limit hit, when left to count with the reservation."""
    caps: Caps | None = None
    """The spending caps the caller's requests are under (`relay.proxy.spending.capped`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """What the exchange sends; let go of once sent."""

    method: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: Body | None  # None: the client's body, streamed as it arrives


class Exchange:
    """One relayed request: body up, response down, the client watched throughout. It can be
    ended from outside (`end`): by the client leaving, a drain, or its token's revocation."""

    # An exchange lives as long as its stream: slots keep thousands of open ones small.
    __slots__ = (
        "access",
        "body_read",
        "edge",
        "ending",
        "held",
        "meter",
        "model",
        "outcome",
        "outgoing",
        "pin",
        "provider",
        "receive",
        "record",
        "recorded",
        "reserved",
        "send",
        "services",
        "shown",
        "started",
        "status",
        "streamed",
        "task",
        "token",
        "user",
        "watch",
        "watched",
        "watcher",
    )

    def __init__(
        self,
        request: Request,
        provider: Provider,
        shown: tuple[tuple[bytes, bytes], ...],
        record: bytes,
        model: str | None,
        outgoing: Outgoing,
        pin: Upstream | None,
    ) -> None:
        self.services = request.services
        self.access: Access | None = request.scope.get(ACCESS)
        self.receive = request.receive
        self.send = request.send
        self.edge: Edge | None = request.scope.get(EDGE)
        self.user = request.user
        self.token = request.token  # the token's digest: whether it is still live is watched
        self.provider = provider
        self.shown = shown  # headers of the relay's own, added to the answer's
        self.record = record  # the sealed key used: its health is judged by the answer
        self.model = model  # the model the request named, when the relay read it
        self.outgoing: Outgoing | None = outgoing  # until sent
        self.held = 0  # bytes of the process's body budget the body to send takes
        self.pin = pin  # the checked address of an upstream the client named
        self.status = 502  # until the provider answers
        self.outcome = Outcome.UPSTREAM_ERROR  # until it is known how the exchange ended
        self.streamed = False
        self.meter: UsageMeter | None = None  # from the answer's head on
        self.body_read = False  # the whole request body is in: what comes next is a disconnect
        self.task: asyncio.Task[object] | None = None  # while the exchange runs
        self.ending: Outcome | None = None  # why it is being ended from outside
        self.watch: asyncio.TimerHandle | None = None  # until WATCH_AFTER
        self.watched = False  # WATCH_AFTER has passed: the client is listened to
        self.watcher: asyncio.Future[Message] | None = None
        self.recorded = False
        self.reserved: Reserved | None = None  # against the owner's caps, settled at the end
        self.started = time.monotonic()

    def end(self, outcome: Outcome) -> None:
        """End the exchange wherever it waits (for the provider's head, its next chunk, or the
        client to take one); `outcome` says why. Once only; a no-op once it is over."""
        if self.task is not None and self.ending is None:
            self.ending = outcome
            self.task.cancel()

    async def run(self) -> None:
        """Send the request (its body when it was already read, else the client's stream) and
        relay the answer."""
        outgoing, self.outgoing = self.outgoing, None
        assert outgoing is not None, "an exchange runs once"
        settings = self.services.settings
        # Sending and reading need no timers of the transport's own: the exchange's deadlines
        # bound them (RELAY_UPSTREAM_TIMEOUT until the answer's head, the idle timeout after),
        # so an open stream arms no timer of its own.
        extensions: dict[str, object] = {
            "timeout": {
                "connect": settings.connect_timeout,
                "read": None,
                "write": None,
                "pool": settings.connect_timeout,
            }
        }
        if self.pin is not None:
            extensions[PINNED_ADDRESS] = str(self.pin.address)
        task = self.task = asyncio.current_task()
        assert task is not None
        # Most answers are over within a few milliseconds: only an exchange still running
        # after WATCH_AFTER gets a task listening for the client leaving.
        self.watch = asyncio.get_running_loop().call_later(WATCH_AFTER, self._watch)
        inflight = self.services.inflight
        inflight.add(self)
        try:
            content: Body | AsyncIterator[bytes] | None = outgoing.body
            if content is None and outgoing.method == "POST":
                content = await self._content()
            else:
                self._body_read()
            request = upstream_request(
                outgoing.method, upstream_url(outgoing.url), outgoing.headers, content, extensions
            )
            response = await self._open(request)
            # Sent: a long prompt (and the key in its headers) need not stay in memory as long
            # as the answer streams.
            del request, content, outgoing
            self._let_go()
            # The transport's own stream: raw bytes as they arrive, without httpx's
            # re-chunking generator around it.
            chunks = response.stream
            assert isinstance(chunks, ResponseBody)
            try:
                sse = await self._start(response)
                del response  # started: neither the response object nor its headers are needed now
                await self._relay(chunks, sse)
            finally:
                # Never suspends, so no cancellation can stop it halfway: the connection goes
                # back to the pool (or closes) whatever happened.
                await chunks.aclose()
        except ClientGone:
            self.ending = self.ending or Outcome.CLIENT_CANCELLED
        except asyncio.CancelledError:
            # An ending of ours is ours to absorb; any other cancellation (shutdown) goes on.
            if self.ending is None or task.uncancel() > 0:
                raise
            await self._ended(self.ending)
        except RelayError as error:
            self.status = error.status
            if not isinstance(error, UpstreamError):  # which says itself how it ended
                self.outcome = Outcome.COMPLETED  # refused, and the refusal answered whole
            raise
        finally:
            self._let_go()
            inflight.discard(self)
            if self.watch is not None:
                self.watch.cancel()
                self.watch = None
            self.task = None
            if self.watcher is not None:
                self.watcher.cancel()
                self.watcher = None
            if self.ending is not None:
                self.outcome = self.ending
                if self.meter is None and self.ending in CLIENT_ENDINGS:
                    self.status = CLIENT_CLOSED
            self._record()
        if self.ending is not None:
            logger.info(
                ENDED_LOG[self.ending],
                extra={
                    "provider": self.provider.name,
                    "outcome": str(self.ending),
                    "elapsed_ms": round((time.monotonic() - self.started) * 1000),
                    "request_id": self.access.id if self.access is not None else None,
                },
            )

    def _let_go(self) -> None:
        """The body is sent (or never will be): its bytes leave the process's budget."""
        if self.held:
            self.services.bodies.give(self.held)
            self.held = 0

    async def _ended(self, outcome: Outcome) -> None:
        """Ended from outside: tell the client why, as far as it can still be told."""
        if outcome in CLIENT_ENDINGS:
            return  # nobody left to tell
        if self.meter is None:  # nothing of the answer sent yet: an error answer says it all
            error = ENDING_ERRORS[outcome]()
            self.status = error.status
            raise error
        if self.streamed:
            frame = ENDING_FRAMES[outcome]
            await self.send({"type": "http.response.body", "body": frame, "more_body": False})
        else:
            self._cut()

    def _cut(self) -> None:
        """Leave the answer's body unterminated: the client sees a truncated response rather
        than a short one that looks complete."""
        if self.edge is not None:
            self.edge.end_response()
        # Else returning unfinished makes the server drop the connection all the same.

    def _record(self) -> None:
        """Report the exchange once: before the last byte reaches the client when it ends
        well (a client that asks for its usage next finds this request counted), else when it
        ends."""
        if self.recorded:
            return
        self.recorded = True
        usage = self.meter.result() if self.meter is not None else NO_USAGE
        user = self.user
        now = now_ms()
        prices = self.services.prices
        # The model that answered, as the provider names it (the one it bills), else the asked.
        model = usage.model or self.model
        totals = Tokens(*usage.totals())
        cost = prices.cost(self.provider.name, model, totals, now)
        if self.reserved is not None:
            self._settle(self.reserved, usage, totals.input + totals.output, cost)
        access = self.access
        if access is not None:
            access.model = self.model or usage.model
            access.outcome = self.outcome.value
            access.streamed = self.streamed
            access.input_tokens, access.output_tokens = usage.input_tokens, usage.output_tokens
        self.services.usage.add(
            UsageRecord(
                user_id=user.id,
                app_id=user.app_id,
                provider=self.provider.name,
                model=self.model or usage.model,
                status=self.status,
                latency_ms=round((time.monotonic() - self.started) * 1000),
                streamed=self.streamed,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                created_at=now,
                outcome=self.outcome,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost_micros=cost,
                price_version=prices.version if cost is not None else None,
                token_id=user.child.id if user.child is not None else None,
            )
        )

    def _settle(self, reserved: Reserved, usage: Usage, tokens: int, cost: int | None) -> None:
        """Put the caps' reservation right, off the request path: to what the provider reported;
        to nothing spent but the request when it answered an error or never answered; as
        reserved when it answered but reported nothing (it may have spent all of it)."""
        if usage.input_tokens is None and usage.output_tokens is None:
            if self.status < 400:
                return
            tokens, cost = 0, 0
        self.services.leases.settle(reserved.user_id, reserved.settlement(tokens, cost or 0))

    async def _content(self) -> Body | AsyncIterator[bytes]:
        """The request body: whole when it came in one message (a chat request usually does,
        and a whole body is cheaper to send), else a stream that forwards it as it arrives."""
        first, more = await self._next_chunk(0)
        if more:
            return self._body(first)
        self._body_read()
        return first

    def _body_read(self) -> None:
        self.body_read = True
        if self.watched:  # the watch is due: it waited for the body
            self._listen()

    async def _next_chunk(self, received: int) -> tuple[bytes, bool]:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if received + len(chunk) > self.services.settings.request_body_limit:
            raise PayloadTooLarge()
        return chunk, message.get("more_body", False)

    async def _body(self, first: bytes) -> AsyncIterator[bytes]:
        chunk, more, received = first, True, len(first)
        while True:
            if chunk:
                yield chunk
            if not more:
                break
            chunk, more = await self._next_chunk(received)
            received += len(chunk)
        self._body_read()

    def _watch(self) -> None:
        """WATCH_AFTER into the exchange: listen for the client leaving, as soon as its body
        is in (until then, the client's messages are the body's)."""
        self.watch = None  # done: an open stream need not keep the timer
        self.watched = True
        if self.body_read:
            self._listen()

    def _listen(self) -> None:
        """Once the body is read, the next ASGI message can only be the client leaving: then
        the exchange is ended, wherever it waits. The watching task runs the server's
        `receive` itself, with no frame of ours in it."""
        self.watcher = watcher = asyncio.ensure_future(self.receive())
        watcher.add_done_callback(self._client_spoke)

    def _client_spoke(self, watcher: asyncio.Future[Message]) -> None:
        if watcher.cancelled() or watcher.exception() is not None or self.task is None:
            return  # the exchange is over (or the server failed: not ours to judge)
        if watcher.result()["type"] != "http.disconnect":
            self._listen()
            return
        slow = self.edge is not None and self.edge.send_timed_out
        self.end(Outcome.SLOW_CLIENT if slow else Outcome.CLIENT_CANCELLED)

    async def _open(self, request: httpx.Request) -> httpx.Response:
        """Send the request; the provider has `RELAY_UPSTREAM_TIMEOUT` to take it and start
        answering."""
        try:
            async with asyncio.timeout(self.services.settings.upstream_timeout):
                return await self.services.transport.handle_async_request(request)
        except (httpx.TimeoutException, TimeoutError) as exc:
            self.outcome = Outcome.UPSTREAM_TIMEOUT
            self._failed(exc)
            raise UpstreamError(
                "AI provider timed out", code="upstream_timeout", status=504
            ) from None
        except httpx.TransportError as exc:
            self.outcome = Outcome.UPSTREAM_ERROR
            self._failed(exc)
            raise UpstreamError(
                "Failed to reach AI provider", code="upstream_unreachable"
            ) from None

    def _failed(self, exc: BaseException) -> None:
        """Log why the provider could not be reached (never the request: it holds the key)."""
        logger.warning(
            "upstream request failed",
            extra={
                "cause": upstream_failure(exc),
                "provider": self.provider.name,
                "request_id": self.access.id if self.access is not None else None,
            },
        )

    async def _start(self, response: httpx.Response) -> bool:
        """Send the answer's status and headers; whether it is an event stream."""
        content_type: str = response.headers.get("content-type", "")
        sse = content_type.startswith("text/event-stream")
        self.status, self.streamed = response.status_code, sse
        self.meter = UsageMeter(content_type, response.headers.get("content-encoding"))
        self.services.key_health.observe(
            self.user.id, self.provider.name, self.record, response.status_code
        )
        headers = response_headers(response.headers.raw, sse=sse)
        headers += self.shown
        self.shown = ()  # sent: not kept while the answer streams
        await self.send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        return sse

    async def _relay(self, chunks: ResponseBody, sse: bool) -> None:
        meter = self.meter
        assert meter is not None
        last = b""
        try:
            # One deadline for the whole stream, moved on as chunks arrive: the provider has
            # RELAY_STREAM_IDLE_TIMEOUT from its answer's head to its first chunk and between
            # chunks.
            async with asyncio.timeout(None) as timeout:
                deadline = IdleDeadline(
                    self.services.deadlines, timeout, self.services.settings.stream_idle_timeout
                )
                try:
                    async for chunk in chunks:
                        deadline.pause()  # the client may be slow to take it: not idle
                        meter.feed(chunk)
                        if chunks.ended:  # the last: it goes out with the end, below
                            last = chunk
                            break
                        await self.send(
                            {"type": "http.response.body", "body": chunk, "more_body": True}
                        )
                        deadline.resume()
                finally:
                    deadline.cancel()
        except (httpx.TransportError, TimeoutError) as exc:
            idle = isinstance(exc, TimeoutError)
            self.outcome = Outcome.IDLE_TIMEOUT if idle else Outcome.UPSTREAM_ERROR
            logger.warning(
                "provider stream interrupted",
                extra={
                    "provider": self.provider.name,
                    "reason": "idle timeout" if idle else type(exc).__name__,
                },
            )
            self._record()
            if sse:
                await self.send(
                    {"type": "http.response.body", "body": STREAM_ERROR_FRAME, "more_body": False}
                )
            else:
                self._cut()
            return
        except OSError:  # a server that reports the client gone by raising
            self.ending = self.ending or Outcome.CLIENT_CANCELLED
            return
        self.outcome = Outcome.COMPLETED
        self._record()
        await self.send({"type": "http.response.body", "body": last, "more_body": False})
