// Compare: one prompt to 2 to 4 models through the fan-out endpoint, answers side by
// side. Choice i of the stream is models[i]; a model that fails ends its own choice
// with an error while the others go on (docs/wire-formats.md, "Fan-out").

import { ApiError, explain } from "./api.js";
import { Meter, bindControls, formRequest, streamChat, summary } from "./chat.js";
import { $, h, showError } from "./dom.js";

const MIN_MODELS = 2;
const MAX_MODELS = 4;

export function compare(session) {
  const list = $("#cmp-models");
  const user = $("#cmp-user");
  const panesBox = $("#cmp-panes");
  const errorBox = $("#cmp-error");
  const send = $("#cmp-send");
  const stop = $("#cmp-stop");
  let running = null;

  session.onModels((models) => {
    const chosen = new Set(checked());
    list.replaceChildren(
      ...(models.length
        ? models.map((m) =>
            h("label", {}, h("input", { type: "checkbox", value: m.id, checked: chosen.has(m.id) }), m.id),
          )
        : [h("span", { class: "note", text: "No models for this key" })]),
    );
  });

  function checked() {
    return [...list.querySelectorAll("input:checked")].map((box) => box.value);
  }

  function pane(model, index) {
    const output = h("div", { class: "output", tabindex: "0" });
    const stats = h("div", { class: "stats", text: "Waiting for the first token…" });
    const error = h("div", { class: "error", role: "alert", hidden: true });
    const el = h("article", { class: "pane" }, h("h3", { text: model }), error, output, stats);
    return { index, el, output, stats, error, meter: new Meter(), finish: "", done: false };
  }

  async function run() {
    if (running) return;
    const body = formRequest(session, errorBox, {
      system: $("#cmp-system").value,
      user: user.value,
      extra: $("#cmp-extra").value,
    });
    if (!body) return;
    const models = checked();
    if (models.length < MIN_MODELS || models.length > MAX_MODELS) {
      return showError(errorBox, `Choose ${MIN_MODELS} to ${MAX_MODELS} models (${models.length} chosen).`);
    }
    body.models = models;
    const panes = models.map(pane);
    panesBox.replaceChildren(...panes.map((p) => p.el));
    let servedBy = [];
    running = new AbortController();
    busy(true);
    const show = (p) => (p.stats.textContent = summary(p.meter, servedBy[p.index] || "", session.prices(), p.finish));
    try {
      await streamChat("../v1/fanout/chat/completions", {
        key: session.appKey(),
        body,
        signal: running.signal,
        onOpen: (response) => (servedBy = (response.headers.get("x-gateway-served-by") || "").split(",")),
        onChunk(chunk) {
          for (const choice of chunk.choices) {
            const p = panes[choice.index];
            if (!p) continue;
            const text = choice.delta?.content;
            if (text) {
              p.meter.token();
              p.output.append(text); // a text node: shown as written
            }
            if (choice.usage) p.meter.usage = choice.usage;
            if (choice.error) {
              showError(p.error, explain(new ApiError(choice.error)));
              p.output.hidden = !p.output.textContent; // nothing came: no empty box
              p.done = true;
              p.stats.textContent = "Failed.";
            } else if (choice.finish_reason) {
              p.finish = choice.finish_reason;
              p.done = true;
              show(p);
            } else if (text) {
              p.stats.textContent = `Streaming… ${p.meter.chunks} chunks`;
            }
          }
        },
      });
      for (const p of panes) if (!p.done) show(p);
    } catch (error) {
      const stopped = error.name === "AbortError";
      for (const p of panes) {
        if (p.done) continue;
        p.stats.textContent = stopped ? `Stopped after ${p.meter.chunks} chunks.` : "";
      }
      if (!stopped) showError(errorBox, explain(error));
    } finally {
      running = null;
      busy(false);
    }
  }

  const abort = () => running?.abort();
  const busy = bindControls({ send, stop, input: user, run, abort });
  return { stop: abort };
}
