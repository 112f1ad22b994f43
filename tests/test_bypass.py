"""`relay.server.bypass.RouterBypass`: relayed paths go straight to the proxy, failing as through
the router.

The relay's own behaviour through the bypass is what every relay test exercises; these pin the
the bypass's routing and its error boundary with small ASGI apps (no streaming involved, so httpx's
ASGI transport is enough here).
"""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from relay.errors import Forbidden, RelayError
from relay.providers.table import PROVIDERS
from relay.server.bypass import RouterBypass

pytestmark = [pytest.mark.anyio, pytest.mark.sqlite]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"app": scope["path"]})(scope, receive, send)


async def on_relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)
    return Response(exc.body(), exc.status, media_type="application/json")


async def on_anything(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "Internal server error"}, status_code=500)


HANDLERS = {RelayError: on_relay_error, Exception: on_anything}


def client_for(relay: object) -> httpx.AsyncClient:
    bypass = RouterBypass(fallback, relay, HANDLERS, PROVIDERS)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=bypass), base_url="http://relay")


async def echo_provider(scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"provider": scope["path_params"]["provider"]})(scope, receive, send)


@pytest.mark.parametrize(
    ("path", "reached"),
    [
        ("/relay/openai/v1/chat/completions", {"provider": "openai"}),
        ("/relay/openai", {"provider": "openai"}),
        ("/relay", {"app": "/relay"}),
        ("/relay/", {"app": "/relay/"}),
        ("/relay//v1/chat", {"app": "/relay//v1/chat"}),
        ("/relayx/openai", {"app": "/relayx/openai"}),
        ("/keys", {"app": "/keys"}),
        # Not a provider: the router's (the one base URL for every model, or a 400).
        ("/relay/v1/chat/completions", {"app": "/relay/v1/chat/completions"}),
        ("/relay/nosuch/v1/chat", {"app": "/relay/nosuch/v1/chat"}),
    ],
)
async def test_only_provider_paths_take_the_bypass(path: str, reached: dict[str, str]) -> None:
    async with client_for(echo_provider) as client:
        assert (await client.post(path)).json() == reached


async def test_a_relay_error_is_answered_by_its_handler() -> None:
    async def refuses(scope: Scope, receive: Receive, send: Send) -> None:
        raise Forbidden("Path not permitted", code="path_not_permitted")

    async with client_for(refuses) as client:
        response = await client.post("/relay/openai/v1/files")
    assert response.status_code == 403
    assert response.json()["code"] == "path_not_permitted"


async def test_an_unexpected_error_is_a_logged_json_500(caplog: pytest.LogCaptureFixture) -> None:
    async def breaks(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="relay"):
        async with client_for(breaks) as client:
            response = await client.post("/relay/openai/v1/chat/completions")
    assert response.status_code == 500
    assert response.json() == {"error": "Internal server error"}
    assert any(record.exc_info for record in caplog.records)


async def test_an_error_after_the_response_started_is_not_answered_twice() -> None:
    async def breaks_midway(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("provider stream broke")

    async with client_for(breaks_midway) as client:
        with pytest.raises(RuntimeError, match="provider stream broke"):
            await client.post("/relay/openai/v1/chat/completions")
