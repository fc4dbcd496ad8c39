// Elements built from text only: nothing in these pages parses a string as HTML, so
// whatever a model or a user wrote is shown as written (tests/api/test_ui.py checks).

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // a string becomes a text node
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// Sessions stay in this tab: sessionStorage is per tab and gone when it closes.
export const tabStore = {
  get: (name) => sessionStorage.getItem(name) || "",
  set: (name, value) => (value ? sessionStorage.setItem(name, value) : sessionStorage.removeItem(name)),
};

export function showError(el, error) {
  if (!error) {
    el.hidden = true;
    el.replaceChildren();
    return;
  }
  const { summary, detail } = typeof error === "string" ? { summary: error } : error;
  el.replaceChildren(summary, detail ? h("span", { class: "detail", text: detail }) : "");
  el.hidden = false;
}

export const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US")),
  ms: (n) => (n < 1000 ? `${Math.round(n)} ms` : `${(n / 1000).toFixed(2)} s`),
  usd(n) {
    if (n === null || n === undefined) return "–";
    if (n === 0) return "$0";
    if (n < 0.01) return `$${n.toPrecision(3)}`; // a request's cost: its leading digits
    return `$${n.toFixed(n < 1 ? 4 : 2)}`;
  },
  rate: (n) => (Number.isFinite(n) ? `${n.toFixed(1)} tok/s` : "–"),
};
