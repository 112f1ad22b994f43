// Type declarations of byok-relay.js, the byok-relay browser client.

export declare const VERSION: string;

/** Where the relay token is kept between visits (see README.md for the trade-offs). */
export type TokenStorage =
  | "memory"
  | "session"
  | "local"
  | {
      get(name: string): string | null | Promise<string | null>;
      set(name: string, token: string): void | Promise<void>;
      delete(name: string): void | Promise<void>;
    };

export interface ConnectOptions {
  /** The relay's URL; defaults to the relay that served this module. */
  url?: string;
  /** The app's id, sent when registering a new user (`POST /users`). */
  appId?: string;
  /** Default "local". */
  storage?: TokenStorage;
  /** A token the app already holds (from its backend); it is kept in `storage`. */
  token?: string;
  /** Registers a user another way (a relay with APP_SECRET: the app's backend does it). */
  register?: () => Promise<string>;
  /** The fetch to send requests with; defaults to the page's. */
  fetch?: typeof fetch;
}

export declare function connect(options?: ConnectOptions): Promise<Relay>;

/** The relay of a token kept in `storage` from before, or null; nothing is sent. */
export declare function restore(
  options?: Pick<ConnectOptions, "url" | "appId" | "storage" | "fetch">,
): Promise<Relay | null>;

export type KeyStatus = "unverified" | "ok" | "invalid" | "no_credit";

export interface StoredKey {
  provider: string;
  /** The key's start and end, e.g. "sk-...a1b2"; never more of it. */
  hint: string;
  status: KeyStatus;
  created_at: number;
  updated_at: number;
  verified_at: number | null;
  last_used_at: number | null;
}

export interface KeySaved {
  ok: true;
  provider: string;
  /** Present when the key was checked with the provider. */
  status?: "ok" | "unverified";
  /** Present when the key's shape is unusual for the provider: it may be another's key. */
  hint?: string;
}

export interface KeyRotated extends KeySaved {
  rotated: boolean;
}

export interface Keys {
  list(): Promise<StoredKey[]>;
  /** Checked with the provider first unless `verify` is false; a refused key is not stored. */
  store(provider: string, key: string, options?: { verify?: boolean }): Promise<KeySaved>;
  rotate(provider: string, key: string): Promise<KeyRotated>;
  remove(provider: string): Promise<{ ok: true }>;
}

export interface NarrowToken {
  id: string;
  name: string;
  /** The narrow token it was minted with; null: the account's own. */
  parent_id: string | null;
  /** Each limit; null: not limited. */
  providers: string[] | null;
  models: string[] | null;
  origins: string[] | null;
  expires_at: number | null;
  created_at: number;
  last_used_at: number | null;
  /** Its budgets and its minters', each naming the token it limits; null: none. */
  budget: (Omit<CapState, "spent" | "resets_at"> & { token: string })[] | null;
}

export interface MintedToken extends NarrowToken {
  /** Shown once: keep it, or hand it to the page it is for. */
  token: string;
}

export interface MintOptions {
  name?: string;
  providers?: string[];
  /** Patterns: `*` any run, case-insensitive, `provider/` names allowed. */
  models?: string[];
  /** `scheme://host[:port]`: the pages the token may be used from. */
  origins?: string[];
  expiresIn?: number;
  expiresAt?: Date | number;
  /** Caps on what is spent with this token (and those minted from it). */
  budget?: Cap[];
}

export interface Tokens {
  /** A limit left out is the minting token's own; one set must be inside it (403 otherwise). */
  mint(options?: MintOptions): Promise<MintedToken>;
  list(): Promise<NarrowToken[]>;
  /** Revokes the token and every token minted from it. */
  revoke(id: string): Promise<{ ok: true; revoked: string[] }>;
}

export interface Cap {
  period: "day" | "month";
  requests?: number;
  tokens?: number;
  /** Dollars, estimated at the model's public price. */
  costUsd?: string | number;
  app?: string;
  provider?: string;
  model?: string;
}

export interface CapState {
  period: "day" | "month";
  requests?: number;
  tokens?: number;
  cost_usd?: string;
  app?: string;
  provider?: string;
  model?: string;
  /** What it has counted in this period, for each of its limits. */
  spent: { requests?: number; tokens?: number; cost_usd?: string };
  /** Epoch ms at which the period ends. */
  resets_at: number;
}

export interface Limits {
  get(): Promise<{ caps: CapState[]; allow_unpriced: boolean }>;
  /** Replaces every cap. A request that could pass one is refused: RelayError 402. */
  set(caps: Cap[], options?: { allowUnpriced?: boolean }): Promise<{ caps: CapState[]; allow_unpriced: boolean }>;
  clear(): Promise<{ caps: CapState[]; allow_unpriced: boolean }>;
}

export interface Stats {
  total: number;
  last_7d: number;
  last_30d: number;
  error_count: number;
  error_rate: number;
  providers: Record<string, { total: number; errors: number }>;
  top_models: { model: string; total: number }[];
  last_request: number | null;
  /** By kind, each as the provider reported it (docs/api.md, "Usage records"). */
  tokens: TokenCounts;
  cost: Cost;
  /** Requests by how they ended: completed, client_cancelled, upstream_failed, ... */
  outcomes: Record<string, number>;
}

/** What requests cost, estimated at the model's public price (docs/api.md, "Cost"). */
export interface Cost {
  /** Millionths of a US dollar: the exact sum. */
  micro_usd: number;
  /** The same in dollars, six decimals ("0.012500"). */
  usd: string;
  /** Requests whose tokens had no price (not in the sum). */
  unpriced: number;
}

export interface TokenCounts {
  input: number;
  output: number;
  cache_read: number;
  cache_write: number;
  reasoning: number;
}

export interface LedgerEntry {
  /** The day (YYYY-MM-DD, UTC), app, provider or model; null: no known model. */
  key: string | null;
  requests: number;
  errors: number;
  tokens: TokenCounts;
  cost: Cost;
  outcomes: Record<string, number>;
}

export interface Ledger {
  from: number;
  to: number;
  group_by: "day" | "app" | "provider" | "model" | "token";
  rows: LedgerEntry[];
  total: LedgerEntry;
}

export interface UsageOptions {
  from?: Date | number | string;
  to?: Date | number | string;
  groupBy?: "day" | "app" | "provider" | "model" | "token";
}

export interface Models {
  providers: string[];
  providerPrefixes: string[];
  patterns: { pattern: string; flags: string; provider: string }[];
  restricted: boolean;
  allowed_models?: string[];
  message?: string;
}

export interface RequestOptions {
  signal?: AbortSignal;
  headers?: Record<string, string>;
}

export declare class Relay {
  constructor(
    url: string,
    token: string,
    options?: { forget?: () => void | Promise<void>; fetch?: typeof fetch },
  );
  readonly url: string;
  /** The relay token: a credential for this user's keys, like a session cookie. */
  readonly token: string;
  readonly keys: Keys;
  readonly tokens: Tokens;
  readonly limits: Limits;
  /**
   * `fetch` with the token added to requests for this relay, and to no other URL; those never
   * follow a redirect. Responses come back as they are (an error status does not throw).
   */
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  /** POST a JSON body to a relay path; an error status throws a RelayError. */
  request(path: string, body: unknown, options?: RequestOptions): Promise<Answer>;
  /** A streamed OpenAI-format chat with any model of any key the user holds. */
  chat(body: { model: string; messages: unknown[]; [field: string]: unknown },
    options?: RequestOptions): Promise<Answer>;
  models(): Promise<Models>;
  stats(): Promise<Stats>;
  /** The user's own ledger (`GET /usage`); by default by day over the last 30 days. */
  usage(options?: UsageOptions): Promise<Ledger>;
  revoke(): Promise<{ ok: true; message: string }>;
  erase(): Promise<{ ok: true; message: string }>;
  forget(): Promise<void>;
}

export interface AnswerInfo {
  /** The provider that answered (`x-relay-provider`). */
  provider: string | null;
  /** Which of the user's keys paid (`x-relay-key-hint`). */
  keyHint: string | null;
  requestId: string | null;
}

export declare function answerInfo(response: Response): AnswerInfo;

/** A relayed answer; iterate it (once) for the text as it arrives. */
export declare class Answer implements AsyncIterable<string>, AnswerInfo {
  constructor(response: Response, signal?: AbortSignal);
  readonly response: Response;
  readonly signal: AbortSignal | undefined;
  readonly provider: string | null;
  readonly keyHint: string | null;
  readonly requestId: string | null;
  [Symbol.asyncIterator](): AsyncIterator<string>;
  text(): Promise<string>;
}

export interface ServerSentEvent {
  event: string;
  data: string;
  id: string | null;
}

export declare function events(response: Response, options?: { signal?: AbortSignal }):
  AsyncGenerator<ServerSentEvent, void, undefined>;

/** Text deltas of OpenAI, Anthropic and Gemini streams (or the text of a JSON answer). */
export declare function textDeltas(source: Response | Answer, options?: { signal?: AbortSignal }):
  AsyncGenerator<string, void, undefined>;

export declare class RelayError extends Error {
  readonly name: "RelayError";
  /** The HTTP status (0: none). */
  readonly status: number;
  /** The relay's stable code (e.g. "rate_limited", "invalid_token"), or the provider's. */
  readonly code: string;
  /** Seconds to wait before retrying, from `Retry-After`. */
  readonly retryAfter: number | null;
  /** The error's JSON body. */
  readonly body: unknown;
  /** The provider that answered the error, when it was the provider's. */
  readonly provider: string | null;
  readonly requestId: string | null;
  readonly fromProvider: boolean;
  static from(response: Response): Promise<RelayError>;
}

export interface ByokChangeEvent extends CustomEvent<{ keys: StoredKey[] }> {}
export interface ByokErrorEvent extends CustomEvent<{ error: unknown }> {}

/** `<byok-connect>`: the user adds, checks, replaces and removes their own provider keys. */
export declare class ByokConnect extends HTMLElement {
  /** Setting it (null included) forgets the keys shown for the previous relay. */
  relay: Relay | null;
  refresh(): Promise<void>;
}

declare global {
  interface HTMLElementTagNameMap {
    "byok-connect": ByokConnect;
  }
  interface HTMLElementEventMap {
    "byok-change": ByokChangeEvent;
    "byok-error": ByokErrorEvent;
  }
}
