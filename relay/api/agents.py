"""`GET /llms.txt`: how to integrate this relay, written for a coding agent (the llms.txt
convention: Markdown, a title, a one-line summary, then sections).

Built from what this relay serves, the provider table and the settings that change what a
client must do (`APP_SECRET`, `ALLOWED_MODELS`), so it can never describe another relay. Every
URL is relative to the relay's origin: the text echoes nothing of the request (a `Host` a client
chose must not reach a cache). `SKILL.md` in the repository is the general guide; this is the
running relay's own page.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from relay.config import Settings
from relay.providers.table import PROVIDERS
from relay.services import Services

__all__ = ["llms_txt", "render"]

_MEDIA_TYPE = "text/markdown; charset=utf-8"


async def llms_txt(request: Request) -> Response:
    services: Services = request.state.services
    return Response(
        render(services.settings),
        media_type=_MEDIA_TYPE,
        headers={"cache-control": "public, max-age=300"},
    )


def render(settings: Settings) -> str:
    registration = (
        "`POST /users` needs `Authorization: Bearer <APP_SECRET>` on this relay: call it from "
        "your backend and hand the token to the browser, never the secret."
        if settings.app_secret is not None
        else "`POST /users` is open on this relay (no `APP_SECRET`)."
    )
    models = (
        "Only these models may be named: " + ", ".join(f"`{m}`" for m in settings.allowed_models)
        if settings.allowed_models
        else "Every model of a provider may be named."
    )
    providers = "\n".join(_provider_line(name) for name in PROVIDERS)
    return f"""# byok-relay

> A bring-your-own-key relay for AI APIs: each end user stores their own provider key here \
once, and the app calls the provider's own API through the relay with a relay token. The key \
never reaches the browser; the user's provider bills the user.

URLs below are relative to this relay's origin.

## Integrate in three calls

1. Register the user once: `POST /users` with `{{"app_id": "<your app>"}}` answers \
`{{"token": "...", "expires_at": ...}}`. Keep the token (it is shown once). {registration}
2. Store the user's own key once per provider: `POST /keys/<provider>` with `{{"key": "..."}}` \
and the token in `x-relay-token`; add `?verify=true` to have the relay check it with the \
provider first. `GET /keys` lists the stored keys (hint and status, never the key); \
`DELETE /keys/<provider>` removes one.
3. Call the provider's own API under `/relay/<provider>/<its path>`: the same body, the same \
answer (streams included), the user's key injected. Send the token as `x-relay-token`, or as \
the official SDK's API key (the relay reads `Authorization: Bearer`, `x-api-key` and \
`x-goog-api-key` when `x-relay-token` is absent). `POST /relay` routes an OpenAI- or \
Anthropic-style body by its `model` (`provider/name` or a known family; see `/models`).

Every relayed answer says which key paid: `x-relay-provider` and `x-relay-key-hint`. Errors are \
JSON `{{"error", "code"}}` with the right status; a 429 carries `Retry-After`. {models}

## SDK base URLs

- Any chat model through one OpenAI SDK: base URL `/relay/v1` (the model picks the provider:
  `gpt-...`, `claude-...`, `gemini-...`, `provider/name`), API key: the relay token;
  `models.list()` there lists every model of every key the user holds, as `provider/id`.
- OpenAI SDK: base URL `/relay/openai/v1`, API key: the relay token.
- Anthropic SDK: base URL `/relay/anthropic`, API key: the relay token (in a browser, the SDK's \
`dangerouslyAllowBrowser` is safe here: the key it holds is the relay token).
- Groq, OpenRouter, Mistral through an OpenAI SDK: `/relay/groq/openai/v1`, \
`/relay/openrouter/api/v1`, `/relay/mistral/v1`.

## In a browser

This relay serves its own client, a dependency-free ES module: `import {{ connect }} from \
"<relay>/sdk/byok-relay.js"` (types: `/sdk/byok-relay.d.ts`). `await connect({{ appId }})` \
registers once and keeps the token; `relay.keys.store(provider, key)` checks and stores a \
key; `relay.chat({{ model, messages }})` streams text from any provider; the \
`<byok-connect>` element lets the user add, check and remove their own keys; `relay.fetch` \
adds the token for the official SDKs (`dangerouslyAllowBrowser: true` is safe: they hold the \
relay token, not a provider key). Errors are `RelayError` with `status`, `code` and \
`retryAfter`.

## Providers and the paths they allow

{providers}

## Reference

- [OpenAPI document](/openapi.json): every endpoint, its body and its answers.
- [Model routing](/models): how `POST /relay` picks a provider, and the model allowlist.
- [Usage](/stats): the caller's own request counts and tokens (with the token).
"""


def _provider_line(name: str) -> str:
    provider = PROVIDERS[name]
    paths = ", ".join(f"`{path}`" for path in provider.allowed_paths)
    reads = [*provider.read_paths, *provider.listing_paths]
    also = f"; GET: {', '.join(f'`{path}`' for path in reads)}" if reads else ""
    where = (
        "the upstream named in `x-relay-base-url`"
        if not provider.base_url
        else f"`{provider.base_url}`"
    )
    return f"- `{name}` ({provider.title or name}, {where}): POST {paths}{also}"
