"""The browser client's logic, run by Node.js on the module itself (`clients/js/byok-relay.js`).

What does not need a page: how server-sent events split across chunks, the text of each
provider's stream, errors, which URLs get the token, connecting and forgetting. Node has the
same `fetch`, `Response` and streams as a browser; the page-side parts (the element, the SDKs,
real cancellation) run in Chromium in `tests/test_browser.py`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

MODULE = Path(__file__).resolve().parent.parent / "clients" / "js" / "byok-relay.js"

# A stream in each line-end style, with a comment, a multi-line data field, an event name, an
# empty one, an id (which later events carry too), a field without a colon, an event whose
# blank line is a CR at the very end, and one the stream ends inside of (dropped, as
# EventSource drops it).
SSE = (
    ": a comment\r\n"
    "data: first\r\n\r\n"
    "event: named\rdata: two\rdata:  lines\r\r"
    "id: 7\ndata: é ü ✓\nretry\n\n"
    "event:\ndata: plain\n\n"
    "id: a\0b\ndata: kept id\r\r"
    "data: dropped"
)
EXPECTED = [
    {"event": "message", "data": "first", "id": None},
    {"event": "named", "data": "two\n lines", "id": None},
    {"event": "message", "data": "é ü ✓", "id": "7"},
    {"event": "message", "data": "plain", "id": "7"},
    {"event": "message", "data": "kept id", "id": "7"},
]
ENDS_IN_CR = "data: last\r\r"


def run(body: str) -> Any:
    """Runs `body` (an async function's body, with the module as `client`); its result."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for the client's tests (`.ci/run` installs it)")
    script = (
        f"import * as client from {json.dumps(MODULE.as_uri())};\n"
        f"const result = await (async () => {{ {body} }})();\n"
        "process.stdout.write(JSON.stringify(result ?? null));\n"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


STREAM = """
const chunked = (pieces, type = "text/event-stream") => new Response(new ReadableStream({
  start(c) { for (const p of pieces) c.enqueue(new TextEncoder().encode(p)); c.close(); },
}), { headers: { "content-type": type } });
const bytes = (pieces) => new Response(new ReadableStream({
  start(c) { for (const p of pieces) c.enqueue(p); c.close(); },
}), { headers: { "content-type": "text/event-stream" } });
const all = async (iterable) => {
  const out = [];
  for await (const x of iterable) out.push(x);
  return out;
};
"""


def test_events_are_split_the_same_wherever_the_chunks_break() -> None:
    result = run(
        STREAM
        + f"""
        const text = {json.dumps(SSE)};
        const whole = new TextEncoder().encode(text);
        const splits = [];
        for (let i = 1; i < whole.length; i++) {{
          splits.push(await all(client.events(bytes([whole.slice(0, i), whole.slice(i)]))));
        }}
        const single = await all(client.events(bytes([...whole].map((b) => Uint8Array.of(b)))));
        return {{ whole: await all(client.events(chunked([text]))), splits, single,
          last: await all(client.events(chunked([{json.dumps(ENDS_IN_CR)}]))) }};
        """
    )
    assert result["last"] == [{"event": "message", "data": "last", "id": None}]
    assert result["whole"] == EXPECTED
    assert result["single"] == EXPECTED
    assert all(split == EXPECTED for split in result["splits"]), "a split changed the events"


def test_text_deltas_read_each_providers_stream_and_whole_answers() -> None:
    result = run(
        STREAM
        + """
        const sse = (...objects) => chunked(objects.map((o) => `data: ${JSON.stringify(o)}\\n\\n`));
        const json = (o) => chunked([JSON.stringify(o)], "application/json");
        const texts = (r) => all(client.textDeltas(r));
        return {
          openai: await texts(sse({ choices: [{ delta: { role: "assistant", content: "" } }] },
            { choices: [{ delta: { content: "Hel" } }] },
            { choices: [{ delta: { content: "lo" } }] },
            { choices: [], usage: { prompt_tokens: 1 } })),
          done: await texts(chunked(['data: {"choices":[{"delta":{"content":"a"}}]}\\n\\n',
            "data: [DONE]\\n\\n", 'data: {"choices":[{"delta":{"content":"after"}}]}\\n\\n'])),
          responses: await texts(sse({ type: "response.created" },
            { type: "response.output_text.delta", delta: "Hi" })),
          anthropic: await texts(chunked([
            'event: message_start\\ndata: {"type":"message_start","message":{}}\\n\\n',
            'event: content_block_delta\\ndata: {"type":"content_block_delta","index":0,' +
            '"delta":{"type":"text_delta","text":"Bon"}}\\n\\n',
            'event: content_block_delta\\ndata: {"type":"content_block_delta","index":0,' +
            '"delta":{"type":"input_json_delta","partial_json":"{"}}\\n\\n',
            'event: content_block_delta\\ndata: {"type":"content_block_delta","index":0,' +
            '"delta":{"type":"text_delta","text":"jour"}}\\n\\n'])),
          gemini: await texts(sse({ candidates: [{ content: { parts: [
            { text: "thinking", thought: true }, { text: "Ciao" }] } }] },
            { candidates: [{ content: { parts: [{ text: "!" }] } }] })),
          wholeOpenai: await texts(json({ choices: [{ message: { content: "whole" } }] })),
          wholeAnthropic: await texts(json({ content: [{ type: "text", text: "A" },
            { type: "tool_use" }, { type: "text", text: "B" }] })),
          wholeGemini: await texts(json({ candidates: [{ content: { parts: [{ text: "G" }] } }] })),
        };
        """
    )
    assert result == {
        "openai": ["Hel", "lo"],
        "done": ["a"],
        "responses": ["Hi"],
        "anthropic": ["Bon", "jour"],
        "gemini": ["Ciao", "!"],
        "wholeOpenai": ["whole"],
        "wholeAnthropic": ["AB"],
        "wholeGemini": ["G"],
    }


def test_a_stream_that_ends_in_an_error_throws_a_relay_error() -> None:
    result = run(
        STREAM
        + """
        const failure = async (response) => {
          try { await all(client.textDeltas(response)); return null; }
          catch (e) { return { name: e.name, message: e.message, code: e.code,
            relayError: e instanceof client.RelayError }; }
        };
        return [
          await failure(chunked(['data: {"choices":[{"delta":{"content":"a"}}]}\\n\\n',
            'event: error\\ndata: {"error":"Stream interrupted by provider"}\\n\\n'])),
          await failure(chunked(['event: error\\ndata: {"error":"Stopped: the relay is ' +
            'shutting down","code":"relay_draining"}\\n\\n'])),
          await failure(chunked(['event: error\\ndata: {"type":"error","error":' +
            '{"type":"overloaded_error","message":"Overloaded"}}\\n\\n'])),
          await failure(chunked(['data: {"error":{"code":500,"message":"Internal",' +
            '"status":"INTERNAL"}}\\n\\n'])),
          await failure(chunked(['event: error\\ndata: {"type":"error","code":"server_error",' +
            '"message":"Try again","sequence_number":3}\\n\\n'])),
          await failure(chunked(['event: response.failed\\ndata: {"type":"response.failed",' +
            '"response":{"status":"failed","error":{"code":"rate_limit_exceeded",' +
            '"message":"Slow down"}}}\\n\\n'])),
        ];
        """
    )
    assert result == [
        {"name": "RelayError", "message": "Stream interrupted by provider",
         "code": "stream_error", "relayError": True},
        {"name": "RelayError", "message": "Stopped: the relay is shutting down",
         "code": "relay_draining", "relayError": True},
        {"name": "RelayError", "message": "Overloaded", "code": "overloaded_error",
         "relayError": True},
        {"name": "RelayError", "message": "Internal", "code": "INTERNAL", "relayError": True},
        {"name": "RelayError", "message": "Try again", "code": "server_error",
         "relayError": True},
        {"name": "RelayError", "message": "Slow down", "code": "rate_limit_exceeded",
         "relayError": True},
    ]  # fmt: skip


def test_leaving_a_stream_early_cancels_its_body_and_an_answer_reads_once() -> None:
    result = run(
        """
        const cancelled = [];
        const endless = () => new Response(new ReadableStream({
          pull(c) { c.enqueue(new TextEncoder().encode('data: {"choices":[{"delta":' +
            '{"content":"x"}}]}\\n\\n')); },
          cancel(reason) { cancelled.push(String(reason ?? "none")); },
        }), { headers: { "content-type": "text/event-stream", "x-relay-provider": "openai" } });
        const answer = new client.Answer(endless());
        let seen = 0;
        for await (const text of answer) if (++seen === 3) break;
        let again = null;
        try { answer[Symbol.asyncIterator](); } catch (e) { again = e.message; }
        const controller = new AbortController();
        const aborted = new client.Answer(endless(), controller.signal);
        let abort = null;
        try {
          for await (const text of aborted) controller.abort();
        } catch (e) { abort = e.name; }
        return { seen, cancelled, again, abort, provider: answer.provider };
        """
    )
    assert result["seen"] == 3
    assert len(result["cancelled"]) == 2, "each stream left early was cancelled"
    assert result["again"] == "An answer can be read once"
    assert result["abort"] == "AbortError"
    assert result["provider"] == "openai"


def test_an_abort_yields_nothing_more_even_from_the_chunk_already_read() -> None:
    """Three deltas in one chunk: the abort after the first is the last thing the loop sees."""
    result = run(
        STREAM
        + """
        const delta = (t) => 'data: {"choices":[{"delta":{"content":"' + t + '"}}]}\\n\\n';
        const controller = new AbortController();
        const answer = new client.Answer(chunked([delta("a") + delta("b") + delta("c")]),
          controller.signal);
        const seen = [];
        let error = null;
        try {
          for await (const text of answer) {
            seen.push(text);
            controller.abort();
          }
        } catch (e) { error = e.name; }
        return { seen, error };
        """
    )
    assert result == {"seen": ["a"], "error": "AbortError"}


def test_errors_carry_the_code_status_retry_after_and_who_answered() -> None:
    result = run(
        """
        const fields = (e) => ({ message: e.message, status: e.status, code: e.code,
          retryAfter: e.retryAfter, fromProvider: e.fromProvider, provider: e.provider });
        const relays = await client.RelayError.from(new Response(
          '{"error":"Too many requests","code":"rate_limited"}',
          { status: 429, headers: { "retry-after": "7" } }));
        const providers = await client.RelayError.from(new Response(
          '{"error":{"message":"Rate limit reached","type":"requests","code":null}}',
          { status: 429, headers: { "retry-after": new Date(Date.now() + 30000).toUTCString(),
            "x-relay-provider": "openai" } }));
        const notJson = await client.RelayError.from(new Response("<html>bad gateway</html>",
          { status: 502, statusText: "Bad Gateway" }));
        const empty = await client.RelayError.from(new Response(null, { status: 503 }));
        return [fields(relays), fields(providers), fields(notJson), fields(empty)];
        """
    )
    relays, providers, not_json, empty = result
    assert relays == {"message": "Too many requests", "status": 429, "code": "rate_limited",
                      "retryAfter": 7, "fromProvider": False, "provider": None}  # fmt: skip
    assert providers["code"] == "requests"
    assert providers["fromProvider"] is True
    assert 28 <= providers["retryAfter"] <= 30
    assert not_json["message"] == "<html>bad gateway</html>"
    assert not_json["code"] == "http_502"
    assert empty["message"] == "503 error"
    assert empty["retryAfter"] is None


def test_the_token_goes_only_to_the_relays_own_urls() -> None:
    result = run(
        """
        const sent = [];
        const fake = async (input, init = {}) => {
          const request = input instanceof Request ? input : new Request(input, init);
          sent.push([request.url, request.headers.get("x-relay-token"),
            request.headers.get("content-type")]);
          return new Response("{}");
        };
        const relay = new client.Relay("https://relay.example/base/", "TOKEN", { fetch: fake });
        await relay.fetch("/keys");
        await relay.fetch("relay/openai/v1/models?x=1");
        await relay.fetch("https://relay.example/base/stats",
          { headers: { "content-type": "a/b" } });
        await relay.fetch(new Request("https://relay.example/base/keys",
          { headers: { "content-type": "c/d" } }));
        await relay.fetch("https://relay.example/basement/x");
        await relay.fetch("https://relay.example.evil.example/base/keys");
        await relay.fetch("https://api.openai.com/v1/models");
        return { url: relay.url, sent };
        """
    )
    assert result["url"] == "https://relay.example/base"
    assert result["sent"] == [
        ["https://relay.example/base/keys", "TOKEN", None],
        ["https://relay.example/base/relay/openai/v1/models?x=1", "TOKEN", None],
        ["https://relay.example/base/stats", "TOKEN", "a/b"],
        ["https://relay.example/base/keys", "TOKEN", "c/d"],
        ["https://relay.example/basement/x", None, None],
        ["https://relay.example.evil.example/base/keys", None, None],
        ["https://api.openai.com/v1/models", None, None],
    ]


def test_connect_registers_once_restores_after_and_forgets_a_dead_token() -> None:
    result = run(
        """
        const calls = [];
        let dead = false;
        const fake = async (url, init = {}) => {
          calls.push(`${init.method ?? "GET"} ${url}`);
          if (url.endsWith("/users")) return new Response('{"token":"T1","expires_at":null}');
          const refused = '{"error":"Invalid or expired token","code":"invalid_token"}';
          if (dead) return new Response(refused, { status: 401 });
          return new Response('{"keys":[]}', { headers: { "content-type": "application/json" } });
        };
        const kept = new Map();
        const storage = { get: (n) => kept.get(n) ?? null, set: (n, t) => kept.set(n, t),
          delete: (n) => kept.delete(n) };
        const options = { url: "https://relay.example", appId: "app", storage, fetch: fake };
        const first = await client.connect(options);
        const second = await client.connect(options);
        const restored = await client.restore(options);
        dead = true;
        let code = null;
        try { await restored.keys.list(); } catch (e) { code = e.code; }
        const gone = await client.restore(options);
        let missing = null;
        try { await client.connect({ url: "https://relay.example", storage }); }
        catch (e) { missing = e.message; }
        return { tokens: [first.token, second.token, restored.token], calls, code,
          gone, missing, kept: [...kept.entries()] };
        """
    )
    assert result["tokens"] == ["T1", "T1", "T1"]
    assert result["calls"] == ["POST https://relay.example/users", "GET https://relay.example/keys"]
    assert result["code"] == "invalid_token"
    assert result["gone"] is None
    assert result["kept"] == []
    assert result["missing"] == "connect() needs an appId to register a new user"
