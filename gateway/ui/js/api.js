// Calls to this gateway, and its errors put in words a person understands.
// Keys go in the Authorization header only: never in a URL, never stored beyond the tab.

export class ApiError extends Error {
  constructor({ status = 0, type = "", code = "", message = "", param = null, retryAfter = null }) {
    super(message || `HTTP ${status}`);
    Object.assign(this, { status, type, code, param, retryAfter });
  }
}

// The OpenAI envelope ({"error": {...}}) of a refused request, read from its response.
async function errorOf(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // not JSON: a proxy's page, say
  }
  const retry = Number.parseFloat(response.headers.get("retry-after"));
  return new ApiError({
    status: response.status,
    type: error.type,
    code: error.code,
    message: error.message || response.statusText,
    param: error.param,
    retryAfter: Number.isFinite(retry) ? retry : null,
  });
}

// The answer to a request with `key`, once it is known to be a success (else the
// refusal, as an ApiError).
export async function request(path, { key, method = "GET", body, signal } = {}) {
  const headers = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

// The JSON of a successful answer; null for a 204.
export async function call(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

function seconds(n) {
  return n === 1 ? "1 second" : `${n} seconds`;
}

// {summary, detail}: what happened and what to do, then the gateway's own words.
export function explain(error, who = "key") {
  if (error.name === "AbortError") return { summary: "Stopped." };
  if (!(error instanceof ApiError)) {
    return {
      summary: "The gateway could not be reached (or the connection broke). Is it running?",
      detail: String(error.message || error),
    };
  }
  const detail = error.message;
  const wait = error.retryAfter !== null ? ` Try again in ${seconds(error.retryAfter)}.` : "";
  const words = {
    invalid_api_key: `The ${who} was refused: it is missing, wrong, revoked or expired.`,
    model_not_allowed: "This key may not use that model.",
    model_not_found: "There is no such model (or this key may not see it).",
    rate_limit_exceeded: `This key has reached its rate limit.${wait}`,
    max_parallel_exceeded: `This key has too many requests in flight.${wait || " Try again when one ends."}`,
    insufficient_quota: "This key's budget is used up (or its request is larger than its whole token limit).",
    upstream_rate_limited: `The model's provider is rate limiting the gateway.${wait}`,
    upstream_auth_failed: "The model's provider refused the gateway's credentials: an operator must fix the provider key.",
    upstream_error: "The model's provider failed to answer.",
    upstream_timeout: "The model's provider did not answer in time.",
    store_unavailable: "The gateway cannot reach its quota store right now. Try again shortly.",
    request_too_large: "The request is too large for this gateway.",
    key_not_found: "There is no such key (it may have been deleted elsewhere).",
    key_name_taken: "Another key already has that name.",
    config_key: "This key comes from the config file: change it there.",
  }[error.code];
  if (words) return { summary: words, detail };
  if (error.status === 400) return { summary: "The request was refused.", detail };
  if (error.status === 401) return { summary: `The ${who} was refused.`, detail };
  if (error.status === 429) return { summary: `Too many requests.${wait}`, detail };
  if (error.status >= 500) return { summary: `The gateway answered with an error (${error.status}).`, detail };
  return { summary: `The request failed (${error.status || error.code || "error"}).`, detail };
}
