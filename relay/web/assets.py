"""Static files for browsers, read once and answered from memory with an ETag."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["CLIENT", "DEMO", "DEMO_POLICY", "Asset", "client_folder"]

_HERE = Path(__file__).resolve().parent

# The demo page's scripts and styles are files of this origin: no inline script or style, no
# other origin, no framing, no forms posting anywhere.
DEMO_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The client's URL carries no version: an hour's cache, then a day more of the copy at hand
# while it is revalidated by its ETag (so a fixed client reaches a page within a visit or two).
_CLIENT_CACHE: Final = "public, max-age=3600, stale-while-revalidate=86400"
_PAGE_CACHE: Final = "no-cache"


class Asset:
    """One file; `respond` is its endpoint (`GET`, and `HEAD` by Starlette)."""

    def __init__(
        self, body: bytes, media_type: str, cache: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.body = body
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self.headers = {
            "cache-control": cache,
            "etag": self.etag,
            # CORS headers are added only for an allowed Origin: a shared cache must tell apart
            # the answer to a page of another origin from the one to a request without Origin.
            "vary": "Origin",
            "x-content-type-options": "nosniff",
            **(headers or {}),
        }
        self.media_type = media_type

    @classmethod
    def read(
        cls, path: Path, media_type: str, cache: str, headers: Mapping[str, str] | None = None
    ) -> Asset:
        return cls(path.read_bytes(), media_type, cache, headers)

    async def respond(self, request: Request) -> Response:
        tags = _etags(request.headers.get("if-none-match", ""))
        if self.etag in tags or "*" in tags:
            return Response(status_code=304, headers=self.headers)
        return Response(self.body, headers=self.headers, media_type=self.media_type)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def client_folder() -> Path:
    """Where the browser client is: `relay/sdk/` installed from a wheel, else the checkout's."""
    installed = _HERE.parent / "sdk"
    return installed if installed.is_dir() else _HERE.parents[1] / "clients" / "js"


def _client() -> dict[str, Asset]:
    folder = client_folder()
    return {
        "/sdk/byok-relay.js": Asset.read(
            folder / "byok-relay.js", "text/javascript; charset=utf-8", _CLIENT_CACHE
        ),
        "/sdk/byok-relay.d.ts": Asset.read(
            folder / "byok-relay.d.ts", "application/typescript; charset=utf-8", _CLIENT_CACHE
        ),
    }


def _demo() -> dict[str, Asset]:
    folder = _HERE / "demo"
    page = {"content-security-policy": DEMO_POLICY, "referrer-policy": "no-referrer"}
    return {
        "/": Asset.read(folder / "index.html", "text/html; charset=utf-8", _PAGE_CACHE, page),
        "/demo.js": Asset.read(folder / "demo.js", "text/javascript; charset=utf-8", _PAGE_CACHE),
        "/demo.css": Asset.read(folder / "demo.css", "text/css; charset=utf-8", _PAGE_CACHE),
    }


CLIENT: Final = _client()
DEMO: Final = _demo()
