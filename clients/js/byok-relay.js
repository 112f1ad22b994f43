// byok-relay browser client: one dependency-free ES module.
//
//   import { connect } from "https://relay.example.com/sdk/byok-relay.js";
//   const relay = await connect({ appId: "my-app" });
//   await relay.keys.store("openai", pastedKey);            // checked with the provider first
//   for await (const text of await relay.chat({ model: "gpt-4o-mini", messages })) show(text);
//
// The relay holds each user's provider keys; the page holds only the user's relay token.
// README.md beside this file is the guide; byok-relay.d.ts the reference.

export const VERSION = "0.1.0";

// Served by a relay at <relay>/sdk/byok-relay.js, the module knows where its relay is.
const SERVED_FROM = /\/sdk\/byok-relay\.js$/.test(new URL(import.meta.url).pathname)
  ? new URL("..", import.meta.url).href.replace(/\/$/, "")
  : undefined;

const STORAGE_PREFIX = "byok-relay:";

/** An error answered by the relay or, through it, by the provider. */
export class RelayError extends Error {
  constructor(message, { status = 0, code = "error", retryAfter = null, body = null,
    provider = null, requestId = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "RelayError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.body = body;
    this.provider = provider;
    this.requestId = requestId;
  }

  /** True when the provider answered this error (the relay forwarded it as it was). */
  get fromProvider() {
    return this.provider !== null;
  }

  /** The error a failed response carries; reads the body. */
  static async from(response) {
    const body = await readJson(response);
    const info = answerInfo(response);
    // The relay's own errors are {error: "...", code}; providers nest theirs in an object.
    const inner = body && typeof body.error === "object" && body.error !== null ? body.error : null;
    const message =
      (body && typeof body.error === "string" && body.error) ||
      (inner && typeof inner.message === "string" && inner.message) ||
      `${response.status} ${response.statusText || "error"}`.trim();
    const code =
      (body && typeof body.code === "string" && body.code) ||
      (inner && providerCode(inner)) ||
      `http_${response.status}`;
    return new RelayError(message, {
      status: response.status,
      code,
      retryAfter: retryAfterSeconds(response.headers.get("retry-after")),
      body,
      provider: info.provider,
      requestId: info.requestId,
    });
  }
}

// The providers name an error by `code` (OpenAI), `type` (Anthropic) or `status` (Google, whose
// `code` is the HTTP status).
function providerCode(inner) {
  const named = [inner.code, inner.type, inner.status].find((v) => typeof v === "string" && v);
  return named ?? (inner.code === undefined || inner.code === null ? null : String(inner.code));
}

/** Which provider and which of the user's keys answered a relayed response. */
export function answerInfo(response) {
  const headers = response.headers;
  return {
    provider: headers.get("x-relay-provider"),
    keyHint: headers.get("x-relay-key-hint"),
    requestId: headers.get("x-request-id") ?? headers.get("request-id"),
  };
}

function retryAfterSeconds(value) {
  if (value === null || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

async function readJson(response) {
  const text = await response.text();
  if (text === "") return null;
  try {
    return JSON.parse(text);
  } catch {
    return { error: text.slice(0, 500) };
  }
}

// ---- where the token is kept ----------------------------------------------------------------

// "memory": until the page is left; one map for the page, so restore() finds what connect() kept.
const MEMORY = new Map();
const memoryStorage = {
  get: (name) => MEMORY.get(name) ?? null,
  set: (name, token) => void MEMORY.set(name, token),
  delete: (name) => void MEMORY.delete(name),
};

function webStorage(storage) {
  return {
    get: (name) => storage.getItem(name),
    set: (name, token) => storage.setItem(name, token),
    delete: (name) => storage.removeItem(name),
  };
}

function tokenStorage(choice) {
  if (choice === "memory") return memoryStorage;
  if (choice === "session") return webStorage(globalThis.sessionStorage);
  if (choice === "local") return webStorage(globalThis.localStorage);
  if (choice && typeof choice.get === "function" && typeof choice.set === "function"
      && typeof choice.delete === "function") {
    return choice;
  }
  throw new TypeError('storage must be "memory", "session", "local" or {get, set, delete}');
}

/** The user's relay if a token is kept in `storage` from before, else null (nothing is sent). */
export async function restore({ url = SERVED_FROM, appId, storage = "local", fetch } = {}) {
  const kept = tokenStorage(storage);
  const token = await kept.get(storageName(url, appId));
  return token ? connect({ url, appId, storage: kept, token, fetch }) : null;
}

function storageName(url, appId) {
  return `${STORAGE_PREFIX}${String(url).replace(/\/+$/, "")}:${appId ?? ""}`;
}

/**
 * The user's relay: restores the token kept in `storage`, or registers once and keeps it.
 * `register` replaces the relay's own registration (a relay with APP_SECRET registers users
 * from the app's backend, which hands the page a token).
 */
export async function connect({ url = SERVED_FROM, appId, storage = "local", token, register,
  fetch: fetchImpl } = {}) {
  if (!url) throw new TypeError("connect() needs the relay's url");
  const base = String(url).replace(/\/+$/, "");
  const store = tokenStorage(storage);
  const name = storageName(base, appId);
  const doFetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
  let current = token ?? (await store.get(name));
  if (!current) {
    if (register) {
      current = await register();
    } else {
      if (!appId) throw new TypeError("connect() needs an appId to register a new user");
      const response = await doFetch(`${base}/users`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ app_id: appId }),
      });
      if (!response.ok) throw await RelayError.from(response);
      current = (await response.json()).token;
    }
  }
  if (typeof current !== "string" || current === "") {
    throw new TypeError("register() must return the relay token");
  }
  await store.set(name, current);
  return new Relay(base, current, { forget: () => store.delete(name), fetch: doFetch });
}

// ---- the relay -------------------------------------------------------------------------------

export class Relay {
  #token;
  #forget;
  #fetch;

  constructor(url, token, { forget = () => {}, fetch: fetchImpl } = {}) {
    // As the URL parser writes it (host lower-cased, default port dropped), as a Request's is.
    this.url = new URL(String(url)).href.replace(/\/+$/, "");
    this.#token = token;
    this.#forget = forget;
    this.#fetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
    this.keys = new Keys((method, path, body) => this.#json(method, path, body));
    this.tokens = new Tokens((method, path, body) => this.#json(method, path, body));
    this.limits = new Limits((method, path, body) => this.#json(method, path, body));
    // Bound, so that it can be handed to an SDK as its `fetch`.
    this.fetch = this.fetch.bind(this);
  }

  /** The relay token: a credential for this user's keys, like a session cookie. */
  get token() {
    return this.#token;
  }

  /**
   * `fetch`, with the token added to requests for this relay (never to any other URL). A path
   * ("/relay/openai/v1/...") is taken relative to the relay. A request carrying the token never
   * follows a redirect: a browser would send the header on to wherever it points.
   */
  fetch(input, init = {}) {
    const isRequest = typeof Request !== "undefined" && input instanceof Request;
    const target = isRequest ? input.url : this.#resolve(String(input));
    if (!this.#owns(target)) return this.#fetch(input, init);
    const headers = new Headers(init.headers ?? (isRequest ? input.headers : undefined));
    headers.set("x-relay-token", this.#token);
    const sent = { ...init, headers, redirect: "error" };
    if (isRequest) return this.#fetch(new Request(input, sent));
    return this.#fetch(target, sent);
  }

  /** POST a JSON body to a relay path; the answer as an `Answer` (an error status throws). */
  async request(path, body, { signal, headers } = {}) {
    const response = await this.fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
      signal,
    });
    await this.#check(response);
    return new Answer(response, signal);
  }

  /**
   * A streamed chat in the OpenAI format with any model of any key the user holds (the relay's
   * `/relay/v1/chat/completions` routes by `model`); iterate it for the text.
   */
  chat(body, options = {}) {
    return this.request("/relay/v1/chat/completions", { stream: true, ...body }, options);
  }

  /** The routing table: the providers this relay serves and how models name them. */
  models() {
    return this.#json("GET", "/models");
  }

  /** The user's own usage: totals, errors, by provider, top models. */
  stats() {
    return this.#json("GET", "/stats");
  }

  /**
   * The user's own ledger: requests, tokens by kind and outcomes, summed by `groupBy` ("day",
   * "app", "provider", "model" or "token") from `from` to `to` (Dates, epoch ms or ISO strings;
   * by default the last 30 days).
   */
  usage({ from, to, groupBy = "day" } = {}) {
    const query = new URLSearchParams({ group_by: groupBy });
    const instant = (value) => (value instanceof Date ? value.toISOString() : String(value));
    if (from !== undefined) query.set("from", instant(from));
    if (to !== undefined) query.set("to", instant(to));
    return this.#json("GET", `/usage?${query}`);
  }

  /** Ends the token on every instance of the relay and forgets it here. Keys stay stored. */
  async revoke() {
    const answer = await this.#json("POST", "/tokens/revoke");
    await this.forget();
    return answer;
  }

  /** Erases the user, every stored key and every record about them, and forgets the token. */
  async erase() {
    const answer = await this.#json("DELETE", "/users");
    await this.forget();
    return answer;
  }

  /** Forgets the token in this browser (the next `connect()` registers a new user). */
  async forget() {
    await this.#forget();
  }

  async #json(method, path, body) {
    const init = { method };
    if (body !== undefined) {
      init.headers = { "content-type": "application/json" };
      init.body = JSON.stringify(body);
    }
    const response = await this.fetch(path, init);
    await this.#check(response);
    return response.json();
  }

  async #check(response) {
    if (response.ok) return;
    const error = await RelayError.from(response);
    // A dead token stays dead: the next connect() must not restore it.
    if (error.code === "invalid_token") await this.forget();
    throw error;
  }

  #resolve(input) {
    const absolute = /^[a-z][a-z0-9+.-]*:/i.test(input);
    return absolute ? input : `${this.url}/${input.replace(/^\/+/, "")}`;
  }

  #owns(target) {
    let href;
    try {
      href = new URL(target).href;
    } catch {
      return false;
    }
    return href === this.url || href.startsWith(`${this.url}/`) || href.startsWith(`${this.url}?`);
  }
}

class Keys {
  #json;

  constructor(json) {
    this.#json = json;
  }

  /** The user's stored keys: provider, hint (`sk-...a1b2`), status and times; never a key. */
  async list() {
    return (await this.#json("GET", "/keys")).keys;
  }

  /**
   * Stores (or replaces) the key for `provider`. With `verify` (the default) the provider is
   * asked first, and a key it refuses is not stored: a RelayError with `body.key_status`.
   */
  store(provider, key, { verify = true } = {}) {
    const query = verify ? "?verify=true" : "";
    return this.#json("POST", `/keys/${encodeURIComponent(provider)}${query}`, { key });
  }

  /** Replaces the key only if the provider accepts the new one; the old one stays otherwise. */
  rotate(provider, key) {
    return this.#json("POST", `/keys/${encodeURIComponent(provider)}/rotate`, { key });
  }

  /** Removes the key for `provider` (nothing happens if there is none). */
  remove(provider) {
    return this.#json("DELETE", `/keys/${encodeURIComponent(provider)}`);
  }
}

/** Narrow tokens: limited second tokens of the account, for a page that should do less. */
class Tokens {
  #json;

  constructor(json) {
    this.#json = json;
  }

  /**
   * Mints a token limited to `providers`, `models` (patterns, `*` any run), `origins` (the
   * pages it may be used from) and an expiry (`expiresIn` seconds, or `expiresAt` a Date or
   * epoch ms), and a `budget` (caps, as `limits.set` takes them, on what this token spends);
   * a limit left out is this token's own. The answer holds `token`, shown once.
   */
  mint({ name, providers, models, origins, expiresIn, expiresAt, budget } = {}) {
    const at = expiresAt instanceof Date ? expiresAt.getTime() : expiresAt;
    const caps = budget?.map(({ costUsd, ...cap }) =>
      costUsd === undefined ? cap : { ...cap, cost_usd: String(costUsd) });
    const body = {
      name, providers, models, origins, expires_in: expiresIn, expires_at: at, budget: caps,
    };
    for (const field of Object.keys(body)) if (body[field] === undefined) delete body[field];
    return this.#json("POST", "/tokens", body);
  }

  /** The live tokens minted from this one, at any depth (never the tokens themselves). */
  async list() {
    return (await this.#json("GET", "/tokens")).tokens;
  }

  /** Revokes the token `id` and every token minted from it, everywhere at once. */
  revoke(id) {
    return this.#json("DELETE", `/tokens/${encodeURIComponent(id)}`);
  }
}

/** The user's hard spending caps: a request that could pass one is refused (402). */
class Limits {
  #json;

  constructor(json) {
    this.#json = json;
  }

  /** The caps, each with what it has spent this period and when that resets. */
  get() {
    return this.#json("GET", "/limits");
  }

  /**
   * Replaces every cap: `[{period: "day" | "month", requests?, tokens?, costUsd?, app?,
   * provider?, model?}]`; `allowUnpriced` lets models of no known price through cost caps.
   */
  set(caps, { allowUnpriced = false } = {}) {
    const wire = caps.map(({ costUsd, ...cap }) =>
      costUsd === undefined ? cap : { ...cap, cost_usd: String(costUsd) });
    return this.#json("PUT", "/limits", { caps: wire, allow_unpriced: allowUnpriced });
  }

  /** Removes every cap. */
  clear() {
    return this.#json("DELETE", "/limits");
  }
}

// ---- answers and streams ----------------------------------------------------------------------

/** A relayed answer: which key paid, and its text (iterate it, once, for the deltas). */
export class Answer {
  #read = false;

  constructor(response, signal) {
    this.response = response;
    this.signal = signal;
    Object.assign(this, answerInfo(response));
  }

  [Symbol.asyncIterator]() {
    if (this.#read) throw new TypeError("An answer can be read once");
    this.#read = true;
    return textDeltas(this.response, { signal: this.signal })[Symbol.asyncIterator]();
  }

  /** The whole text, once the answer has ended. */
  async text() {
    let text = "";
    for await (const delta of this) text += delta;
    return text;
  }
}

/**
 * The server-sent events of a response, as {event, data, id}, parsed as the WHATWG parser
 * (EventSource) parses them: CRLF, CR or LF line ends, `data` lines joined, comments skipped,
 * the last `id` carried over, an event the stream ends before the end of is dropped.
 */
export async function* events(response, { signal } = {}) {
  if (!response.body) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const cancel = () => reader.cancel(signal.reason).catch(() => {});
  signal?.addEventListener("abort", cancel, { once: true });
  let buffer = "";
  let type = "";
  let data = [];
  let lastId = null;
  let finished = false;
  const line = (text) => {
    if (text === "") {
      const ready = data.length ? { event: type || "message", data: data.join("\n"), id: lastId }
        : null;
      type = "";
      data = [];
      return ready;
    }
    if (text.startsWith(":")) return null;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") type = value;
    else if (field === "id" && !value.includes("\0")) lastId = value;
    return null;
  };
  try {
    for (;;) {
      signal?.throwIfAborted();
      const { value, done } = await reader.read();
      signal?.throwIfAborted();
      if (done) {
        finished = true;
        // A CR held back as the first half of a CRLF ended its line after all.
        const ready = buffer.endsWith("\r") ? line(buffer.slice(0, -1)) : null;
        if (ready) yield ready;
        return;
      }
      buffer += decoder.decode(value, { stream: true });
      for (;;) {
        const end = buffer.search(/\r\n|\r|\n/);
        // A CR last in the buffer may be the first half of a CRLF: wait for the next chunk.
        if (end < 0 || (end === buffer.length - 1 && buffer[end] === "\r")) break;
        const width = buffer.startsWith("\r\n", end) ? 2 : 1;
        const ready = line(buffer.slice(0, end));
        buffer = buffer.slice(end + width);
        if (!ready) continue;
        // One chunk can hold several events: an abort while the caller handles one ends the
        // stream before the next, as it ends fetch's own body.
        signal?.throwIfAborted();
        yield ready;
      }
    }
  } finally {
    signal?.removeEventListener("abort", cancel);
    // Leaving early (a break, an abort, an error) closes the connection: the relay then stops
    // the provider's work, which the user would otherwise pay for.
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/**
 * The text of an answer as it arrives: OpenAI chat, completions and Responses streams,
 * Anthropic messages streams and Gemini streams, or the text of a whole JSON answer.
 * A stream that ends in an error event throws a RelayError.
 */
export async function* textDeltas(source, { signal = source.signal } = {}) {
  const response = source instanceof Answer ? source.response : source;
  const info = answerInfo(response);
  const type = response.headers.get("content-type") ?? "";
  if (!type.includes("text/event-stream")) {
    const body = await readJson(response);
    const text = body === null ? "" : wholeText(body);
    if (text) yield text;
    return;
  }
  for await (const message of events(response, { signal })) {
    if (message.data === "[DONE]") return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      continue;
    }
    const failure = streamFailure(message.event, data);
    if (failure) {
      throw new RelayError(failure.message, { status: response.status, code: failure.code,
        body: data, provider: info.provider, requestId: info.requestId });
    }
    const text = deltaText(data);
    if (text) yield text;
  }
}

// The relay ends a broken stream with `event: error` and {"error": "...", "code"}; providers
// send their own errors inside the stream as {error: {message, type | code}}, OpenAI's
// Responses API as {type: "error", code, message} or a `response.failed` event.
function streamFailure(event, data) {
  const failed = data?.type === "response.failed" ? data.response?.error ?? {} : null;
  const nested = data && typeof data.error === "object" && data.error !== null ? data.error : null;
  const inner = failed ?? nested;
  if (event !== "error" && data?.type !== "error" && inner === null) return null;
  return {
    message: (typeof data?.error === "string" && data.error) || inner?.message
      || (typeof data?.message === "string" && data.message) || "The stream failed",
    code: (typeof data?.code === "string" && data.code) || (inner && providerCode(inner))
      || "stream_error",
  };
}

function deltaText(data) {
  if (!data || typeof data !== "object") return "";
  const choice = data.choices?.[0];
  if (choice) return choice.delta?.content ?? choice.text ?? "";
  if (data.type === "content_block_delta" && data.delta?.type === "text_delta") {
    return data.delta.text;
  }
  if (data.type === "response.output_text.delta") return data.delta ?? "";
  return geminiText(data);
}

function geminiText(data) {
  const parts = data.candidates?.[0]?.content?.parts ?? [];
  return parts.filter((part) => !part.thought && typeof part.text === "string")
    .map((part) => part.text).join("");
}

function wholeText(body) {
  const choice = body.choices?.[0];
  if (choice) return choice.message?.content ?? choice.text ?? "";
  if (Array.isArray(body.content)) {
    return body.content.filter((block) => block.type === "text").map((block) => block.text)
      .join("");
  }
  if (typeof body.output_text === "string") return body.output_text;
  if (Array.isArray(body.output)) {
    return body.output.flatMap((item) => item.content ?? [])
      .filter((part) => part.type === "output_text").map((part) => part.text).join("");
  }
  return geminiText(body);
}

// ---- <byok-connect> ---------------------------------------------------------------------------

const PROVIDER_NAMES = {
  openai: "OpenAI",
  anthropic: "Anthropic",
  google: "Google Gemini",
  groq: "Groq",
  openrouter: "OpenRouter",
  mistral: "Mistral",
  elevenlabs: "ElevenLabs",
  huggingface: "Hugging Face",
  deepgram: "Deepgram",
  "openai-compatible": "OpenAI-compatible",
};

const STATUS_TEXT = {
  ok: "Working",
  invalid: "Refused by the provider",
  no_credit: "Out of credit",
  rate_limited: "Rate limited by the provider",
  unverified: "Not checked yet",
};

const STYLE = `
:host { display: block; font: var(--byok-font, inherit); color: var(--byok-text, inherit); }
:host([hidden]) { display: none; }
.box { background: var(--byok-background, transparent); border: 1px solid var(--byok-border, #c8c8d0);
  border-radius: var(--byok-radius, 8px); padding: var(--byok-padding, 1rem); display: grid;
  gap: var(--byok-gap, .75rem); }
h2 { font-size: 1em; margin: 0; }
ul { list-style: none; margin: 0; padding: 0; display: grid; gap: .5rem; }
li { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; }
.name { font-weight: 600; min-width: 8em; }
code { font-family: var(--byok-mono, ui-monospace, monospace); }
.status { border-radius: 999px; padding: .1em .6em; font-size: .85em;
  background: var(--byok-muted-background, #eef0f3); }
.status[data-status="ok"] { background: var(--byok-ok-background, #dff5e3); color: var(--byok-ok, #14632b); }
.status[data-status="invalid"], .status[data-status="no_credit"] {
  background: var(--byok-error-background, #fde4e4); color: var(--byok-error, #9b1c1c); }
form { display: flex; flex-wrap: wrap; gap: .5rem; align-items: end; }
label { display: grid; gap: .25rem; font-size: .9em; }
input, select, button { font: inherit; padding: .4em .6em; border-radius: var(--byok-radius, 8px);
  border: 1px solid var(--byok-border, #c8c8d0); }
input { min-width: 16em; }
button { cursor: pointer; background: var(--byok-button-background, #fff); color: inherit; }
button[type="submit"] { background: var(--byok-accent, #2b59c3); color: var(--byok-accent-text, #fff);
  border-color: var(--byok-accent, #2b59c3); }
button:disabled { opacity: .6; cursor: progress; }
:focus-visible { outline: 2px solid var(--byok-focus, #2b59c3); outline-offset: 2px; }
.message { margin: 0; }
[role="status"] { min-height: 1.3em; }
[role="alert"] { color: var(--byok-error, #9b1c1c); }
.empty { color: var(--byok-muted, #5c6370); }
`;

let sheet = null;

function styleFor(root) {
  // A constructed sheet, not a <style>: pages with a strict Content-Security-Policy allow it.
  if ("adoptedStyleSheets" in root && typeof CSSStyleSheet === "function") {
    sheet ??= new CSSStyleSheet();
    if (sheet.cssRules.length === 0) sheet.replaceSync(STYLE);
    root.adoptedStyleSheets = [sheet];
    return;
  }
  const style = document.createElement("style");
  style.textContent = STYLE;
  root.append(style);
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

const Base = globalThis.HTMLElement ?? class {};

/**
 * <byok-connect>: lets the user add, check, replace and remove their own provider keys.
 * Give it a relay (`element.relay = await connect(...)`); `providers="openai,anthropic"` narrows
 * the choice. Fires `byok-change` ({detail: {keys}}) whenever it has read the user's keys, and
 * `byok-error` ({detail: {error}}).
 */
export class ByokConnect extends Base {
  static observedAttributes = ["providers"];
  #relay = null;
  #parts = null;
  #keys = [];
  #offered = [];
  #saving = false;
  #generation = 0; // of the relay and its keys: a late answer about an older one is dropped

  constructor() {
    super();
    // A relay given before the element was defined is an own property hiding the setter.
    if (Object.hasOwn(this, "relay")) {
      const relay = this.relay;
      delete this.relay;
      this.#relay = relay;
    }
  }

  get relay() {
    return this.#relay;
  }

  set relay(relay) {
    this.#relay = relay ?? null;
    this.#generation += 1;
    this.#keys = [];
    this.#offered = [];
    if (this.#parts) {
      this.#render();
      this.#say("");
    }
    if (this.isConnected) void this.refresh();
  }

  connectedCallback() {
    if (!this.#parts) this.#build();
    if (this.#relay) void this.refresh();
  }

  attributeChangedCallback() {
    if (this.#parts && this.#relay) void this.refresh();
  }

  /** Reads the user's keys (and the relay's providers) again. */
  async refresh() {
    const relay = this.#relay;
    if (!relay || !this.#parts) return;
    const generation = ++this.#generation;
    try {
      const [keys, models] = await Promise.all([relay.keys.list(), this.#providers(relay)]);
      if (generation !== this.#generation) return;
      this.#keys = keys;
      this.#offered = models;
      this.#render();
      this.dispatchEvent(new CustomEvent("byok-change", { detail: { keys },
        bubbles: true, composed: true }));
    } catch (error) {
      if (generation === this.#generation) this.#fail(error);
    }
  }

  async #providers(relay) {
    const wanted = (this.getAttribute("providers") ?? "").split(",").map((p) => p.trim())
      .filter(Boolean);
    if (wanted.length) return wanted;
    // openai-compatible needs a base URL with every request: not a key to onboard here.
    return (await relay.models()).providers.filter((p) => p !== "openai-compatible");
  }

  #build() {
    const root = this.attachShadow({ mode: "open" });
    styleFor(root);
    const id = `byok-${Math.random().toString(36).slice(2, 9)}`;
    const list = el("ul", { part: "list", "aria-labelledby": `${id}-title` });
    const select = el("select", { id: `${id}-provider`, name: "provider", part: "select" });
    const input = el("input", {
      id: `${id}-key`, name: "key", type: "password", part: "input", required: true,
      autocomplete: "off", autocapitalize: "off", spellcheck: "false", "data-1p-ignore": true,
      "data-lpignore": "true", "aria-describedby": `${id}-status ${id}-alert`,
    });
    // Disabled until the providers are read: there is nothing to choose before.
    const submit = el("button", { type: "submit", part: "submit", disabled: true },
      "Check and save");
    const form = el("form", { part: "form", "aria-label": "Add a key", autocomplete: "off" },
      el("label", { for: select.id }, "Provider", select),
      el("label", { for: input.id }, "API key", input),
      submit);
    // Two live regions that stay in the page: news is told politely, failures at once.
    const status = el("p", { id: `${id}-status`, class: "message", part: "message",
      role: "status" });
    const alert = el("p", { id: `${id}-alert`, class: "message", part: "message alert",
      role: "alert" });
    const title = el("h2", { id: `${id}-title`, part: "title" },
      this.getAttribute("heading") ?? "Your AI provider keys");
    root.append(el("section", { class: "box", part: "box", "aria-labelledby": title.id },
      title, list, form, status, alert));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.#save();
    });
    this.#parts = { list, select, input, submit, status, alert };
  }

  #render() {
    const { list, select, submit } = this.#parts;
    const chosen = select.value;
    list.replaceChildren();
    const stored = this.#keys.filter((key) => key.provider);
    if (stored.length === 0) {
      list.append(el("li", { class: "empty" }, "No key stored yet."));
    }
    for (const key of stored) {
      const name = PROVIDER_NAMES[key.provider] ?? key.provider;
      const status = key.status ?? "unverified";
      const replace = el("button", { type: "button", "aria-label": `Replace the ${name} key` },
        "Replace");
      const remove = el("button", { type: "button", "aria-label": `Remove the ${name} key` },
        "Remove");
      replace.addEventListener("click", () => this.#choose(key.provider));
      remove.addEventListener("click", () => void this.#remove(key.provider, name));
      list.append(el("li", { part: "key", "data-provider": key.provider },
        el("span", { class: "name" }, name),
        el("code", {}, key.hint ?? ""),
        el("span", { class: "status", "data-status": status, part: "status" },
          STATUS_TEXT[status] ?? status),
        replace, remove));
    }
    select.replaceChildren(...this.#offered.map((provider) =>
      el("option", { value: provider }, PROVIDER_NAMES[provider] ?? provider)));
    if (this.#offered.includes(chosen)) select.value = chosen;
    submit.disabled = this.#saving || this.#offered.length === 0;
  }

  #choose(provider) {
    this.#parts.select.value = provider;
    this.#parts.input.focus();
    this.#say(`Paste the new ${PROVIDER_NAMES[provider] ?? provider} key.`);
  }

  async #save() {
    const { select, input, submit } = this.#parts;
    const relay = this.#relay;
    const provider = select.value;
    const name = PROVIDER_NAMES[provider] ?? provider;
    if (!relay || !provider) {
      this.#fail(new TypeError(relay ? "Choose a provider first." : "Not connected to a relay."));
      return;
    }
    // The key goes straight from the field to the request: nothing here keeps it.
    const pending = relay.keys.store(provider, input.value.trim());
    input.value = "";
    this.#saving = true;
    submit.disabled = true;
    this.#say(`Checking the key with ${name}…`);
    try {
      const answer = await pending;
      await this.refresh();
      const status = answer.status ?? "unverified";
      const stored = this.#keys.find((key) => key.provider === provider);
      this.#say(`${name} key ${stored?.hint ?? ""} saved: ${STATUS_TEXT[status] ?? status}.`);
    } catch (error) {
      const status = error?.body?.key_status;
      this.#fail(error, status
        ? `${name} did not accept this key (${STATUS_TEXT[status] ?? status}); nothing was saved.`
        : undefined);
      input.focus();
    } finally {
      this.#saving = false;
      submit.disabled = this.#offered.length === 0;
    }
  }

  async #remove(provider, name) {
    try {
      await this.#relay?.keys.remove(provider);
      await this.refresh();
      this.#say(`${name} key removed.`);
      this.#parts.select.focus();
    } catch (error) {
      this.#fail(error);
    }
  }

  #say(text, kind = "info") {
    const { status, alert } = this.#parts;
    status.textContent = kind === "error" ? "" : text;
    alert.textContent = kind === "error" ? text : "";
  }

  #fail(error, text) {
    this.#say(text ?? (error?.message || String(error)), "error");
    this.dispatchEvent(new CustomEvent("byok-error", { detail: { error }, bubbles: true,
      composed: true }));
  }
}

if (globalThis.customElements && !globalThis.customElements.get("byok-connect")) {
  globalThis.customElements.define("byok-connect", ByokConnect);
}
