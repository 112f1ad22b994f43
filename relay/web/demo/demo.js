// The relay's demo page: connect, add a key with <byok-connect>, chat through any stored key.
import { connect, RelayError, restore } from "./sdk/byok-relay.js";

const $ = (id) => document.getElementById(id);
const APP_ID = "demo";
// A model to suggest for each provider a key may be stored for (any model name works).
const SUGGESTED = {
  openai: ["gpt-4o-mini", "gpt-4.1-mini"],
  anthropic: ["claude-3-5-haiku-latest", "claude-sonnet-4-0"],
  google: ["gemini-2.0-flash", "gemini-2.5-flash"],
  groq: ["llama-3.1-8b-instant"],
  mistral: ["mistral-small-latest"],
  openrouter: ["openrouter/openai/gpt-4o-mini"],
};

let relay = null;
let running = null;

function say(id, text, error = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", error);
}

function describe(error) {
  if (!(error instanceof RelayError)) return String(error?.message ?? error);
  const wait = error.retryAfter !== null ? ` Try again in ${error.retryAfter} s.` : "";
  return `${error.message} (${error.status} ${error.code}).${wait}`;
}

async function start(options = {}, restoring = false) {
  try {
    relay = await (restoring ? restore : connect)({ appId: APP_ID, storage: "session", ...options });
    if (!relay) return;
  } catch (error) {
    if (error instanceof RelayError && error.status === 401) {
      $("token-form").hidden = false;
      say("connection", "Registration needs the app's backend on this relay.");
      return;
    }
    say("connection", describe(error), true);
    return;
  }
  if (restoring && !(await stillValid())) return;
  say("connection", "Connected. The relay token is kept in this tab (sessionStorage).");
  $("connect").hidden = true;
  $("token-form").hidden = true;
  $("forget").hidden = false;
  $("erase").hidden = false;
  for (const id of ["keys-section", "chat-section", "usage-section"]) $(id).hidden = false;
  $("keys").relay = relay;
  await showUsage();
}

// A kept token may have expired or been revoked since: ask once before showing it as connected.
async function stillValid() {
  try {
    await relay.stats();
    return true;
  } catch (error) {
    stop(error instanceof RelayError && error.code === "invalid_token"
      ? "Your earlier session has ended: connect again." : describe(error));
    return false;
  }
}

function stop(message) {
  relay = null;
  $("keys").relay = null;
  running?.abort();
  say("connection", message);
  $("connect").hidden = false;
  $("forget").hidden = true;
  $("erase").hidden = true;
  for (const id of ["keys-section", "chat-section", "usage-section"]) $(id).hidden = true;
}

function suggest(keys) {
  const names = keys.flatMap((key) => SUGGESTED[key.provider] ?? []);
  $("model-suggestions").replaceChildren(...names.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    return option;
  }));
  if (!$("model").value && names.length) $("model").value = names[0];
}

async function chat(event) {
  event.preventDefault();
  running = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  $("answer").textContent = "";
  $("answer").setAttribute("aria-busy", "true");
  say("paid-by", "Waiting for the provider…");
  try {
    const answer = await relay.chat(
      { model: $("model").value.trim(), messages: [{ role: "user", content: $("prompt").value }] },
      { signal: running.signal },
    );
    say("paid-by", `Answered by ${answer.provider}, paid by your key ${answer.keyHint}.`);
    for await (const text of answer) $("answer").append(text);
  } catch (error) {
    if (error?.name === "AbortError") say("paid-by", "Stopped: the provider was told at once.");
    else say("paid-by", describe(error), true);
  } finally {
    running = null;
    $("send").disabled = false;
    $("stop").disabled = true;
    $("answer").setAttribute("aria-busy", "false");
    await showUsage();
  }
}

// The relay's estimate at the model's public price; what it could not price, said so.
function costOf(cost) {
  const unpriced = cost.unpriced ? ` (${cost.unpriced} requests of no known price)` : "";
  return `$${cost.usd}${unpriced}`;
}

async function showUsage() {
  if (!relay) return;
  let stats;
  let ledger;
  try {
    let limits;
    [stats, ledger, limits] = await Promise.all([
      relay.stats(), relay.usage({ groupBy: "provider" }), relay.limits.get(),
    ]);
    await showCap(limits);
  } catch (error) {
    say("usage-status", describe(error), true);
    return;
  }
  say("usage-status", "");
  const rows = [
    ["Requests", stats.total],
    ["In the last 7 days", stats.last_7d],
    ["Errors", `${stats.error_count} (${Math.round(stats.error_rate * 100)}%)`],
    ["Tokens in / out", `${stats.tokens.input} / ${stats.tokens.output}`],
    ["Estimated cost", costOf(stats.cost)],
    // The last 30 days, from the ledger: every token kind the provider reported.
    ...ledger.rows.map((row) => [`With ${row.key} (30 days)`,
      `${row.requests} requests; tokens ${Object.entries(row.tokens)
        .filter(([, n]) => n > 0).map(([kind, n]) => `${kind.replace("_", " ")} ${n}`)
        .join(", ") || "none reported"}; ${costOf(row.cost)}`]),
  ];
  $("usage").tBodies[0].replaceChildren(...rows.map(([label, value]) => {
    const row = document.createElement("tr");
    const th = document.createElement("th");
    const td = document.createElement("td");
    th.scope = "row";
    th.textContent = label;
    td.textContent = String(value);
    row.append(th, td);
    return row;
  }));
}

$("connect").addEventListener("click", () => void start());
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  void start({ token });
});
$("forget").addEventListener("click", async () => {
  await relay?.forget();
  stop("Forgotten in this browser: the account and its keys stay on the relay.");
});
$("erase").addEventListener("click", async () => {
  try {
    await relay?.erase();
    stop("Account erased: its keys and records are gone from the relay.");
  } catch (error) {
    say("connection", describe(error), true);
  }
});
// The user's own daily cap on what their keys spend through this relay.
async function showCap(answer) {
  const cap = answer.caps.find((c) => c.period === "day" && c.cost_usd && !c.app && !c.provider
    && !c.model);
  say("cap-status", cap
    ? `Daily cap $${cap.cost_usd}: $${cap.spent.cost_usd} spent today.`
    : "No spending cap.");
}

async function setCap(event) {
  event.preventDefault();
  const value = $("cap").value.trim();
  try {
    await showCap(value
      ? await relay.limits.set([{ period: "day", costUsd: value }])
      : await relay.limits.clear());
  } catch (error) {
    say("cap-status", describe(error), true);
  }
}

$("cap-form").addEventListener("submit", (event) => void setCap(event));
$("clear-cap").addEventListener("click", async () => {
  $("cap").value = "";
  try {
    await showCap(await relay.limits.clear());
  } catch (error) {
    say("cap-status", describe(error), true);
  }
});
$("keys").addEventListener("byok-change", (event) => suggest(event.detail.keys));
$("chat-form").addEventListener("submit", (event) => void chat(event));
$("stop").addEventListener("click", () => running?.abort());

// A token kept in this tab from before reconnects at once; a new visitor clicks Connect.
void start({}, true);
