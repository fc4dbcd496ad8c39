// The ops console: keys, their limits, their use, over the admin API with the master
// key. The master key is kept for this tab only (sessionStorage) and sent in a header.

import { call, explain } from "./api.js";
import { daysChart, modelsChart } from "./charts.js";
import { $, fmt, h, showError, tabStore } from "./dom.js";

const MASTER = "gateway.master_key";
const QUOTA_EVERY_MS = 2000;
const PAGE = 100;

export function opsConsole() {
  const login = $("#con-login");
  const main = $("#con-main");
  const tbody = $("#con-keys tbody");
  const form = $("#con-form");
  const errorBox = $("#con-error");
  const detail = $("#con-detail");
  let keys = [];
  let usage = new Map();
  let editing = null; // the key the form edits; null: a new key
  let selected = null; // the key shown in detail
  let quotaTimer = null;
  let after = null;

  const admin = (path, options = {}) => call(`../admin/${path}`, { ...options, key: tabStore.get(MASTER) });

  async function guarded(box, work) {
    showError(box, null);
    try {
      return await work();
    } catch (error) {
      if (error.status === 401) return logout(explain(error, "master key"));
      showError(box, explain(error, "master key"));
      return undefined;
    }
  }

  function logout(why) {
    tabStore.set(MASTER, "");
    clearInterval(quotaTimer);
    main.hidden = true;
    login.hidden = false;
    showError($("#con-login-error"), why || null);
    $("#master-key").value = "";
    $("#master-key").focus();
  }

  async function open() {
    const key = $("#master-key").value.trim();
    if (!key) return showError($("#con-login-error"), "Enter the master key.");
    tabStore.set(MASTER, key);
    $("#master-key").value = "";
    await enter();
  }

  async function enter() {
    login.hidden = true;
    main.hidden = false;
    await refresh();
    if (selected && !detail.hidden) await show(selected); // its live limits refresh again
  }

  async function refresh() {
    await guarded(errorBox, async () => {
      const [page, all] = await Promise.all([admin(`keys?limit=${PAGE}`), admin("usage")]);
      keys = page.data;
      after = page.has_more ? page.last_id : null;
      usage = new Map(all.data.map((doc) => [doc.key_id, doc]));
      render();
    });
  }

  async function more() {
    await guarded(errorBox, async () => {
      const page = await admin(`keys?limit=${PAGE}&after=${encodeURIComponent(after)}`);
      keys = keys.concat(page.data);
      after = page.has_more ? page.last_id : null;
      render();
    });
  }

  function limitsText(limits) {
    const parts = [];
    if (limits.rpm) parts.push(`${fmt.int(limits.rpm)} req/min`);
    if (limits.tpm) parts.push(`${fmt.int(limits.tpm)} tok/min`);
    if (limits.max_parallel) parts.push(`${fmt.int(limits.max_parallel)} in flight`);
    if (limits.budget_usd) {
      const period = limits.budget_period || "total";
      parts.push(`${fmt.usd(limits.budget_usd)} ${period === "total" ? "in total" : `a ${period}`}`);
    }
    return parts.join(", ") || "none";
  }

  function stateOf(key) {
    if (key.revoked_at) return "revoked";
    if (key.expires_at && new Date(key.expires_at) <= new Date()) return "expired";
    return key.source === "config" ? "active (config file)" : "active";
  }

  function render() {
    tbody.replaceChildren(...keys.map(row));
    $("#con-more").hidden = !after;
    if (!keys.length) tbody.append(h("tr", {}, h("td", { colspan: 7, text: "No keys yet: create one." })));
  }

  function row(key) {
    const used = usage.get(key.id);
    const fixed = key.source === "config" || key.revoked_at;
    const revoke = h("button", { type: "button", text: "Revoke", disabled: Boolean(fixed), "data-action": "revoke" });
    revoke.addEventListener("click", () => confirmRevoke(revoke, key));
    return h(
      "tr",
      { "data-key-id": key.id, class: [key.id === selected?.id ? "selected" : "", key.revoked_at ? "revoked" : ""].join(" ").trim() },
      cell("Name", key.name),
      cell("Key", h("code", { text: key.key_hint })),
      cell("Models", key.models.join(", ")),
      cell("Limits", limitsText(key.limits)),
      cell("Use", used ? `${fmt.int(used.requests)} req, ${fmt.usd(used.cost_usd)}` : "–"),
      cell("State", stateOf(key)),
      cell(
        "",
        h(
          "div",
          { class: "row-actions" },
          h("button", { type: "button", text: "Details", "data-action": "details", onclick: () => show(key) }),
          h("button", { type: "button", text: "Edit", disabled: Boolean(fixed), "data-action": "edit", onclick: () => edit(key) }),
          revoke,
        ),
      ),
    );
  }

  // A cell names its column, which a phone's stacked rows show beside the value.
  function cell(label, content) {
    return h("td", { "data-label": label }, content);
  }

  // Two steps instead of a dialog: the first click arms the button for a few seconds.
  function confirmRevoke(button, key) {
    if (button.dataset.armed !== "yes") {
      button.dataset.armed = "yes";
      button.textContent = "Confirm revoke";
      setTimeout(() => {
        button.dataset.armed = "";
        button.textContent = "Revoke";
      }, 5000);
      return;
    }
    guarded(errorBox, async () => {
      await admin(`keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      await refresh();
    });
  }

  function edit(key) {
    editing = key;
    $("#con-form-title").textContent = key ? `Edit ${key.name}` : "New key";
    $("#f-save").textContent = key ? "Save" : "Create";
    const limits = key?.limits || {};
    $("#f-name").value = key?.name || "";
    $("#f-models").value = key ? key.models.join(", ") : "*";
    $("#f-rpm").value = limits.rpm ?? "";
    $("#f-tpm").value = limits.tpm ?? "";
    $("#f-parallel").value = limits.max_parallel ?? "";
    $("#f-budget").value = limits.budget_usd ?? "";
    $("#f-period").value = limits.budget_period || "";
    $("#f-expires").value = key?.expires_at ? key.expires_at.slice(0, 16) : "";
    showError($("#f-error"), null);
    form.hidden = false;
    $("#f-name").focus();
  }

  function number(id, label, { integer = true } = {}) {
    const raw = $(id).value.trim();
    if (!raw) return null;
    const value = Number(raw);
    if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
      throw new Error(`${label} must be a positive ${integer ? "whole number" : "number"}, or empty for none.`);
    }
    return value;
  }

  function formBody() {
    const name = $("#f-name").value.trim();
    if (!name) throw new Error("Give the key a name.");
    const models = $("#f-models").value.split(",").map((m) => m.trim()).filter(Boolean);
    const budget = number("#f-budget", "The budget", { integer: false });
    const expires = $("#f-expires").value;
    return {
      name,
      models: models.length ? models : ["*"],
      limits: {
        rpm: number("#f-rpm", "Requests per minute"),
        tpm: number("#f-tpm", "Tokens per minute"),
        max_parallel: number("#f-parallel", "Requests in flight"),
        budget_usd: budget,
        budget_period: budget === null ? null : $("#f-period").value || "total",
      },
      expires_at: expires ? `${expires}:00Z` : null,
    };
  }

  async function save(event) {
    event.preventDefault();
    const box = $("#f-error");
    let body;
    try {
      body = formBody();
    } catch (error) {
      return showError(box, error.message);
    }
    await guarded(box, async () => {
      if (editing) {
        await admin(`keys/${encodeURIComponent(editing.id)}`, { method: "PATCH", body });
      } else {
        const created = await admin("keys", { method: "POST", body });
        $("#con-created-name").textContent = created.name;
        $("#con-created-key").textContent = created.key;
        $("#con-created").hidden = false;
        $("#con-created-copy").focus();
      }
      form.hidden = true;
      await refresh();
      if (editing && selected?.id === editing.id) show(keys.find((k) => k.id === editing.id) || editing);
    });
  }

  async function copyCreated() {
    const text = $("#con-created-key").textContent;
    const button = $("#con-created-copy");
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      // No clipboard (a page over plain HTTP from another host): select it instead.
      getSelection().selectAllChildren($("#con-created-key"));
      button.textContent = "Selected: press Ctrl+C";
    }
  }

  function hideCreated() {
    $("#con-created-key").textContent = ""; // the plaintext leaves the page
    $("#con-created").hidden = true;
    $("#con-created-copy").textContent = "Copy";
  }

  async function show(key) {
    selected = key;
    for (const tr of tbody.querySelectorAll("tr")) tr.classList.toggle("selected", tr.dataset.keyId === key.id);
    $("#con-detail-title").textContent = `${key.name} (${key.key_hint})`;
    detail.hidden = false;
    clearInterval(quotaTimer);
    await quota();
    quotaTimer = setInterval(quota, QUOTA_EVERY_MS);
    await guarded(errorBox, async () => {
      const doc = await admin(`keys/${encodeURIComponent(key.id)}/usage`);
      daysChart($("#con-chart-days"), doc.by_day);
      modelsChart($("#con-chart-models"), doc.by_model);
    });
  }

  function meter(label, used, limit, value, note) {
    const track = h("div", { class: "track" });
    if (limit) {
      const fill = h("div", { class: "fill" });
      fill.style.width = `${Math.min(100, (used / limit) * 100)}%`; // CSSOM: allowed by the CSP
      track.append(fill);
    }
    return h("div", { class: "meter" }, h("div", { class: "label", text: label }), h("div", { class: "value", text: value }), note ? h("div", { class: "label", text: note }) : "", limit ? track : "");
  }

  async function quota() {
    if (!selected || detail.hidden || !tabStore.get(MASTER)) return clearInterval(quotaTimer);
    const id = selected.id;
    const q = await guarded(errorBox, () => admin(`keys/${encodeURIComponent(id)}/quota`));
    if (!q || selected?.id !== id) return;
    const reset = (w) => (w.used && w.reset_seconds ? `resets in ${Math.ceil(w.reset_seconds)} s` : "");
    const window = (label, w, unit) =>
      w.limit === null
        ? meter(label, 0, null, "no limit")
        : meter(label, w.used, w.limit, `${fmt.int(w.remaining)} of ${fmt.int(w.limit)} ${unit} left`, reset(w));
    const b = q.budget;
    $("#con-quota").replaceChildren(
      window("Requests this minute", q.requests, "requests"),
      window("Tokens this minute", q.tokens, "tokens"),
      q.parallel.limit === null
        ? meter("In flight", 0, null, `${fmt.int(q.parallel.in_flight)} (no limit)`)
        : meter("In flight", q.parallel.in_flight, q.parallel.limit, `${fmt.int(q.parallel.in_flight)} of ${fmt.int(q.parallel.limit)}`),
      b.limit_usd === null
        ? meter("Budget", 0, null, "no limit")
        : meter(`Budget (${b.period})`, b.spent_usd + b.held_usd, b.limit_usd, `${fmt.usd(b.remaining_usd)} of ${fmt.usd(b.limit_usd)} left`, b.held_usd ? `${fmt.usd(b.held_usd)} held by requests in flight` : ""),
    );
  }

  $("#master-key-use").addEventListener("click", open);
  $("#master-key").addEventListener("keydown", (e) => e.key === "Enter" && open());
  $("#con-refresh").addEventListener("click", refresh);
  $("#con-more").addEventListener("click", more);
  $("#con-logout").addEventListener("click", () => logout());
  $("#con-new").addEventListener("click", () => edit(null));
  $("#f-cancel").addEventListener("click", () => (form.hidden = true));
  form.addEventListener("submit", save);
  $("#con-created-copy").addEventListener("click", copyCreated);
  $("#con-created-hide").addEventListener("click", hideCreated);

  return {
    shown() {
      if (tabStore.get(MASTER)) enter();
      else $("#master-key").focus();
    },
    hidden() {
      clearInterval(quotaTimer);
    },
    stop() {},
  };
}
