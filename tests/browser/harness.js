// What the browser tests run in a page of another origin than the relay's: an app using the
// relay's client (imported from the relay, as an app would) and the official SDKs through it.
const relayUrl = new URL(location.href).searchParams.get("relay");
const client = await import(`${relayUrl}/sdk/byok-relay.js`);
const sdks = () => import("./sdks.bundle.js");
const messages = [{ role: "user", content: "Say hello" }];
// A storage that keeps nothing: every call registers a user of its own.
const forgetful = { get: () => null, set() {}, delete() {} };

async function newUser(keys = {}) {
  const relay = await client.connect({ url: relayUrl, appId: "browser-tests", storage: forgetful });
  for (const [provider, key] of Object.entries(keys)) {
    await relay.keys.store(provider, key, { verify: false });
  }
  return relay;
}

// Each delta with the time it arrived, so that a test can tell a stream from a buffered body.
async function timed(deltas) {
  const seen = [];
  for await (const text of deltas) seen.push([performance.now(), text]);
  return seen;
}

async function* openaiDeltas(stream) {
  for await (const chunk of stream) {
    const text = chunk.choices[0]?.delta?.content;
    if (text) yield text;
  }
}

async function* anthropicDeltas(stream) {
  for await (const event of stream) {
    if (event.type === "content_block_delta" && event.delta.type === "text_delta") {
      yield event.delta.text;
    }
  }
}

function failure(error) {
  return {
    name: error?.name, message: error?.message, status: error?.status, code: error?.code,
    retryAfter: error?.retryAfter, fromProvider: error?.fromProvider,
    isRelayError: error instanceof client.RelayError,
  };
}

window.harness = {
  relayUrl,

  async mountConnect(attributes = {}) {
    const relay = await newUser();
    const element = document.createElement("byok-connect");
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    element.relay = relay;
    document.getElementById("app").append(element);
    window.connected = { relay, element };
    return relay.url;
  },

  async openaiPackage(key) {
    const relay = await newUser({ openai: key });
    const { OpenAI } = await sdks();
    // Through the client's fetch (the SDK's own key is a placeholder the relay never sees)...
    const viaFetch = new OpenAI({ baseURL: `${relay.url}/relay/openai/v1`, apiKey: "placeholder",
      fetch: relay.fetch, dangerouslyAllowBrowser: true });
    const stream = await viaFetch.chat.completions.create(
      { model: "gpt-4o-mini", stream: true, messages },
      { query: { interval_ms: "150", chunks: "5" } });
    const streamed = await timed(openaiDeltas(stream));
    // ...and with the relay token as its API key, nothing else.
    const asKey = new OpenAI({ baseURL: `${relay.url}/relay/openai/v1`, apiKey: relay.token,
      dangerouslyAllowBrowser: true });
    const plain = await asKey.chat.completions.create({ model: "gpt-4o-mini", messages });
    const models = await asKey.models.list();
    return { streamed, plain: plain.choices[0].message.content, models: models.data.length };
  },

  async anthropicPackage(key) {
    const relay = await newUser({ anthropic: key });
    const { Anthropic } = await sdks();
    const anthropic = new Anthropic({ baseURL: `${relay.url}/relay/anthropic`, apiKey: relay.token,
      dangerouslyAllowBrowser: true });
    const stream = await anthropic.messages.create(
      { model: "claude-3-5-haiku-latest", max_tokens: 64, stream: true, messages },
      { query: { interval_ms: "150", chunks: "5" } });
    return { streamed: await timed(anthropicDeltas(stream)) };
  },

  async vercelAi(key) {
    const relay = await newUser({ openai: key });
    const { createOpenAICompatible, streamText } = await sdks();
    const provider = createOpenAICompatible({ name: "relay", baseURL: `${relay.url}/relay/v1`,
      fetch: relay.fetch });
    const result = streamText({ model: provider("gpt-4o-mini"), prompt: "Say hello" });
    return { streamed: await timed(result.textStream) };
  },

  async helpers(keys) {
    const relay = await newUser(keys);
    const slow = "interval_ms=150&chunks=5";
    const requests = {
      openai: () => relay.request(`/relay/openai/v1/chat/completions?${slow}`,
        { model: "gpt-4o-mini", stream: true, messages }),
      anthropic: () => relay.request(`/relay/anthropic/v1/messages?${slow}`,
        { model: "claude-3-5-haiku-latest", max_tokens: 64, stream: true, messages }),
      google: () => relay.request(
        `/relay/google/v1beta/models/gemini-2.0-flash:streamGenerateContent?${slow}`,
        { contents: [{ role: "user", parts: [{ text: "Say hello" }] }] }),
      routed: () => relay.chat({ model: "claude-3-5-haiku-latest", messages }),
    };
    const out = {};
    for (const [name, request] of Object.entries(requests)) {
      const answer = await request();
      out[name] = { provider: answer.provider, keyHint: answer.keyHint,
        streamed: await timed(answer) };
    }
    return out;
  },

  async cancel(key, how) {
    const relay = await newUser({ openai: key });
    const controller = new AbortController();
    const answer = await relay.chat({ model: "openai/mock-endless", messages },
      { signal: controller.signal });
    let deltas = 0;
    try {
      for await (const text of answer) {
        if (text && ++deltas === 3) {
          if (how === "abort") controller.abort();
          else break;
        }
      }
    } catch (error) {
      return { deltas, error: failure(error) };
    }
    return { deltas, error: null };
  },

  // A narrow token for this page, one for another page, and what each may do from here.
  async narrowTokens(key) {
    const relay = await newUser({ openai: key });
    const here = await relay.tokens.mint({
      name: "this page", providers: ["openai"], origins: [location.origin], expiresIn: 600,
    });
    const elsewhere = await relay.tokens.mint({ origins: ["https://elsewhere.example"] });
    const attempt = async (token, body = { model: "gpt-4o-mini", messages }) => {
      try {
        return { text: await (await new client.Relay(relay.url, token).chat(body)).text() };
      } catch (error) {
        return { error: { ...failure(error), limit: error.body?.limit } };
      }
    };
    const out = {
      listed: (await relay.tokens.list()).map((t) => [t.name, t.origins]),
      here: await attempt(here.token),
      otherProvider: await attempt(here.token, { model: "claude-3-5-haiku-latest", messages }),
      elsewhere: await attempt(elsewhere.token),
    };
    out.revoked = (await relay.tokens.revoke(here.id)).revoked;
    out.afterRevoke = await attempt(here.token);
    out.own = await attempt(relay.token);
    return out;
  },

  async tooMany(key, model, attempts) {
    const relay = await newUser({ openai: key });
    for (let i = 0; i < attempts; i++) {
      try {
        await (await relay.chat({ model, messages })).text();
      } catch (error) {
        return { attempt: i + 1, error: failure(error) };
      }
    }
    return { attempt: attempts, error: null };
  },
};
