// Small bar charts drawn as SVG elements (no library, no inline style: CSP-clean).
// Labels are text nodes, so a model or key name is shown as written.

import { fmt } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

function legend(series) {
  const box = document.createElement("div");
  box.className = "legend";
  for (const { label, cls } of series) {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.className = `swatch ${cls}`;
    item.append(swatch, label);
    box.append(item);
  }
  return box;
}

const SERIES = [
  { key: "input_tokens", label: "input tokens", cls: "a" },
  { key: "output_tokens", label: "output tokens", cls: "b" },
];

function tip(row, label) {
  return `${label}: ${fmt.int(row.requests)} requests, ${fmt.int(row.input_tokens)} input and ` +
    `${fmt.int(row.output_tokens)} output tokens, ${fmt.usd(row.cost_usd)}, ${fmt.int(row.errors)} errors`;
}

// Tokens per day, input and output stacked, one bar a day from the first to today.
export function daysChart(container, byDay, days = 30) {
  const rows = new Map(byDay.map((d) => [d.day, d]));
  const today = new Date();
  const list = [];
  for (let i = days - 1; i >= 0; i--) {
    const day = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i))
      .toISOString().slice(0, 10);
    list.push(rows.get(day) || { day, requests: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0, errors: 0 });
  }
  const width = 640, height = 180, left = 44, bottom = 20, top = 8;
  // At least 10, so an idle month's axis reads 0, 5, 10 rather than 0, 1, 1.
  const max = Math.max(10, ...list.map((r) => r.input_tokens + r.output_tokens));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Tokens by day" });
  const plot = height - bottom - top;
  for (const f of [0, 0.5, 1]) {
    const y = top + plot * (1 - f);
    svg.append(s("line", { x1: left, x2: width, y1: y, y2: y, class: "grid-line" }));
    svg.append(s("text", { x: left - 4, y: y + 4, "text-anchor": "end", class: "axis" }, fmt.int(max * f)));
  }
  const step = (width - left) / list.length;
  list.forEach((row, i) => {
    let y = top + plot;
    const g = s("g");
    g.append(s("title", {}, tip(row, row.day)));
    for (const { key, cls } of SERIES) {
      const h = (row[key] / max) * plot;
      y -= h;
      g.append(s("rect", { x: left + i * step + 1, y, width: Math.max(1, step - 2), height: h, class: `bar-${cls}` }));
    }
    svg.append(g);
    if (i % 7 === (list.length - 1) % 7) {
      const last = i === list.length - 1;
      const x = last ? width : left + i * step + step / 2;
      svg.append(s("text", { x, y: height - 5, "text-anchor": last ? "end" : "middle", class: "axis" }, row.day.slice(5)));
    }
  });
  container.replaceChildren(svg, legend(SERIES));
}

// Tokens per model, one horizontal bar each, the model's totals beside it.
export function modelsChart(container, byModel) {
  if (!byModel.length) {
    container.replaceChildren("No use yet.");
    return;
  }
  const rows = [...byModel].sort((a, b) => b.input_tokens + b.output_tokens - (a.input_tokens + a.output_tokens));
  const width = 640, bar = 18, gap = 26, label = 160;
  const height = rows.length * gap + 4;
  const max = Math.max(1, ...rows.map((r) => r.input_tokens + r.output_tokens));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Tokens by model" });
  rows.forEach((row, i) => {
    const y = i * gap + 4;
    const g = s("g");
    g.append(s("title", {}, tip(row, row.model)));
    const name = row.model.length > 22 ? `${row.model.slice(0, 21)}…` : row.model;
    g.append(s("text", { x: 0, y: y + 13, class: "axis" }, name));
    let x = label;
    for (const { key, cls } of SERIES) {
      const w = (row[key] / max) * (width - label - 150);
      g.append(s("rect", { x, y, width: w, height: bar, class: `bar-${cls}` }));
      x += w;
    }
    g.append(s("text", { x: x + 6, y: y + 13, class: "axis" }, `${fmt.int(row.requests)} req · ${fmt.usd(row.cost_usd)}`));
    svg.append(g);
  });
  container.replaceChildren(svg, legend(SERIES));
}
