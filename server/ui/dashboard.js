// Tandem dashboard: polls v1/tandem/stats and redraws. No dependencies, no build step;
// charts are inline SVG. Every drawn number also sits in a data-value attribute.
"use strict";

const STATS_URL = "v1/tandem/stats";  // relative: works behind a path prefix too
const POLL_MS = 3000;
const KEY = "tandem.dashboard.adminKey";
const SVG = "http://www.w3.org/2000/svg";
const STATUS_CLASSES = [
  ["2xx", "var(--ok)", "answered"], ["4xx", "var(--client)", "client error"],
  ["5xx", "var(--server)", "upstream / server error"], ["other", "var(--other)", "other"],
];

const $ = (id) => document.getElementById(id);
let timer = null;
let lastOk = null;

// -- formatting ---------------------------------------------------------------------
const fmtInt = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
const fmtPct = (x) => (x == null ? "–" : (100 * x).toFixed(1) + "%");
function fmtUsd(x) {
  if (x == null) return "–";
  return "$" + (Math.abs(x) < 1 ? x.toFixed(4) : x.toLocaleString("en-US",
    { minimumFractionDigits: 2, maximumFractionDigits: 2 }));
}
function fmtSec(s) {
  if (s == null) return "–";
  if (s < 1) return (1000 * s).toFixed(s < 0.01 ? 1 : 0) + " ms";
  return s.toFixed(2) + " s";
}
const statusClass = (code) => {
  const c = String(code)[0];
  return c === "2" ? "2xx" : c === "4" ? "4xx" : c === "5" ? "5xx" : "other";
};

// -- DOM helpers ----------------------------------------------------------------------
function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}
function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}
function setStat(id, text, value) {
  const node = $(id);
  node.textContent = text;
  node.dataset.value = value == null ? "" : String(value);
}
function resetSvg(id, width, height) {
  const svg = $(id);
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  return svg;
}
function row(table, cells, attrs = {}) {
  const tr = el("tr", attrs);
  for (const c of cells) tr.append(c instanceof Node ? c : el("td", {}, c));
  table.append(tr);
  return tr;
}
function head(table, names) {
  const tr = el("tr");
  for (const n of names) tr.append(el("th", {}, n));
  table.append(tr);
}
const td = (text, attrs) => el("td", attrs, text);

// -- charts ---------------------------------------------------------------------------
// Horizontal bars, one per item, stacked by status class; items: {name, total, by_status}.
function stackedBars(id, items, key, tagOf) {
  const W = 400, ROW = 22, LABEL = 112, COUNT = 46;
  const svg = resetSvg(id, W, Math.max(1, items.length) * ROW + 4);
  if (!items.length) {
    svg.append(svgEl("text", { x: 0, y: 15, class: "muted" }, "no requests yet"));
    return;
  }
  const max = Math.max(...items.map((i) => i.total), 1);
  items.forEach((item, i) => {
    const y = i * ROW + 2;
    const g = svgEl("g", { "data-bar": key, "data-name": item[key], "data-value": item.total });
    const tag = tagOf ? tagOf(item) : "";
    const label = item[key] + (tag && tag !== item[key] ? ` (${tag})` : "");
    g.append(svgEl("text", { x: 0, y: y + 14 }, label));
    const sums = {};
    for (const [code, n] of Object.entries(item.by_status)) {
      sums[statusClass(code)] = (sums[statusClass(code)] || 0) + n;
    }
    let x = LABEL;
    for (const [cls, color, label] of STATUS_CLASSES) {
      const n = sums[cls] || 0;
      if (!n) continue;
      const w = ((W - LABEL - COUNT) * n) / max;
      const rect = svgEl("rect", { x, y: y + 3, width: Math.max(w, 1.5), height: ROW - 7,
        rx: 2, fill: color, "data-status": cls, "data-value": n });
      rect.append(svgEl("title", {}, `${item[key]}: ${n} ${label}`));
      g.append(rect);
      x += w;
    }
    g.append(svgEl("text", { x: x + 5, y: y + 14, class: "muted" }, fmtInt(item.total)));
    svg.append(g);
  });
}

function shareChart(share) {
  const W = 400, ROW = 30, LABEL = 150;
  const r = share.router;
  const rows = [];
  if (r) {
    rows.push(["router target", r.target, "target"]);
    rows.push([`router actual (last ${fmtInt(r.window)})`, r.actual, "actual"]);
  }
  rows.push(["all answered requests", share.answered.share, "answered"]);
  const svg = resetSvg("chart-share", W, rows.length * ROW + 16);
  const scale = (f) => LABEL + (W - LABEL - 44) * f;
  rows.forEach(([label, value, name], i) => {
    const y = i * ROW + 4;
    svg.append(svgEl("text", { x: 0, y: y + 15 }, label));
    svg.append(svgEl("rect", { x: LABEL, y: y + 4, width: W - LABEL - 44, height: 14, rx: 3,
      fill: "#eef1f6" }));
    if (value != null) {
      svg.append(svgEl("rect", { x: LABEL, y: y + 4, width: Math.max(scale(value) - LABEL, 1),
        height: 14, rx: 3, fill: name === "target" ? "#9db4e8" : "var(--cloud)",
        "data-share": name, "data-value": value }));
    }
    svg.append(svgEl("text", { x: W - 40, y: y + 15, "data-share-label": name }, fmtPct(value)));
  });
  if (r && r.target != null) {
    const x = scale(r.target);
    svg.append(svgEl("line", { x1: x, x2: x, y1: 2, y2: rows.length * ROW,
      class: "threshold", "data-target": r.target }));
  }
  svg.append(svgEl("text", { x: LABEL, y: rows.length * ROW + 14, class: "muted" }, "0%"));
  svg.append(svgEl("text", { x: W - 66, y: rows.length * ROW + 14, class: "muted" }, "100%"));
}

function scoreChart(scores) {
  const W = 400, H = 180, BASE = 150, LEFT = 8, TOP = 30;
  const svg = resetSvg("chart-scores", W, H);
  const bins = scores.bins;
  const max = Math.max(...bins.map((b) => b.count), 1);
  const bw = (W - 2 * LEFT) / bins.length;
  const xOf = (p) => LEFT + (W - 2 * LEFT) * p;
  bins.forEach((b, i) => {
    const h = ((BASE - TOP) * b.count) / max;
    const x = LEFT + i * bw;
    const rect = svgEl("rect", { x: x + 2, y: BASE - h, width: bw - 4, height: Math.max(h, 0),
      rx: 2, fill: "var(--local)", "data-bin": i, "data-from": b.from, "data-to": b.to,
      "data-value": b.count });
    rect.append(svgEl("title", {}, `${b.from.toFixed(1)}–${b.to.toFixed(1)}: ${b.count}`));
    svg.append(rect);
    if (b.count) {
      svg.append(svgEl("text", { x: x + bw / 2, y: BASE - h - 3, "text-anchor": "middle" },
        fmtInt(b.count)));
    }
  });
  svg.append(svgEl("line", { x1: LEFT, x2: W - LEFT, y1: BASE, y2: BASE, class: "axis" }));
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(svgEl("text", { x: xOf(p), y: BASE + 14, "text-anchor": "middle",
      class: "muted" }, String(p)));
  }
  if (scores.threshold != null) {
    const x = xOf(Math.min(Math.max(scores.threshold, 0), 1));
    svg.append(svgEl("line", { x1: x, x2: x, y1: 4, y2: BASE, class: "threshold",
      "data-threshold": scores.threshold }));
    svg.append(svgEl("text", { x: Math.min(x + 4, W - 90), y: 10 },
      `threshold ${scores.threshold.toFixed(3)}`));
  }
  svg.append(svgEl("text", { x: W / 2, y: H - 2, "text-anchor": "middle", class: "muted" },
    "p_strong (≥ threshold: strong model)"));
}

// -- tables ---------------------------------------------------------------------------
function latencyTable(lat) {
  const table = $("latency-table");
  table.replaceChildren();
  const qs = lat.quantiles.map((q) => "p" + Math.round(q * 100));
  const req = lat.request_seconds, ttft = lat.ttft_seconds;
  const top = el("tr");
  top.append(el("th"), el("th", { colspan: qs.length + 2, class: "span" },
    "request time (whole request)"),
  el("th", { colspan: qs.length + 1, class: "span" }, "time to first token (streams)"));
  table.append(top);
  head(table, ["route", "count", ...qs, "mean", "streams", ...qs]);
  const names = ["all", ...new Set([...Object.keys(req.by_route),
    ...Object.keys(ttft.by_route)])];
  const empty = { count: 0, mean: null };
  for (const name of names) {
    const r = name === "all" ? req.all : req.by_route[name] || empty;
    const t = name === "all" ? ttft.all : ttft.by_route[name] || empty;
    const cells = [td(name === "all" ? "all routes" : name)];
    cells.push(td(fmtInt(r.count), { "data-latency": "request", "data-q": "count",
      "data-value": r.count }));
    for (const q of qs) cells.push(td(fmtSec(r[q]), { "data-latency": "request", "data-q": q,
      "data-value": r[q] ?? "" }));
    cells.push(td(fmtSec(r.mean), { "data-latency": "request", "data-q": "mean",
      "data-value": r.mean ?? "" }));
    cells.push(td(fmtInt(t.count), { "data-latency": "ttft", "data-q": "count",
      "data-value": t.count }));
    for (const q of qs) cells.push(td(fmtSec(t[q]), { "data-latency": "ttft", "data-q": q,
      "data-value": t[q] ?? "" }));
    row(table, cells, { "data-series": name });
  }
}

function costTable(cost) {
  const table = $("cost-table");
  table.replaceChildren();
  const p = cost.reference_price_per_mtok;
  row(table, [td("reference price (per 1M in / out)"), td(cost.reference_model
    ? `${cost.reference_model}: $${p.input} / $${p.output}` : "no prices configured")]);
  row(table, [td("actual cloud spend"), td(fmtUsd(cost.actual_usd),
    { "data-cost": "actual", "data-value": cost.actual_usd })]);
  row(table, [td("if all went to the cloud"), td(fmtUsd(cost.all_cloud_usd),
    { "data-cost": "all_cloud", "data-value": cost.all_cloud_usd ?? "" })]);
  row(table, [td("estimated saved"), td(`${fmtUsd(cost.saved_usd)} (${fmtPct(cost.saved_share)})`,
    { "data-cost": "saved", "data-value": cost.saved_usd ?? "" })]);
  row(table, [td("local tokens (in / out)"),
    td(`${fmtInt(cost.local_tokens.input)} / ${fmtInt(cost.local_tokens.output)}`,
      { "data-cost": "local_tokens",
        "data-value": cost.local_tokens.input + cost.local_tokens.output })]);
  $("cost-definition").textContent = cost.definition;
}

function simpleTable(id, headers, rows, attrsOf) {
  const table = $(id);
  table.replaceChildren();
  head(table, headers);
  if (!rows.length) {
    row(table, [td("none", { colspan: headers.length, class: "empty" })]);
    return;
  }
  for (const r of rows) row(table, r.cells.map((c, i) =>
    td(c, i === r.cells.length - 1 ? { "data-value": r.value } : {})), attrsOf(r));
}

// -- one redraw -----------------------------------------------------------------------
function render(s) {
  const req = s.requests;
  const errors = req.total - Object.entries(req.by_status)
    .filter(([c]) => statusClass(c) === "2xx").reduce((a, [, n]) => a + n, 0);
  setStat("kpi-requests", fmtInt(req.total), req.total);
  setStat("kpi-errors", `${fmtInt(errors)} not 2xx`, errors);
  const r = s.cloud_share.router;
  const routed = r != null && r.actual != null;  // else: no routed request yet, or no router
  const share = routed ? r.actual : s.cloud_share.answered.share;
  setStat("kpi-share", fmtPct(share), share);
  setStat("kpi-share-target", routed ? `router target ${fmtPct(r.target)}`
    : "of answered requests", routed ? r.target : "");
  setStat("kpi-saved", fmtUsd(s.cost.saved_usd), s.cost.saved_usd);
  setStat("kpi-saved-share", s.cost.saved_usd == null ? "set model prices"
    : `${fmtPct(s.cost.saved_share)} of all-cloud cost`,
  s.cost.saved_share);
  setStat("kpi-fallbacks", fmtInt(s.fallbacks.total), s.fallbacks.total);
  setStat("kpi-blocks", fmtInt(s.privacy.blocks_total), s.privacy.blocks_total);
  const all = s.latency.request_seconds.all;
  setStat("kpi-latency", `${fmtSec(all.p50)} / ${fmtSec(all.p95)}`, all.p50);
  const ttft = s.latency.ttft_seconds.all;
  setStat("kpi-ttft", `TTFT p50 ${fmtSec(ttft.p50)} (estimated)`, ttft.p50);

  stackedBars("chart-routes", req.by_route, "route",
    (i) => (i.route === "none" ? "no model" : i.local ? "local" : "cloud"));
  stackedBars("chart-models", req.by_model, "model");
  const legend = $("legend-status");
  legend.replaceChildren(...STATUS_CLASSES.slice(0, 3).map(([cls, color, label]) => {
    const span = el("span", { title: label }, cls);
    const dot = el("i");
    dot.style.background = color;
    span.prepend(dot);
    return span;
  }));
  shareChart(s.cloud_share);
  costTable(s.cost);
  scoreChart(s.router_scores);
  const rules = Object.entries(s.router_scores.by_rule).map(([k, n]) => `${k}: ${n}`);
  $("scores-note").textContent = `${fmtInt(s.router_scores.count)} scored requests` +
    (rules.length ? ` (${rules.join(", ")})` : "") +
    (r ? `; router ${r.kind}, ${r.strong} if ≥ threshold, else ${r.weak}.` : "; no live router.");
  latencyTable(s.latency);
  simpleTable("fallback-table", ["from → to", "stage", "count"], s.fallbacks.data.map((f) => ({
    cells: [`${f.from} → ${f.to}`, f.stage.replaceAll("_", " "), fmtInt(f.count)],
    value: f.count, f })), (x) => ({ "data-fallback": `${x.f.from}>${x.f.to}` }));
  simpleTable("privacy-table", ["reason", "count"],
    Object.entries(s.privacy.blocks_by_reason).map(([k, n]) => ({
      cells: [k.replaceAll("_", " "), fmtInt(n)], value: n, k })),
    (x) => ({ "data-block": x.k }));
  $("footer").textContent = `Counters since ${new Date(s.since * 1000).toLocaleString()} ` +
    "(gateway start). Numbers are the gateway's own Prometheus counters (also at /metrics).";
}

// -- polling and the admin key ----------------------------------------------------------
function show(state, message) {
  document.body.dataset.state = state;
  $("login").hidden = state !== "login";
  $("dashboard").hidden = !(state === "live" || state === "stale");
  $("logout").hidden = !sessionStorage.getItem(KEY);
  const status = $("status");
  status.classList.toggle("stale", state === "stale" || state === "error");
  if (message != null) status.textContent = message;
}

async function poll() {
  clearTimeout(timer);
  const key = sessionStorage.getItem(KEY);
  const headers = key ? { Authorization: "Bearer " + key } : {};
  try {
    const resp = await fetch(STATS_URL, { headers, cache: "no-store" });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401) {
      if (key) sessionStorage.removeItem(KEY);
      $("login-error").textContent = key ? (body.error?.message || "Incorrect admin key.") : "";
      show("login", "admin key needed");
      $("key").focus();
      return;  // no polling until a key is entered
    }
    if (!resp.ok) {
      show(lastOk ? "stale" : "error", body.error?.message || `HTTP ${resp.status}`);
    } else {
      render(body);
      lastOk = body;
      document.body.dataset.generated = String(body.generated_at);
      show("live", `live · updated ${new Date(body.generated_at * 1000).toLocaleTimeString()}` +
        ` · every ${POLL_MS / 1000} s`);
    }
  } catch (err) {
    show(lastOk ? "stale" : "error", `gateway unreachable (${err.message}); retrying`);
  }
  timer = setTimeout(poll, POLL_MS);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  $("login-error").textContent = "";
  show("loading", "checking key…");
  poll();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  lastOk = null;
  poll();
});
poll();
