// One streamed chat request (plain or fan-out), its chunks handed on as they arrive,
// and the numbers a person compares models by: time to first token, tokens per
// second, token counts and cost.

import { ApiError, request } from "./api.js";
import { fmt, showError } from "./dom.js";
import { events } from "./sse.js";

// Streams `body` to `path`; calls onOpen(response) once the headers are in and
// onChunk(chunk) for each chunk. Resolves at [DONE]; rejects with an ApiError for a
// refusal or an error event, or with an AbortError when `signal` aborts.
export async function streamChat(path, { key, body, signal, onOpen, onChunk }) {
  const response = await request(path, {
    key,
    method: "POST",
    body: { ...body, stream: true, stream_options: { include_usage: true } },
    signal,
  });
  onOpen?.(response);
  for await (const { data } of events(response.body)) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError({ ...chunk.error, status: response.status });
    onChunk(chunk);
  }
  throw new ApiError({ message: "The stream ended before [DONE].", code: "upstream_error" });
}

// The timing of one answer: started when sent, first token, last token.
export class Meter {
  constructor() {
    this.started = performance.now();
    this.first = null;
    this.last = null;
    this.chunks = 0; // chunks that carried text
    this.usage = null;
  }

  token() {
    const now = performance.now();
    if (this.first === null) this.first = now;
    this.last = now;
    this.chunks += 1;
  }

  get ttft() {
    return this.first === null ? null : this.first - this.started;
  }

  // Output tokens over the time they took to arrive after the first: the decode rate.
  get tokensPerSecond() {
    const out = this.usage?.completion_tokens ?? this.chunks;
    if (this.first === null || this.last === this.first || out < 2) return NaN;
    return (out - 1) / ((this.last - this.first) / 1000);
  }
}

// Every priced deployment of the models listed, by its x-gateway-served-by name.
export function pricesOf(models) {
  const prices = new Map();
  for (const model of models) {
    for (const [name, price] of Object.entries(model.pricing || {})) prices.set(name, price);
  }
  return prices;
}

// USD for `usage` at the price of the deployment that served it, as the gateway prices
// it (cache reads at their own price); null when that deployment has no price listed.
export function costOf(prices, servedBy, usage) {
  const price = usage && prices.get(servedBy);
  if (!price) return null;
  const cached = usage.prompt_tokens_details?.cached_tokens || 0;
  const readPrice = price.cache_read ?? price.input;
  const fresh = Math.max(0, usage.prompt_tokens - cached);
  return (price.input * fresh + readPrice * cached + price.output * usage.completion_tokens) / 1e6;
}

// Send with the button or Enter in the message (Shift+Enter: a new line); Stop aborts.
// Returns busy(on), which enables the one and disables the other.
export function bindControls({ send, stop, input, run, abort }) {
  send.addEventListener("click", run);
  stop.addEventListener("click", abort);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      run();
    }
  });
  return (on) => {
    send.disabled = on;
    stop.disabled = !on;
  };
}

// The body a view's form asks for, or null once what is wrong with it is shown in
// `errorBox`: no app key, no message, extra fields that are not a JSON object.
export function formRequest(session, errorBox, fields) {
  showError(errorBox, null);
  if (!session.appKey()) {
    showError(errorBox, "Enter an app key first (the field at the top).");
    return null;
  }
  try {
    return requestBody(fields);
  } catch (error) {
    showError(errorBox, error.message);
    return null;
  }
}

function requestBody({ system, user, maxTokens = "", extra }) {
  if (!user.trim()) throw new Error("Write a message to send.");
  let fields = {};
  if (extra.trim()) {
    try {
      fields = JSON.parse(extra);
    } catch (error) {
      throw new Error(`The extra request fields are not valid JSON: ${error.message}`);
    }
    if (fields === null || typeof fields !== "object" || Array.isArray(fields)) {
      throw new Error("The extra request fields must be a JSON object, such as {\"temperature\": 0.2}.");
    }
  }
  const messages = [];
  if (system.trim()) messages.push({ role: "system", content: system });
  messages.push({ role: "user", content: user });
  const body = { ...fields, messages };
  if (maxTokens) body.max_tokens = Number(maxTokens);
  return body;
}

// One answer's numbers, as the playground and each Compare pane show them.
export function summary(meter, servedBy, prices, finish) {
  const parts = [];
  if (meter.ttft !== null) parts.push(`first token ${fmt.ms(meter.ttft)}`);
  const rate = meter.tokensPerSecond;
  if (Number.isFinite(rate)) parts.push(fmt.rate(rate));
  if (meter.usage) {
    parts.push(`${fmt.int(meter.usage.prompt_tokens)} in / ${fmt.int(meter.usage.completion_tokens)} out tokens`);
    const cost = costOf(prices, servedBy, meter.usage);
    parts.push(cost === null ? "cost unknown (no price configured)" : `cost ${fmt.usd(cost)}`);
  }
  if (servedBy) parts.push(`served by ${servedBy}`);
  if (finish) parts.push(`finish: ${finish}`);
  return parts.join(" · ");
}
