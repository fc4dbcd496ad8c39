// The playground: one model, a system and a user message, the answer as it streams.

import { explain } from "./api.js";
import { Meter, bindControls, formRequest, streamChat, summary } from "./chat.js";
import { $, fmt, h, showError } from "./dom.js";

export function playground(session) {
  const model = $("#pg-model");
  const user = $("#pg-user");
  const output = $("#pg-output");
  const stats = $("#pg-stats");
  const errorBox = $("#pg-error");
  const send = $("#pg-send");
  const stop = $("#pg-stop");
  let running = null; // the AbortController of the stream in flight

  session.onModels((models) => {
    const chosen = model.value;
    model.replaceChildren(
      ...(models.length
        ? models.map((m) => h("option", { value: m.id, text: m.id }))
        : [h("option", { value: "", text: "No models for this key" })]),
    );
    if (models.some((m) => m.id === chosen)) model.value = chosen;
  });

  async function run() {
    if (running) return;
    const body = formRequest(session, errorBox, {
      system: $("#pg-system").value,
      user: user.value,
      maxTokens: $("#pg-max-tokens").value,
      extra: $("#pg-extra").value,
    });
    if (!body) return;
    if (!model.value) return showError(errorBox, "Choose a model.");
    body.model = model.value;
    output.replaceChildren();
    stats.textContent = "Waiting for the first token…";
    const meter = new Meter();
    let servedBy = "";
    let finish = "";
    running = new AbortController();
    busy(true);
    try {
      await streamChat("../v1/chat/completions", {
        key: session.appKey(),
        body,
        signal: running.signal,
        onOpen: (response) => (servedBy = response.headers.get("x-gateway-served-by") || ""),
        onChunk(chunk) {
          if (chunk.usage) meter.usage = chunk.usage;
          for (const choice of chunk.choices) {
            const text = choice.delta?.content;
            if (text) {
              meter.token();
              output.append(text); // a text node: shown as written, never parsed
              stats.textContent = `Streaming… ${fmt.int(meter.chunks)} chunks`;
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        },
      });
      stats.textContent = summary(meter, servedBy, session.prices(), finish);
    } catch (error) {
      if (error.name === "AbortError") {
        stats.textContent = `Stopped after ${fmt.int(meter.chunks)} chunks. ` + summary(meter, servedBy, session.prices(), "");
      } else {
        stats.textContent = meter.chunks ? summary(meter, servedBy, session.prices(), "") : "";
        showError(errorBox, explain(error));
      }
    } finally {
      running = null;
      busy(false);
    }
  }

  const abort = () => running?.abort();
  const busy = bindControls({ send, stop, input: user, run, abort });
  return { stop: abort };
}
