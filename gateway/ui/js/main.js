// The page: three views behind the URL's fragment (#playground, #compare, #console),
// the app key shared by the first two, and Esc to stop whatever is streaming.

import { call, explain } from "./api.js";
import { pricesOf } from "./chat.js";
import { compare } from "./compare.js";
import { opsConsole } from "./console.js";
import { $, tabStore } from "./dom.js";
import { playground } from "./playground.js";

const APP_KEY = "gateway.app_key";

function session() {
  const listeners = [];
  let models = [];
  let prices = new Map();
  return {
    appKey: () => tabStore.get(APP_KEY),
    prices: () => prices,
    onModels(listener) {
      listeners.push(listener);
      listener(models);
    },
    async load(key) {
      tabStore.set(APP_KEY, key);
      const note = $("#app-key-note");
      if (!key) {
        models = [];
      } else {
        try {
          models = (await call("../v1/models", { key })).data;
          note.textContent = `${models.length} model${models.length === 1 ? "" : "s"} for this key. Kept in this tab only.`;
        } catch (error) {
          models = [];
          const { summary } = explain(error);
          note.textContent = summary;
        }
      }
      prices = pricesOf(models);
      for (const listener of listeners) listener(models);
    },
  };
}

function start() {
  const shared = session();
  const views = {
    playground: playground(shared),
    compare: compare(shared),
    console: opsConsole(),
  };
  const keyInput = $("#app-key");

  function route() {
    const name = location.hash.slice(1) in views ? location.hash.slice(1) : "playground";
    for (const [other, view] of Object.entries(views)) {
      $(`#view-${other}`).hidden = other !== name;
      const tab = $(`#tab-${other}`);
      if (other === name) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
      if (other !== name) view.hidden?.();
    }
    $("#app-key-row").hidden = name === "console";
    views[name].shown?.();
  }

  const useKey = () => shared.load(keyInput.value.trim());
  $("#app-key-use").addEventListener("click", useKey);
  keyInput.addEventListener("keydown", (event) => event.key === "Enter" && useKey());
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") for (const view of Object.values(views)) view.stop();
  });
  window.addEventListener("hashchange", route);

  keyInput.value = shared.appKey();
  if (keyInput.value) shared.load(keyInput.value);
  route();
}

start();
